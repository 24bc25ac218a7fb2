"""The Twilio gateway against misbehaving or unlucky streams, on a real server over real
WebSockets: identifiers that are no guid, a stream that floods, a stream that fails and is
replaced (the documented recovery), and stop-streaming racing the end of the stream."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import websockets

from callscribe.asr.base import AsrEngine, AsrRequest, AsrResult
from callscribe.audio import pcm16_to_ulaw
from callscribe.simulate import WebhookReceiver
from callscribe.store.base import CallKey, CallStatus
from callscribe.twilio.protocol import TwilioStreamWriter
from tests.conftest import RunningServer
from tests.speech import needs_speech_tools, speak

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
SILENCE_FRAME = pcm16_to_ulaw(np.zeros(160, dtype=np.int16))


def speech_ulaw(text: str, directory: Path, name: str) -> bytes:
    """``text`` spoken by espeak-ng, as Twilio sends it: 8 kHz mu-law, whole 20 ms frames."""
    speak(text, directory, name)  # leaves the 16 kHz WAV beside the samples it returns
    wav8 = directory / f"{name}.8k.wav"
    subprocess.run(
        ["sox", "-V1", str(directory / f"{name}.16k.wav"), "-r", "8000", "-c", "1", "-b", "16",
         "-e", "signed-integer", str(wav8)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav8)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    ulaw = pcm16_to_ulaw(pcm)
    return ulaw + SILENCE_FRAME[: -len(ulaw) % FRAME_BYTES or 0]


def silence(ms: int) -> bytes:
    return SILENCE_FRAME * (ms // 20)


async def send_audio(
    ws: websockets.ClientConnection,
    writer: TwilioStreamWriter,
    inbound: bytes,
    *,
    speed: float,
) -> None:
    """``inbound`` on the inbound track and silence on the outbound one, 20 ms frames paced
    at ``speed`` times real time."""
    began = time.monotonic()
    for index in range(len(inbound) // FRAME_BYTES):
        await ws.send(writer.media("inbound", inbound[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]))
        await ws.send(writer.media("outbound", SILENCE_FRAME))
        delay = began + (index + 1) * 0.02 / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class GatedAsr:
    """The real engine behind a gate: a test holds transcription to catch a call while it
    completes (AsrEngine is a port; the model still does the work)."""

    def __init__(self, engine: AsrEngine) -> None:
        self.engine = engine
        self.gate = asyncio.Event()
        self.waiting = 0

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.waiting += 1
        await self.gate.wait()
        return await self.engine.transcribe(request)

    async def close(self) -> None:
        pass


def messages_of(receiver: WebhookReceiver, call_sid: str) -> list[dict]:
    return [
        m.body for m in receiver.messages if m.body.get("externalConversationId") == call_sid
    ]


async def wait_for_messages(
    receiver: WebhookReceiver, call_sid: str, count: int, limit_s: float = 90
) -> list[dict]:
    async with asyncio.timeout(limit_s):
        while len(messages_of(receiver, call_sid)) < count:
            await asyncio.sleep(0.1)
    return messages_of(receiver, call_sid)


async def wait_for_status(
    server: RunningServer, key: CallKey, status: CallStatus, limit_s: float = 90
) -> None:
    async with asyncio.timeout(limit_s):
        while True:
            record = server.runtime.store.get_call(key)
            if record is not None and record.status is status:
                return
            await asyncio.sleep(0.05)


def new_writer(call_sid: str | None = None) -> TwilioStreamWriter:
    return TwilioStreamWriter(
        "MZ" + uuid.uuid4().hex, call_sid or "CA" + uuid.uuid4().hex, "AC" + "0" * 32
    )


@asynccontextmanager
async def opened_stream(
    url: str, writer: TwilioStreamWriter
) -> AsyncIterator[websockets.ClientConnection]:
    """A Twilio stream that has sent connected, start and one frame of silence per track."""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start())
        for track in ("inbound", "outbound"):
            await ws.send(writer.media(track, SILENCE_FRAME))
        yield ws


async def closed_by_server(ws: websockets.ClientConnection) -> tuple[int | None, str]:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=20)
    return ws.close_code, ws.close_reason or ""


async def wait_until_registered(server: RunningServer, key: CallKey) -> None:
    async with asyncio.timeout(20):
        while server.runtime.registry.get(key) is None:
            await asyncio.sleep(0.02)


# -------------------------------------------------------------------------- callSid


@pytest.mark.parametrize(
    "call_sid", ["CA\x00" + "1" * 30, "CA\u202e" + "1" * 30, "../../etc/passwd", "CA" + "9" * 200]
)
async def test_a_call_sid_that_is_no_guid_closes_only_its_own_stream(
    server: RunningServer, call_sid: str
) -> None:
    api = server.client("acme")
    url = await api.stream_url()
    good = new_writer()
    async with opened_stream(url, good):
        await wait_until_registered(server, CallKey("acme", "twilio", good.call_sid))
        async with opened_stream(url, new_writer(call_sid)) as bad:
            code, reason = await closed_by_server(bad)
        assert code == 1007, (code, reason)
        assert "invalid start.callSid" in reason
        assert reason.isascii() and reason.isprintable()
        # Nothing was stored under the refused identifier, nothing is live under it.
        assert server.runtime.store.find_calls("acme", call_sid) == []
        assert len(server.runtime.registry) == 1
        # The other call is unaffected: live and controllable.
        assert (await api.start(good.call_sid, "C1", "A1")).status_code == 200
        assert (await api.stop(good.call_sid)).status_code == 200


# -------------------------------------------------------------------------- one timeline a call


@needs_speech_tools
async def test_a_new_stream_after_a_failure_continues_the_calls_timeline(
    server: RunningServer, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """The documented recovery: Twilio's stream fails, the customer starts a new stream for the
    same call and sends start again. Its messages continue the call's timeline."""
    api = server.client("acme")
    call_sid = "CA" + uuid.uuid4().hex
    key = CallKey("acme", "twilio", call_sid)
    before = speech_ulaw("I would like to change the delivery address on my order.", tmp_path, "a")
    after = speech_ulaw("Sure, I can help you with that today.", tmp_path, "b")

    first = new_writer(call_sid)
    first_audio = silence(500) + before + silence(1500)
    async with opened_stream(await api.stream_url(), first) as ws:
        await wait_until_registered(server, key)
        assert (await api.start(call_sid, "C1", "A1")).status_code == 200
        await send_audio(ws, first, first_audio, speed=4)
        # The stream fails: the connection drops without a stop frame.
        ws.transport.abort()
    [earlier] = await wait_for_messages(receiver, call_sid, 1)
    await wait_for_status(server, key, CallStatus.COMPLETED)
    # What the first stream covered, on the call's timeline (its frame before the audio too).
    first_end_ms = 20 + len(first_audio) // 8

    second = new_writer(call_sid)
    async with opened_stream(await api.stream_url(), second) as ws:
        await wait_until_registered(server, key)
        assert (await api.start(call_sid, "C1", "A1")).status_code == 200
        await send_audio(ws, second, silence(500) + after + silence(1500), speed=4)
        await ws.send(second.stop())
        await closed_by_server(ws)
    messages = await wait_for_messages(receiver, call_sid, 2)
    later = messages[1]["autotranscribeResponse"]
    first_span = earlier["autotranscribeResponse"]
    assert "delivery" in first_span["utterance"][0]["text"].lower()
    assert "sure" in later["utterance"][0]["text"].lower()
    # The new stream's audio lies after the first stream's, never over it.
    assert later["start"] >= first_end_ms, (first_span, later, first_end_ms)
    assert later["start"] > first_span["end"]
    assert later["end"] > later["start"]
    # The after-call API agrees with the webhook.
    stored = (await api.messages(call_sid)).json()["messages"]
    assert [m["autotranscribeResponse"]["start"] for m in stored] == [
        first_span["start"], later["start"]
    ]


