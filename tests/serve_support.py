"""Helpers for tests that run `callscribe serve` as a child process and stream a real Twilio
call into it (the sample call's audio, as Twilio frames over a real WebSocket)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection

from callscribe.auth import create_api_key
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import (
    FRAME_BYTES,
    ApiClient,
    SampleCall,
    Segment,
    load_sample_call,
)
from callscribe.twilio.protocol import TwilioStreamWriter

SILENCE = b"\xff" * FRAME_BYTES  # μ-law silence


def api_client(data_dir: Path, base_url: str, tenant: str = "acme") -> ApiClient:
    """A key issued straight into the server's store, as `callscribe keys create` does."""
    store = SqliteStore(data_dir / "callscribe.sqlite3")
    try:
        issued = create_api_key(store, tenant)
    finally:
        store.close()
    return ApiClient(base_url, issued.api_id, issued.api_secret)


def agent_lines(call: SampleCall) -> list[Segment]:
    return [s for s in call.segments if s.transcribed and s.track == "outbound"]


def line_audio(call: SampleCall, line: Segment) -> bytes:
    """A line's μ-law audio, from 300 ms before it to its end, from its own track."""
    audio = call.tracks[line.track]
    first = max(0, (line.start_ms - 300) * 8 // FRAME_BYTES)
    last = line.end_ms * 8 // FRAME_BYTES
    return audio[first * FRAME_BYTES : last * FRAME_BYTES]


class TwilioCall:
    """One call's Media Stream: open it, start transcription, send audio frame by frame."""

    def __init__(self, api: ApiClient, call: SampleCall | None = None) -> None:
        self.api = api
        self.call = call or load_sample_call()
        self.call_sid = "CA" + uuid.uuid4().hex
        self.writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, self.call_sid, "AC" + "4" * 32)
        self.ws: ClientConnection | None = None
        self.next_ms = 0  # media.timestamp of the next frame

    async def open(self, **start_params: object) -> None:
        self.ws = await websockets.connect(await self.api.stream_url())
        await self.ws.send(self.writer.start(tracks=("outbound",)))
        deadline = time.monotonic() + 30
        while True:  # the gateway registers the call as the start frame arrives
            response = await self.api.start(self.call_sid, "C1", "A1", **start_params)
            if response.status_code == 200:
                return
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(0.1)

    async def send_line(
        self, line: Segment, trailing_silence_ms: int = 1500, speed: float | None = None
    ) -> None:
        """The agent's line (from 300 ms before it), then silence so that it ends."""
        await self.send_audio(
            line_audio(self.call, line) + SILENCE * (trailing_silence_ms // 20), speed
        )

    async def send_audio(self, ulaw: bytes, speed: float | None = None) -> None:
        """μ-law audio as the agent's track, 20 ms a frame: ``speed`` × real time, or as fast
        as the socket takes it (None: when pacing is not what is tested)."""
        assert self.ws is not None
        started = time.monotonic()
        for n in range(len(ulaw) // FRAME_BYTES):
            chunk = ulaw[n * FRAME_BYTES : (n + 1) * FRAME_BYTES]
            await self.ws.send(self.writer.media("outbound", chunk, self.next_ms))
            self.next_ms += 20
            if speed is None:
                await asyncio.sleep(0)  # let the socket breathe
            else:
                await asyncio.sleep(max(0.0, started + (n + 1) * 0.02 / speed - time.monotonic()))

    async def close(self) -> None:
        """Leave the socket (a server that was killed has closed it already)."""
        if self.ws is not None:
            await self.ws.close()


async def wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        await asyncio.sleep(0.2)
