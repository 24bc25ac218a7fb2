"""Interim results (``callscribe/interim.py``): a real server on loopback with the real Whisper
model, real Twilio Media Streams paced in real time and real live-stream WebSockets.

What is checked is order and content (interims before their final and never after it, the
stable prefix, redaction, which decodes started while a final was waiting), never how fast
anything was: waits are bounded generously."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from callscribe.api.schemas import parse_start
from callscribe.asr.base import AsrError, AsrInterimShedError, AsrRequest, AsrResult
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.auth import IssuedKey
from callscribe.config import AsrSettings, InterimSettings
from callscribe.endpointing import OpenUtterance
from callscribe.interim import InterimDecoder, stable_prefix
from callscribe.live import LiveFeed, LiveHub
from callscribe.model import AutotranscribeParams
from callscribe.store.base import CallKey
from callscribe.testing.simulate import WebhookReceiver, load_sample_call
from callscribe.textnorm import normalize
from callscribe.webhooks.management import set_webhook
from tests.conftest import RunningServer
from tests.serve_support import SILENCE, TwilioCall, agent_lines, line_audio, wait_until

EVENTS = "/callscribe/v1/live/events"
ServerFactory = Callable[..., Awaitable[RunningServer]]

SAMPLE = load_sample_call()
# Two of the sample call's lines run together (200 ms apart: less than the end silence), so
# that they make one utterance of about 7.5 s, long enough for several interims.
LONG_UTTERANCE = (
    line_audio(SAMPLE, agent_lines(SAMPLE)[0])
    + SILENCE * 10
    + line_audio(SAMPLE, agent_lines(SAMPLE)[1])
)
PIN_LINE = next(s for s in SAMPLE.segments if s.contains_pin)
FAMILY_LINE = next(s for s in SAMPLE.segments if "family account" in s.text)
# "My PIN number is four seven two nine." and on, one utterance: interims after the digits.
PIN_UTTERANCE = line_audio(SAMPLE, PIN_LINE) + SILENCE * 10 + line_audio(SAMPLE, FAMILY_LINE)
END_SILENCE = SILENCE * 75  # 1.5 s: the utterance ends


def test_the_stable_prefix_is_what_both_texts_share_to_the_end_of_a_word() -> None:
    assert stable_prefix("", "Hello, this is") == 0
    assert stable_prefix("Hello, this is", "Hello, this is Sarah") == len("Hello, this is")
    # "Sarah." and "Sarah" are different words: stable up to the word before.
    assert stable_prefix("Hello, this is Sarah.", "Hello, this is Sarah from") == 14
    assert stable_prefix("I need", "I needed help") == 1
    assert stable_prefix("I need her.", "Hi, I need help") == 0
    assert stable_prefix("same words", "same words") == len("same words")
    assert stable_prefix("a  b c", "a  b d") == len("a  b")


class Speaker:
    """A stream's open utterance as a test sets it (``OpenSpeech``)."""

    def __init__(self) -> None:
        self.utterance: OpenUtterance | None = None

    def say(self, start_ms: int, audio_ms: int, pause_ms: int = 0) -> None:
        self.utterance = OpenUtterance(start_ms * 16, audio_ms * 16, audio_ms - pause_ms, pause_ms)

    def open_utterance(self) -> OpenUtterance | None:
        return self.utterance

    def open_audio(self) -> np.ndarray:
        assert self.utterance is not None
        return np.zeros(self.utterance.samples, dtype=np.float32)