# -------------------------------------------------------------------------- stop after the end


@needs_speech_tools
@pytest.mark.parametrize("when", ["after the call completed", "while the call completes"])
async def test_stop_streaming_after_the_stream_ended_answers_the_calls_summary(
    server: RunningServer, receiver: WebhookReceiver, tmp_path: Path, when: str
) -> None:
    """The customer's stop-streaming often races the hang-up that ends Twilio's stream: it gets
    the summary of the call as it ended, as a stop before the hang-up would have."""
    api = server.client("acme")
    gated = GatedAsr(server.runtime.pipeline.asr)
    server.runtime.pipeline.asr = gated  # type: ignore[assignment]
    if when == "after the call completed":
        gated.gate.set()
    call_sid = "CA" + uuid.uuid4().hex
    key = CallKey("acme", "twilio", call_sid)
    audio = silence(500) + speech_ulaw("Can you hold on for a moment?", tmp_path, "c") + silence(1500)
    writer = new_writer(call_sid)
    async with opened_stream(await api.stream_url(), writer) as ws:
        await wait_until_registered(server, key)
        assert (await api.start(call_sid, "C1", "A1")).status_code == 200
        await send_audio(ws, writer, audio, speed=4)
        await ws.send(writer.stop())  # the hang-up
        if when == "after the call completed":
            await closed_by_server(ws)
            await wait_for_status(server, key, CallStatus.COMPLETED)
            stopped = await api.stop(call_sid)
        else:
            # The call's last utterance is held at the gate, so the call is still completing
            # (its record not yet completed) when the stop reaches it.
            async with asyncio.timeout(30):
                while not gated.waiting or server.runtime.registry.get(key).status is not (
                    CallStatus.COMPLETED
                ):
                    await asyncio.sleep(0.02)
            stopping = asyncio.create_task(api.stop(call_sid))
            await asyncio.sleep(0.3)
            record = server.runtime.store.get_call(key)
            assert record is not None and record.status is CallStatus.STREAMING
            gated.gate.set()
            stopped = await stopping
            await closed_by_server(ws)
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["isOk"] is True
    # Every frame of the stream counts (16-bit PCM at 8 kHz: 2 bytes a sample), including
    # the one per track sent before the audio.
    sent_bytes = (len(audio) + FRAME_BYTES) * 2
    messages = await wait_for_messages(receiver, call_sid, 1)
    await wait_for_status(server, key, CallStatus.COMPLETED)
    for role in ("customer", "agent"):
        summary = body["autotranscribeResponse"][role]["summary"]
        assert summary["totalAudioBytes"] == sent_bytes, (role, summary)
        assert summary["audioDurationMs"] == sent_bytes // 16
        assert summary["streamingSeconds"] >= 1
        assert summary["transcripts"] == sum(1 for m in messages if m["sender"]["role"] == role)
    assert body["autotranscribeResponse"]["customer"]["summary"]["transcripts"] >= 1
    # As after any stop: a second one finds transcription already stopped.
    again = await api.stop(call_sid)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "409-201")
