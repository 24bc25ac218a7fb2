"""The Twilio gateway against misbehaving or unlucky streams, on a real server over real
WebSockets: identifiers that are no guid, a stream that floods, a stream that fails and is
replaced (the documented recovery), and stop-streaming racing the end of the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import websockets

from callscribe.audio import pcm16_to_ulaw
from callscribe.store.base import CallKey, CallStatus
from callscribe.twilio.protocol import TwilioStreamWriter
from tests.conftest import RunningServer

SILENCE_FRAME = pcm16_to_ulaw(np.zeros(160, dtype=np.int16))  # 20 ms


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
