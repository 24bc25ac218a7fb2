"""``callscribe bench``: N simultaneous calls in real time against a local server.

For each N it plays N copies of the sample call (distinct call SIDs, starts staggered over
two seconds so they do not speak in lockstep) as real Twilio Media Streams against one
``callscribe serve`` process, and measures, per delivered message, the time from the end of
the utterance's audio (when the caller sent it) to the webhook receiving it. That figure
includes the endpointer's silence wait, ASR queueing, ASR, persistence and the POST.

With ``interim`` each N is played twice, first without interim results and then with every
call asking for them (``autotranscribeParams.interimResults``), while a viewer of the live
event stream notes when each ``interim`` event reaches it. Per utterance (each final), the
interim latency runs from the start of its speech (the sample call's timeline, when the caller
sent it) to its first interim event; utterances that got none are counted. Interims published
and shed are the server's own counts (``/healthz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from callscribe.auth import IssuedKey, create_api_key
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import (
    ApiClient,
    PlayedCall,
    ReceivedMessage,
    SampleCall,
    Segment,
    load_sample_call,
    play_call,
    running_receiver,
    running_server,
)

STAGGER_S = 2.0
LIVE_EVENTS_PATH = "/callscribe/v1/live/events"
# The sample call's tracks, as its start request maps them.
TRACK_OF_ROLE = {"customer": "inbound", "agent": "outbound"}


@dataclass
class InterimFigures:
    """What a level with interim results on saw of them."""

    p50_ms: float  # speech start → first interim of its utterance
    p95_ms: float
    utterances_with_interim: int
    utterances: int
    received: int  # interim events the viewer got
    published: int  # the server's counts (/healthz asr.interim)
    shed: int
    stale: int


@dataclass
class LevelResult:
    calls: int
    messages: int
    expected_messages: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    asr_rtf: float
    asr_utterances: int
    dropped: int
    failed: int
    control_errors: int
    interim: InterimFigures | None = None  # None: the calls did not ask for interim results


@dataclass
class LiveViewer:
    """A viewer of the tenant's live event stream, noting each interim event and when
    (time.time()) it arrived."""

    interims: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def clear(self) -> None:
        self.interims.clear()

    async def read(self, ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "interim":
                    self.interims.append((time.time(), event))


@contextlib.asynccontextmanager
async def watching_live(base_url: str, issued: IssuedKey) -> AsyncIterator[LiveViewer]:
    viewer = LiveViewer()
    url = base_url.replace("http://", "ws://", 1) + LIVE_EVENTS_PATH
    headers = {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        reading = asyncio.ensure_future(viewer.read(ws))
        try:
            yield viewer
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def speech_start_ms(call: SampleCall, role: str, start_ms: int, end_ms: int) -> int:
    """Where the speech of the utterance ``start_ms``–``end_ms`` of ``role`` begins: the start
    of the timeline's line it overlaps most (the utterance's own start includes the
    endpointer's pre-roll), or the utterance's start when it begins inside that line."""
    track = TRACK_OF_ROLE.get(role)

    def overlap(segment: Segment) -> int:
        return min(end_ms, segment.end_ms) - max(start_ms, segment.start_ms)

    lines = [s for s in call.segments if s.track == track and overlap(s) > 0]
    if not lines:
        return start_ms
    return max(start_ms, max(lines, key=overlap).start_ms)


def truncate(call: SampleCall, seconds: float | None) -> SampleCall:
    if seconds is None or seconds * 1000 >= call.duration_ms:
        return call
    end_ms = int(seconds * 1000)
    return replace(
        call,
        tracks={t: b[: end_ms * 8] for t, b in call.tracks.items()},
        duration_ms=end_ms,
        controls=tuple(c for c in call.controls if c.at_ms < end_ms),
    )


async def run_level(
    n: int,
    call: SampleCall,
    api: ApiClient,
    inbox: list[ReceivedMessage],
    viewer: LiveViewer | None = None,
) -> LevelResult:
    """``viewer``: every call asks for interim results, and this viewer notes them."""
    before = await api.health()
    inbox.clear()
    if viewer is not None:
        viewer.clear()
    params = {"interimResults": True} if viewer is not None else None
    stream_url = await api.stream_url()
    played = [PlayedCall(call_sid="CA" + uuid.uuid4().hex) for _ in range(n)]

    async def one(index: int) -> None:
        await asyncio.sleep(STAGGER_S * index / max(1, n))
        await play_call(stream_url, call, api, played=played[index], autotranscribe_params=params)

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(3)  # the last utterances of the last call
    after = await api.health()

    by_sid = {p.call_sid: p for p in played}
    latencies = [
        (
            m.received_at
            - by_sid[m.body["externalConversationId"]].wall_time_of(
                m.body["autotranscribeResponse"]["end"]
            )
        )
        * 1000
        for m in inbox
        if m.body["externalConversationId"] in by_sid
    ]
    expected = 0
    for p in played:
        expected += len((await api.messages(p.call_sid)).json().get("messages", []))
    asr_b, asr_a = before["asr"], after["asr"]
    audio = asr_a["audioSeconds"] - asr_b["audioSeconds"]
    processing = asr_a["processingSeconds"] - asr_b["processingSeconds"]
    delivery_b, delivery_a = before["delivery"], after["delivery"]
    interim = None
    if viewer is not None:
        interim = _interim_figures(call, by_sid, inbox, viewer, asr_b, asr_a)
    return LevelResult(
        calls=n,
        messages=len(latencies),
        expected_messages=expected,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p95_ms=float(np.percentile(latencies, 95)) if latencies else float("nan"),
        max_ms=max(latencies) if latencies else float("nan"),
        asr_rtf=processing / audio if audio else float("nan"),
        asr_utterances=asr_a["utterances"] - asr_b["utterances"],
        dropped=delivery_a["dropped"] - delivery_b["dropped"],
        failed=delivery_a["failed"] - delivery_b["failed"],
        control_errors=sum(
            1 for p in played for _, r in p.control_responses if r.status_code != 200
        ),
        interim=interim,
    )


def _interim_figures(
    call: SampleCall,
    by_sid: dict[str, PlayedCall],
    inbox: list[ReceivedMessage],
    viewer: LiveViewer,
    asr_before: dict[str, Any],
    asr_after: dict[str, Any],
) -> InterimFigures:
    first: dict[tuple[str, str], float] = {}
    for received_at, event in viewer.interims:
        if event["guid"] in by_sid:
            first.setdefault((event["guid"], event["utteranceId"]), received_at)
    latencies = []
    utterances = 0
    for message in inbox:
        guid = message.body["externalConversationId"]
        if guid not in by_sid:
            continue
        utterances += 1
        role = message.body["sender"]["role"]
        response = message.body["autotranscribeResponse"]
        seen = first.get((guid, f"{role}-{response['start']}"))
        if seen is None:
            continue
        speech = speech_start_ms(call, role, response["start"], response["end"])
        latencies.append((seen - by_sid[guid].wall_time_of(speech)) * 1000)
    counts_b, counts_a = asr_before.get("interim") or {}, asr_after.get("interim") or {}

    def counted(name: str) -> int:
        return int(counts_a.get(name, 0) - counts_b.get(name, 0))

    return InterimFigures(
        p50_ms=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p95_ms=float(np.percentile(latencies, 95)) if latencies else float("nan"),
        utterances_with_interim=len(latencies),
        utterances=utterances,
        received=sum(1 for _, e in viewer.interims if e["guid"] in by_sid),
        published=counted("published"),
        shed=counted("shed"),
        stale=counted("stale"),
    )


def print_table(results: list[LevelResult], p95_bound_ms: float) -> None:
    with_interim = any(r.interim is not None for r in results)
    header = (
        f"{'calls':>5} {'messages':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'ASR RTF':>8} {'dropped':>8} {'failed':>7} {'ctl err':>7}"
    )
    if with_interim:
        header = (
            f"{'calls':>5} {'interim':>7} "
            + header[6:]
            + f" {'1st int p50':>11} {'1st int p95':>11} {'utt w/ int':>10} "
            f"{'published':>9} {'shed':>6} {'stale':>6}"
        )
    print(header)
    print("-" * len(header))
    for r in results:
        line = f"{r.calls:>5} "
        if with_interim:
            line += f"{'on' if r.interim else 'off':>7} "
        line += (
            f"{f'{r.messages}/{r.expected_messages}':>9} {r.p50_ms:>8.0f} "
            f"{r.p95_ms:>8.0f} {r.max_ms:>8.0f} {r.asr_rtf:>8.3f} {r.dropped:>8} "
            f"{r.failed:>7} {r.control_errors:>7}"
        )
        if r.interim is not None:
            i = r.interim
            line += (
                f" {i.p50_ms:>11.0f} {i.p95_ms:>11.0f} "
                f"{f'{i.utterances_with_interim}/{i.utterances}':>10} "
                f"{i.published:>9} {i.shed:>6} {i.stale:>6}"
            )
        print(line)
    print()
    modes = (
        [("", False)] if not with_interim else [(" (interim off)", False), (" (interim on)", True)]
    )
    for label, interim in modes:
        held = [
            r.calls
            for r in results
            if (r.interim is not None) == interim
            and r.p95_ms <= p95_bound_ms
            and r.messages == r.expected_messages
        ]
        if held:
            print(
                f"largest N with p95 ≤ {p95_bound_ms:.0f} ms and nothing lost{label}: {max(held)}"
            )
        else:
            print(f"no N held p95 ≤ {p95_bound_ms:.0f} ms{label}")
    if with_interim:
        print(
            "1st int: from the start of an utterance's speech to its first interim event; "
            "utt w/ int: utterances that had one"
        )


async def run_bench(
    levels: list[int],
    p95_bound_ms: float = 1500.0,
    seconds: float | None = None,
    end_silence_ms: int | None = None,
    stop_when_over: bool = True,
    interim: bool = False,
) -> int:
    """``interim``: each level twice, without and then with interim results."""
    call = truncate(load_sample_call(), seconds)
    data_dir = Path(tempfile.mkdtemp(prefix="callscribe-bench-"))
    env = {"CALLSCRIBE_VAD_END_SILENCE_MS": str(end_silence_ms)} if end_silence_ms else {}
    inbox: list[ReceivedMessage] = []
    results: list[LevelResult] = []
    print(
        f"bench: {call.duration_ms / 1000:.0f} s calls in real time, levels {levels}, "
        f"p95 bound {p95_bound_ms:.0f} ms{', interim results off then on' if interim else ''}",
        flush=True,
    )
    try:
        async with running_receiver() as receiver:
            receiver.listeners.append(inbox.append)
            async with running_server(data_dir, receiver.url, env=env) as server:
                issued = create_api_key(SqliteStore(data_dir / "callscribe.sqlite3"), "bench")
                api = ApiClient(server.base_url, issued.api_id, issued.api_secret)
                async with contextlib.AsyncExitStack() as stack:
                    viewer = (
                        await stack.enter_async_context(watching_live(server.base_url, issued))
                        if interim
                        else None
                    )
                    for n in levels:
                        level = []
                        for with_interim in (False, True) if interim else (False,):
                            mode = " with interim results" if with_interim else ""
                            print(f"… {n} simultaneous call(s){mode}", flush=True)
                            level.append(
                                await run_level(
                                    n, call, api, inbox, viewer if with_interim else None
                                )
                            )
                        results += level
                        if stop_when_over and all(r.p95_ms > p95_bound_ms for r in level):
                            break
                await api.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print_table(results, p95_bound_ms)
    return 0 if results and results[0].messages else 1