class Workers:
    """An engine's ``start_interim`` as a test drives it: the decodes it started (their audio
    length and future), and whether a worker is idle."""

    def __init__(self) -> None:
        self.idle = True
        self.started: list[tuple[int, asyncio.Future[AsrResult]]] = []

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None:
        if not self.idle:
            return None
        decoding: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self.started.append((len(request.audio) // 16, decoding))
        return decoding


async def test_one_decode_per_stream_at_a_time_shed_when_busy_held_in_a_pause_never_late() -> None:
    hub = LiveHub()
    viewer = hub.subscribe("acme")
    workers = Workers()
    decoder = InterimDecoder(
        workers, LiveFeed(hub), InterimSettings(interval_ms=1000, min_speech_ms=500, pause_ms=250)
    )
    speaker = Speaker()
    stream = decoder.for_stream(
        CallKey("acme", "twilio", "CA-1"), "agent", speaker, AutotranscribeParams()
    )

    async def decoded(n: int, text: str) -> None:
        workers.started[n][1].set_result(AsrResult(text=text))
        await asyncio.sleep(0)  # the done callback runs on the loop

    speaker.say(4000, 400)
    stream.audio_arrived()
    assert workers.started == []  # too little speech yet
    speaker.say(4000, 600)
    stream.audio_arrived()
    assert [ms for ms, _ in workers.started] == [600]
    # In flight: what falls due meanwhile waits, however much does, and starts once, fresh.
    for ms in (1700, 2800, 3000):
        speaker.say(4000, ms)
        stream.audio_arrived()
    assert len(workers.started) == 1
    await decoded(0, "Hello, this is Sarah.")
    stream.audio_arrived()
    assert [ms for ms, _ in workers.started] == [600, 3000]
    await decoded(1, "Hello, this is Sarah from Acme")
    # Due, but the speaker has paused: held until the speech goes on.
    speaker.say(4000, 4000, pause_ms=300)
    stream.audio_arrived()
    assert len(workers.started) == 2
    speaker.say(4000, 4100)
    stream.audio_arrived()
    assert [ms for ms, _ in workers.started] == [600, 3000, 4100]
    # The utterance ends while its decode runs: its text is not published.
    speaker.utterance = None
    stream.audio_arrived()
    await decoded(2, "Hello, this is Sarah from Acme Streaming")
    # The next utterance, while no worker is idle: shed, and tried again an interval later.
    workers.idle = False
    speaker.say(9000, 600)
    stream.audio_arrived()
    speaker.say(9000, 1500)
    stream.audio_arrived()
    workers.idle = True
    speaker.say(9000, 1600)
    stream.audio_arrived()
    assert [ms for ms, _ in workers.started][3:] == [1600]
    stream.close()
    await decoded(3, "Great choice.")

    events = [json.loads(await asyncio.wait_for(viewer.next(), 2)) for _ in range(2)]
    assert [(e["utteranceId"], e["text"], e["stablePrefix"]) for e in events] == [
        ("agent-4000", "Hello, this is Sarah.", 0),
        ("agent-4000", "Hello, this is Sarah from Acme", len("Hello, this is")),
    ]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(viewer.next(), 0.3)
    assert decoder.stats.as_dict() | {"recentDecodeP50Ms": 0} == {
        "decodes": 4,
        "published": 2,
        "shed": 1,
        "stale": 2,
        "failed": 0,
        "recentDecodeP50Ms": 0,
    }


async def test_an_interim_the_engine_sheds_once_asked_counts_as_shed_not_failed() -> None:
    # A remote worker that had a final waiting answers interim_shed: the decode's future fails
    # with AsrInterimShedError. Any other error is a failure.
    workers = Workers()
    decoder = InterimDecoder(
        workers,
        LiveFeed(LiveHub()),
        InterimSettings(interval_ms=1000, min_speech_ms=500, pause_ms=250),
    )
    speaker = Speaker()
    stream = decoder.for_stream(
        CallKey("acme", "twilio", "CA-1"), "agent", speaker, AutotranscribeParams()
    )
    speaker.say(4000, 600)
    stream.audio_arrived()
    workers.started[0][1].set_exception(AsrInterimShedError("interim_shed: a final is waiting"))
    await asyncio.sleep(0)  # the done callback runs on the loop
    # Shed, the stream is free again: the next one falls due an interval later.
    speaker.say(4000, 1600)
    stream.audio_arrived()
    workers.started[1][1].set_exception(AsrError("the worker answered HTTP 500"))
    await asyncio.sleep(0)
    assert decoder.stats.as_dict() | {"recentDecodeP50Ms": 0} == {
        "decodes": 1,
        "published": 0,
        "shed": 1,
        "stale": 0,
        "failed": 1,
        "recentDecodeP50Ms": 0,
    }


def _key_headers(issued: IssuedKey) -> dict[str, str]:
    return {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}


@contextlib.asynccontextmanager
async def _watching(
    server: RunningServer, issued: IssuedKey
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event of the tenant's live stream, as it arrives (the snapshot first)."""
    events: list[dict[str, Any]] = []

    async def read(ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                events.append(json.loads(message))

    async with websockets.connect(
        f"{server.ws_base}{EVENTS}", additional_headers=_key_headers(issued), max_size=None
    ) as ws:
        reading = asyncio.ensure_future(read(ws))
        await wait_until(_when(lambda: bool(events)), 10, "the snapshot")
        try:
            yield events
        finally:
            reading.cancel()


def _when(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return check()

    return condition


def _of(events: list[dict[str, Any]], guid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("guid") == guid and e["type"] == kind]


def _webhook(receiver: WebhookReceiver, guid: str) -> list[dict[str, Any]]:
    return [m.body for m in receiver.messages if m.body["externalConversationId"] == guid]


def _check_stable_prefixes(interims: list[dict[str, Any]]) -> None:
    """Each interim's stable part is what the one before it said too, to a word's end."""
    assert interims[0]["stablePrefix"] == 0
    for before, after in zip(interims, interims[1:], strict=False):
        stable, text = after["stablePrefix"], after["text"]
        assert 0 <= stable <= len(text)
        assert text[:stable] == before["text"][:stable], (before, after)
        assert stable == len(text) or text[stable].isspace() or stable == 0, after
    # Someone speaking on: most of what was said stays as it was.
    assert any(e["stablePrefix"] > 0 for e in interims[1:]), interims


@pytest.mark.e2e
async def test_a_call_that_asks_gets_interims_before_its_final_and_one_that_does_not_gets_none(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    issued = server.issue_key("acme")
    async with _watching(server, issued) as events:
        # Not asked for: finals only.
        plain = TwilioCall(server.client("acme"))
        await plain.open()
        await plain.send_audio(LONG_UTTERANCE + END_SILENCE, speed=1.0)
        await wait_until(
            _when(lambda: bool(_of(events, plain.call_sid, "final"))), 90, "the plain final"
        )
        await plain.close()

        # Asked for: the long utterance's text so far, while it is spoken.
        asked = TwilioCall(server.client("acme"))
        await asked.open(interimResults=True)
        await asked.send_audio(LONG_UTTERANCE + END_SILENCE, speed=1.0)
        await wait_until(_when(lambda: bool(_of(events, asked.call_sid, "final"))), 90, "the final")
        await asked.send_line(agent_lines(SAMPLE)[2], speed=1.0)  # more speech after it
        await wait_until(
            _when(lambda: len(_of(events, asked.call_sid, "final")) == 2), 90, "the 2nd final"
        )
        await asked.close()
        await wait_until(
            _when(lambda: bool(_of(events, asked.call_sid, "callEnded"))), 90, "the call's end"
        )

    assert _of(events, plain.call_sid, "final") and not _of(events, plain.call_sid, "interim")

    mine = [e for e in events if e.get("guid") == asked.call_sid]
    final = _of(events, asked.call_sid, "final")[0]
    utterance = final["utteranceId"]
    position = {id(e): n for n, e in enumerate(mine)}
    interims = [e for e in mine if e["type"] == "interim" and e["utteranceId"] == utterance]
    # Several interims, all before the final that replaces them, none after it.
    assert len(interims) >= 2, mine
    assert all(position[id(e)] < position[id(final)] for e in interims)
    later = [e for e in mine[position[id(final)] :] if e.get("utteranceId") == utterance]
    assert [e["type"] for e in later] == ["final"]
    for event in interims:
        assert event["role"] == "agent" and event["text"].strip()
        assert event["start"] == final["message"]["autotranscribeResponse"]["start"]
    _check_stable_prefixes(interims)
    # The text so far grows into what the final says: its first words are the final's.
    final_text = final["message"]["autotranscribeResponse"]["utterance"][0]["text"]
    assert normalize(interims[-1]["text"])[:3] == normalize(final_text)[:3], (interims, final_text)

    # Every interim of the call precedes its own utterance's final (the second one too).
    for event in mine:
        if event["type"] == "interim":
            finals = [
                n
                for n, e in enumerate(mine)
                if e["type"] == "final" and e["utteranceId"] == event["utteranceId"]
            ]
            assert finals and position[id(event)] < finals[0], event

    # The webhook and the after-call API have finals only.
    for guid in (plain.call_sid, asked.call_sid):
        bodies = _webhook(receiver, guid)
        assert [b["type"] for b in bodies] == ["transcript"] * len(_of(events, guid, "final"))
    health = await server.client("acme").health()
    assert health["asr"]["interim"]["published"] >= len(_of(events, asked.call_sid, "interim"))
    assert health["asr"]["interim"]["shed"] == 0  # nobody else needed the workers


@pytest.mark.e2e
async def test_interim_text_is_redacted_as_the_call_asks(server: RunningServer) -> None:
    issued = server.issue_key("acme")
    async with _watching(server, issued) as events:
        redacted = TwilioCall(server.client("acme"))
        both = TwilioCall(server.client("acme"))
        await redacted.open(interimResults=True)
        await both.open(interimResults=True, redactionOutput="redacted_and_unredacted")
        await asyncio.gather(
            redacted.send_audio(PIN_UTTERANCE + END_SILENCE, speed=1.0),
            both.send_audio(PIN_UTTERANCE + END_SILENCE, speed=1.0),
        )
        for call in (redacted, both):
            await wait_until(
                _when(lambda call=call: bool(_of(events, call.call_sid, "final"))), 90, "final"
            )
            await call.close()

    # A run of digits, written or spoken, as redaction masks it (a lone digit it leaves).
    digit_run = re.compile(r"\d{3,}|\b(four|seven|two|nine)( (four|seven|two|nine)){2,}\b", re.I)
    for call in (redacted, both):
        interims = _of(events, call.call_sid, "interim")
        assert interims, f"no interims for {call.call_sid}"
        for event in interims:
            assert not digit_run.search(event["text"]), event
            assert 0 <= event["stablePrefix"] <= len(event["text"])
    for event in _of(events, redacted.call_sid, "interim"):
        assert "unredactedText" not in event
    # Where the recogniser heard the PIN the viewer sees it masked, and with
    # redacted_and_unredacted the raw text travels beside it.
    heard = [
        e for e in _of(events, both.call_sid, "interim") if digit_run.search(e["unredactedText"])
    ]
    assert heard, _of(events, both.call_sid, "interim")
    for event in heard:
        assert "#" in event["text"] and event["text"] != event["unredactedText"]


class HeldFinals(FasterWhisperEngine):
    """The real engine with one worker, in which finals wait at a gate (while it is closed)
    inside the worker: the engine really is busy until the test opens it."""

    def __init__(self) -> None:
        super().__init__(AsrSettings(workers=1, cpu_threads=1))
        self.gate = threading.Event()
        self.gate.set()  # open while the server warms the engine up
        self.held = 0

    def transcribe_blocking(self, request: AsrRequest) -> AsrResult:
        if not self.gate.is_set():
            self.held += 1
            self.gate.wait(120)
        return super().transcribe_blocking(request)


class DecodeCounts(FasterWhisperEngine):
    """The real engine with one worker, noting at each interim decode it starts how many finals
    it had been handed and not yet decoded, and at each final it is handed how many interim
    decodes were running. (Handed: counted on the event loop; decoded: in the worker, as the
    decode ends, so a final counts as waiting for as long as it can.)"""

    def __init__(self) -> None:
        super().__init__(AsrSettings(workers=1, cpu_threads=1))
        self.finals_handed = self.finals_decoded = 0
        self.interims_started = self.interims_decoded = 0
        self.finals_waiting_at_interim: list[int] = []
        self.interims_running_at_final: list[int] = []

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.interims_running_at_final.append(self.interims_started - self.interims_decoded)
        self.finals_handed += 1
        return await super().transcribe(request)

    def transcribe_blocking(self, request: AsrRequest) -> AsrResult:
        try:
            return super().transcribe_blocking(request)
        finally:
            self.finals_decoded += 1

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None:
        waiting = self.finals_handed - self.finals_decoded
        decoding = super().start_interim(request)
        if decoding is not None:
            self.interims_started += 1
            self.finals_waiting_at_interim.append(waiting)
        return decoding

    def transcribe_interim_blocking(self, request: AsrRequest) -> AsrResult:
        try:
            return super().transcribe_interim_blocking(request)
        finally:
            self.interims_decoded += 1


@pytest.fixture
async def held_finals() -> AsyncIterator[HeldFinals]:
    """Set up before the server (asked for first), so it is closed after the server stops."""
    engine = HeldFinals()
    yield engine
    engine.gate.set()
    await engine.close()


@pytest.fixture
async def decode_counts() -> AsyncIterator[DecodeCounts]:
    engine = DecodeCounts()
    yield engine
    await engine.close()


@pytest.mark.e2e
async def test_interims_are_shed_while_the_engine_is_busy_and_finals_still_go_out(
    held_finals: HeldFinals, server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    engine = held_finals
    server = await server_factory(receiver.url, asr=engine)
    issued = server.issue_key("acme")
    interims = server.runtime.interims
    assert interims is not None
    async with _watching(server, issued) as events:
        call = TwilioCall(server.client("acme"))
        await call.open(interimResults=True)
        # A final takes the engine's one worker and holds it. (The line's own interim, if
        # one started, ends unpublished: its utterance was over first.)
        engine.gate.clear()
        try:
            await call.send_line(agent_lines(SAMPLE)[2])
            await wait_until(_when(lambda: engine.held == 1), 60, "a final holding the worker")
            decodes_before = interims.stats.decodes
            published_before = len(_of(events, call.call_sid, "interim"))

            # Speech meanwhile: every interim that falls due finds no idle worker, and the
            # utterance's own final waits for the worker.
            await call.send_audio(LONG_UTTERANCE + END_SILENCE, speed=1.0)
            await wait_until(
                _when(lambda: engine.decodes_in_flight == 2), 30, "the second final waiting"
            )
            assert interims.stats.shed >= 3, interims.stats
            assert interims.stats.decodes == decodes_before
        finally:
            engine.gate.set()
        await wait_until(
            _when(lambda: len(_of(events, call.call_sid, "final")) == 2), 90, "both finals"
        )
        await call.close()
    assert len(_of(events, call.call_sid, "interim")) == published_before
    assert len(_webhook(receiver, call.call_sid)) == 2
    health = await server.client("acme").health()
    assert health["asr"]["interim"]["shed"] == interims.stats.shed


@pytest.mark.e2e
async def test_no_interim_starts_while_a_final_waits_and_a_final_waits_for_one_at_most(
    decode_counts: DecodeCounts, server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    engine = decode_counts
    server = await server_factory(receiver.url, asr=engine)
    issued = server.issue_key("acme")
    async with _watching(server, issued) as events:
        calls = [TwilioCall(server.client("acme")) for _ in range(3)]
        for call in calls:
            await call.open(interimResults=True)
        lines = agent_lines(SAMPLE)

        async def speak(n: int, call: TwilioCall) -> None:
            # Three speakers on one worker, a second apart: their interims and finals meet.
            await call.send_audio(SILENCE * 50 * n, speed=1.0)
            await call.send_audio(LONG_UTTERANCE + END_SILENCE, speed=1.0)
            await call.send_line(lines[3 + n], speed=1.0)

        await asyncio.gather(*(speak(n, call) for n, call in enumerate(calls)))
        await wait_until(
            _when(lambda: all(len(_of(events, c.call_sid, "final")) == 2 for c in calls)),
            120,
            "every final",
        )
        for call in calls:
            await call.close()

    assert engine.interims_started > 0
    assert sum(len(_of(events, c.call_sid, "interim")) for c in calls) > 0
    assert engine.finals_handed >= 1 + 2 * len(calls)  # the warm-up, then each call's two
    # No interim decode started while a final was waiting for the worker or being decoded...
    assert set(engine.finals_waiting_at_interim) == {0}, engine.finals_waiting_at_interim
    # ...so a final found at most the one interim decode already running ahead of it.
    assert max(engine.interims_running_at_final) <= 1


@pytest.mark.e2e
async def test_the_api_describes_interim_results_as_an_extension_off_by_default(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        spec = (await http.get("/openapi.json")).json()
    start = spec["paths"]["/mg-autotranscribe/v1/start-streaming"]["post"]
    assert "interimResults" in start["description"]
    assert "CallScribe extension" in start["description"]
    assert "webhook" in start["description"]
    body = start["requestBody"]["content"]["application/json"]["schema"]
    field = body["$defs"]["AutotranscribeParams"]["properties"]["interimResults"]
    assert field["default"] is False and "CallScribe extension" in field["description"]
    assert (
        parse_start(
            {"namespace": "twilio", "guid": "CA1", "customerId": "C", "agentId": "A"}, {"en"}
        ).autotranscribeParams.interimResults
        is False
    )
    assert (
        parse_start(
            {
                "namespace": "twilio",
                "guid": "CA1",
                "autotranscribeParams": {"interimResults": True},
            },
            {"en"},
        ).autotranscribeParams.interimResults
        is True
    )


@pytest.mark.e2e
async def test_a_tenant_that_opts_in_gets_interims_on_its_webhook_before_each_final(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    """``callscribe webhook set --interim-results``: the interims the viewers get go to the
    tenant's webhook too, each before its utterance's final, none after it."""
    set_webhook(
        server.runtime.store,
        server.runtime.adapters.secrets,
        tenant="acme",
        url=receiver.url,
        interim_results=True,
    )
    call = TwilioCall(server.client("acme"))
    await call.open(interimResults=True)
    await call.send_audio(LONG_UTTERANCE + END_SILENCE, speed=1.0)
    await wait_until(
        _when(lambda: any(b["type"] == "transcript" for b in _webhook(receiver, call.call_sid))),
        90,
        "the final on the webhook",
    )
    await call.close()

    bodies = _webhook(receiver, call.call_sid)
    final = next(b for b in bodies if b["type"] == "transcript")
    role, start = final["sender"]["role"], final["autotranscribeResponse"]["start"]
    interims = [b for b in bodies if b["type"] == "interim"]
    assert interims, bodies
    # All of this utterance's interims come before its final, none after.
    assert bodies.index(final) == len(interims)
    for body in interims:
        assert body["utteranceId"] == f"{role}-{start}" and body["start"] == start
        # The speaker as its transcript names it.
        assert body["sender"] == final["sender"] and body["streamId"] == final["streamId"]
        assert body["text"].strip()
    health = await server.client("acme").health()
    assert health["delivery"]["interims"]["delivered"] == len(interims)
    # The after-call API and the failures API know finals only.
    assert server.runtime.store.list_delivery_failures("acme") == []
