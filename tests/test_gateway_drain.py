"""The Twilio gateway task draining, its app served on loopback (its two ports) on the local
adapters: on SIGTERM's drain new streams are closed at once with 1013 and the reason, and the
live ones go on to their end; once its deployment is replaced it is unready at once but takes new streams for its
grace (the load balancer is still sending them). The VAD hears loud audio as speech and the
ASR names the gateway (``tests/test_cloud_e2e.py`` drains the task's real process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from callscribe import adapters
from callscribe.audio import pcm16_to_ulaw
from callscribe.auth import create_api_key
from callscribe.aws.services.gateway_service import create_gateway_app
from callscribe.bus import InProcessEventBus, TranscriptEvent
from callscribe.config import Settings, TwilioSettings
from callscribe.control import LocalControl
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.model import StartRequest
from callscribe.serving import start_serving, stop_serving, uvicorn_config
from callscribe.store.base import CallKey, CallStatus
from callscribe.testing.simulate import bind_loopback
from callscribe.twilio.gateway import DRAINING_REASON
from callscribe.twilio.protocol import TwilioStreamWriter
from tests.drain_support import NamingAsr, segments
from tests.test_endpointing import ScriptedVad

FRAME_SAMPLES = 160  # 20 ms at 8 kHz, as Twilio sends


@dataclass
class Gateway:
    runtime: IngestRuntime
    url: str
    media_url: str
    events: list[TranscriptEvent] = field(default_factory=list)

    async def readyz(self) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.get(f"{self.url}/readyz")

    async def healthz(self) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.get(f"{self.url}/healthz")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(data_dir=tmp_path, twilio=TwilioSettings(unready_grace_s=1.0))
    ports = adapters.local(settings)
    runtime = IngestRuntime.compose(
        settings,
        ports,
        ingests=[Ingest.TWILIO],
        owner="http://127.0.0.1:8081",
        asr=NamingAsr("gateway"),
        vad_factory=ScriptedVad,
    )
    service, control = bind_loopback(), bind_loopback()
    app = create_gateway_app(runtime, "control-secret", control.getsockname()[1])
    server, serving = await start_serving(uvicorn_config(app, settings), [service, control])
    assert server.started
    issued = create_api_key(runtime.store, "acme")
    key = runtime.store.get_api_key(issued.api_id)
    assert key is not None
    url = f"http://127.0.0.1:{service.getsockname()[1]}"
    found = Gateway(
        runtime,
        url,
        f"ws://127.0.0.1:{service.getsockname()[1]}/twilio-media?token={runtime.tokens.issue(key)}",
    )
    assert isinstance(ports.bus, InProcessEventBus)
    ports.bus.subscribe(found.events.append)
    try:
        yield found
    finally:
        await stop_serving(server, serving)


class Stream:
    """One Twilio media stream: customer audio on the inbound track, silence outbound."""

    def __init__(self, gateway: Gateway, call_sid: str) -> None:
        self.gateway = gateway
        self.call_sid = call_sid
        self.writer = TwilioStreamWriter("MZ" + call_sid[2:], call_sid, "AC" + "0" * 32)
        self.ws: websockets.ClientConnection | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.gateway.media_url)
        await self.ws.send(self.writer.connected())
        await self.ws.send(self.writer.start(tracks=("inbound", "outbound")))
        key = CallKey("acme", "twilio", self.call_sid)
        deadline = time.monotonic() + 10
        while self.gateway.runtime.registry.get(key) is None:
            assert time.monotonic() < deadline, "the stream opened no call"
            await asyncio.sleep(0.01)
        await LocalControl(self.gateway.runtime.registry).start_live(
            key,
            StartRequest.model_validate(
                {"namespace": "twilio", "guid": self.call_sid, "customerId": "C", "agentId": "A"}
            ),
        )

    async def send(self, customer: np.ndarray) -> None:
        assert self.ws is not None
        silence = pcm16_to_ulaw(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        for start in range(0, len(customer), FRAME_SAMPLES):
            frame = pcm16_to_ulaw(customer[start : start + FRAME_SAMPLES])
            await self.ws.send(self.writer.media("inbound", frame))
            await self.ws.send(self.writer.media("outbound", silence))

    async def hang_up(self) -> None:
        assert self.ws is not None
        await self.ws.send(self.writer.stop())
        await self.ws.wait_closed()


async def refused(gateway: Gateway) -> ConnectionClosed:
    """A new stream's WebSocket, closed by the gateway before any frame is taken."""
    async with websockets.connect(gateway.media_url) as ws:
        with pytest.raises(ConnectionClosed) as refusal:
            await asyncio.wait_for(ws.recv(), 5)
    return refusal.value


async def test_draining_refuses_new_streams_and_lets_the_live_one_finish(
    gateway: Gateway,
) -> None:
    live = Stream(gateway, "CA" + "1" * 32)
    await live.open()
    await live.send(segments(("speech", 1.0), ("silence", 1.0)))

    # SIGTERM: the drain runs while the server still serves.
    started = time.monotonic()
    draining = asyncio.get_running_loop().create_task(gateway.runtime.drain(60))
    await asyncio.sleep(0.05)
    ready = await gateway.readyz()
    assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
    assert (await gateway.healthz()).status_code == 200
    refusal = await refused(gateway)
    assert refusal.rcvd is not None
    assert (refusal.rcvd.code, refusal.rcvd.reason) == (1013, DRAINING_REASON)
    assert gateway.runtime.stats()["twilioStreams"]["refusedDraining"] == 1

    # The live stream goes on: more speech, then the hang-up ends it and the drain.
    await live.send(segments(("speech", 1.0), ("silence", 1.0), seed=2))
    assert not draining.done()
    await live.hang_up()
    await asyncio.wait_for(draining, 10)
    assert time.monotonic() - started < 10
    record = gateway.runtime.store.get_call(CallKey("acme", "twilio", live.call_sid))
    assert record is not None and record.status is CallStatus.COMPLETED
    texts = [
        (e.seq, e.body["autotranscribeResponse"]["utterance"][0]["text"]) for e in gateway.events
    ]
    assert texts == [(0, "gateway"), (1, "gateway")]
    (first, second) = (e.body["autotranscribeResponse"] for e in gateway.events)
    assert first["start"] <= 100 and 900 <= first["end"] <= 1200
    assert 1700 <= second["start"] <= 2000 and 2900 <= second["end"] <= 3200


async def test_a_replaced_gateway_is_unready_at_once_and_refuses_streams_after_its_grace(
    gateway: Gateway,
) -> None:
    gateway.runtime.stop_taking_calls()
    assert (await gateway.readyz()).status_code == 503
    # The load balancer still sends streams until its health checks fail: they are taken.
    late = Stream(gateway, "CA" + "2" * 32)
    await late.open()
    await asyncio.sleep(1.1)
    assert (await refused(gateway)).rcvd.code == 1013
    # The stream taken during the grace is served to its end.
    await late.send(segments(("speech", 0.6), ("silence", 1.0)))
    await late.hang_up()
    deadline = time.monotonic() + 10
    while len(gateway.runtime.registry):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert [e.body["autotranscribeResponse"]["utterance"][0]["text"] for e in gateway.events] == [
        "gateway"
    ]
