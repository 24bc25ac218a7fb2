"""What one peer may hold of a running server, attacked on loopback over real sockets: idle
and trickling connections, a media WebSocket that never starts, more connections than the
server allows, oversized bodies, a process out of file descriptors, and what ``/healthz``
shows to whom. Each bound is small here; the tests assert eventual outcomes with generous
time limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import websockets

from callscribe.config import ServerLimitsSettings
from callscribe.testing.simulate import free_port
from callscribe.twilio.protocol import TwilioStreamWriter
from tests.conftest import RunningServer

START = "/mg-autotranscribe/v1/start-streaming"
STREAM_URL = "/mg-autotranscribe/v1/twilio-media-stream-url"
ServerFactory = Callable[..., Awaitable[RunningServer]]


async def limited_server(server_factory: ServerFactory, **limits: Any) -> RunningServer:
    return await server_factory(None, limits=ServerLimitsSettings(**limits))


def address(server: RunningServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def raw_connection(
    server: RunningServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it holds
    the connection longer than ``limit_s``)."""
    async with asyncio.timeout(limit_s):
        data = b""
        while True:
            try:
                chunk = await reader.read(65_536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def key_headers(server: RunningServer, tenant: str = "acme") -> dict[str, str]:
    issued = server.issue_key(tenant)
    return {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def content_length(head: bytes) -> int:
    return next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


def json_body_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# Idle and slow HTTP peers ------------------------------------------------------------------


async def test_a_connection_that_never_sends_a_request_is_closed(
    server_factory: ServerFactory,
) -> None:
    server = await limited_server(server_factory, request_timeout_s=1)
    async with raw_connection(server) as (reader, _):
        # Nothing was asked, so nothing is answered: the connection is just closed.
        assert await read_until_closed(reader, limit_s=15) == b""


async def test_a_trickled_request_header_is_cut_off(server_factory: ServerFactory) -> None:
    server = await limited_server(server_factory, request_timeout_s=1)
    async with raw_connection(server) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        async def trickle() -> None:
            # One byte every 0.2 s: each byte would reset a per-read idle timer.
            with contextlib.suppress(OSError):
                for _ in range(500):
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        try:
            answer = await read_until_closed(reader, limit_s=15)
        finally:
            trickling.cancel()
        assert status_of(answer) == 408, answer


async def test_a_trickled_body_is_cut_off(server_factory: ServerFactory) -> None:
    server = await limited_server(server_factory, request_timeout_s=1)
    headers = key_headers(server)
    async with raw_connection(server) as (reader, writer):
        writer.write(
            f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"asapp-api-id: {headers['asapp-api-id']}\r\n"
            f"asapp-api-secret: {headers['asapp-api-secret']}\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(500):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        try:
            await read_until_closed(reader, limit_s=15)
        finally:
            trickling.cancel()


async def test_request_headers_beyond_the_limit_get_431(server_factory: ServerFactory) -> None:
    server = await limited_server(server_factory, max_header_bytes=4096, request_timeout_s=30)
    async with raw_connection(server) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        answer = await read_until_closed(reader, limit_s=15)
    assert status_of(answer) == 431, answer
    # Headers within the limit are served as before.
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.get("/healthz", headers={"X-Fine": "a" * 2000})
        assert response.status_code == 200


async def test_keep_alive_requests_are_each_given_the_full_time(
    server_factory: ServerFactory,
) -> None:
    """The deadline is per request: a client that keeps one connection busy with prompt
    requests for longer than the deadline is not cut off."""
    server = await limited_server(server_factory, request_timeout_s=1)
    async with raw_connection(server) as (reader, writer):
        began = time.monotonic()
        while time.monotonic() - began < 3:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
            assert status_of(head) == 200
            await reader.readexactly(content_length(head))
            await asyncio.sleep(0.3)


# The Twilio media WebSocket ----------------------------------------------------------------


async def test_a_media_websocket_that_never_starts_is_closed(
    server_factory: ServerFactory,
) -> None:
    server = await limited_server(server_factory, twilio_start_timeout_s=1)
    url = await server.client("acme").stream_url()
    writer = TwilioStreamWriter("MZidle", "CAidle", "AC" + "4" * 32)
    async with websockets.connect(url) as ws:
        await ws.send(writer.connected())  # a valid token, Twilio's first frame, then nothing
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=15)
        assert ws.close_code == 1008
        assert "start" in (ws.close_reason or ""), ws.close_reason
    # The same deadline for a WebSocket that sends nothing at all.
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=15)
        assert ws.close_code == 1008


async def test_a_media_websocket_that_starts_in_time_streams_past_the_deadline(
    server_factory: ServerFactory,
) -> None:
    server = await limited_server(server_factory, twilio_start_timeout_s=1)
    url = await server.client("acme").stream_url()
    call_sid = "CA" + uuid.uuid4().hex
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "4" * 32)
    async with websockets.connect(url) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start())
        for index in range(100):  # 2.5 s of frames, past the 1 s deadline
            await ws.send(writer.media("inbound", b"\xff" * 160, index * 20))
            await asyncio.sleep(0.025)
        assert ws.close_code is None
        assert len(server.runtime.registry) == 1


# Connections beyond the cap ----------------------------------------------------------------


async def test_connections_beyond_the_cap_are_refused_at_once_and_health_returns(
    server_factory: ServerFactory,
) -> None:
    server = await limited_server(server_factory, max_connections=5, request_timeout_s=60)
    held = [await asyncio.open_connection(*address(server)) for _ in range(5)]
    try:
        for reader, writer in held:  # answered, so accepted; then idle on keep-alive
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
            await reader.readexactly(content_length(head))
        async with raw_connection(server) as (reader, _):
            answer = await read_until_closed(reader, limit_s=15)
        assert status_of(answer) == 503, answer
    finally:
        for _, writer in held:
            writer.close()
    async with asyncio.timeout(15), httpx.AsyncClient(base_url=server.base_url) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)


async def test_each_limit_is_logged_once_per_interval(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await limited_server(server_factory, request_timeout_s=0.5, log_interval_s=600)
    caplog.set_level(logging.INFO)
    connections = [await asyncio.open_connection(*address(server)) for _ in range(20)]
    try:
        for reader, _ in connections:
            await read_until_closed(reader, limit_s=15)
    finally:
        for _, writer in connections:
            writer.close()
    timed_out = [r for r in caplog.records if "not complete within" in r.getMessage()]
    assert len(timed_out) == 1, [r.getMessage() for r in timed_out]


# Request bodies ----------------------------------------------------------------------------


async def _answer_while_sending(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, chunks: AsyncIterator[bytes]
) -> tuple[bytes, int]:
    """Send ``chunks`` until the server answers; the answer and the bytes sent by then."""
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(OSError):
            async for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sending = asyncio.create_task(send())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
        return head + await reader.readexactly(content_length(head)), sent
    finally:
        sending.cancel()


async def _slow_stream(total: int, chunk: bytes, *, chunked: bool) -> AsyncIterator[bytes]:
    """``total`` bytes at about 1.6 MB/s: far longer than the test waits for an answer."""
    for _ in range(total // len(chunk)):
        if chunked:
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
        else:
            yield chunk
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    server_factory: ServerFactory, chunked: bool
) -> None:
    server = await limited_server(server_factory, request_timeout_s=120)
    headers = key_headers(server)
    framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 200000000"
    async with raw_connection(server) as (reader, writer):
        writer.write(
            f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"asapp-api-id: {headers['asapp-api-id']}\r\n"
            f"asapp-api-secret: {headers['asapp-api-secret']}\r\n{framing}\r\n\r\n".encode()
        )
        answer, sent = await _answer_while_sending(
            writer, reader, _slow_stream(200_000_000, b" " * 16_384, chunked=chunked)
        )
    assert status_of(answer) == 400, answer
    assert json_body_of(answer)["error"]["code"] == "400-201"
    assert b"connection: close" in answer.lower()
    assert sent < 20_000_000


async def test_a_body_within_the_limit_is_still_read(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, headers=key_headers(server)) as http:
        padded = {"namespace": "twilio", "guid": "CAnone", "pad": "x" * 60_000}

        async def chunks() -> AsyncIterator[bytes]:
            body = json.dumps(padded).encode()
            for index in range(0, len(body), 4096):
                yield body[index : index + 4096]

        response = await http.post(START, content=chunks())  # chunked, no Content-Length
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "400-203"  # read, parsed: no such call


# Unexpected errors -------------------------------------------------------------------------


async def test_an_unexpected_error_is_a_500_answer_on_a_connection_that_stays_open(
    server: RunningServer,
) -> None:
    headers = key_headers(server)
    request = (
        "GET /callscribe/v1/webhook-failures HTTP/1.1\r\nHost: x\r\n"
        f"asapp-api-id: {headers['asapp-api-id']}\r\n"
        f"asapp-api-secret: {headers['asapp-api-secret']}\r\n\r\n"
    ).encode()
    with mock.patch.object(
        server.runtime.store, "list_delivery_failures", side_effect=RuntimeError("boom")
    ):
        async with raw_connection(server) as (reader, writer):
            answers = []
            for _ in range(2):  # the same keep-alive connection, twice
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
                answers.append(head + await reader.readexactly(content_length(head)))
    for answer in answers:
        assert status_of(answer) == 500
        body = json_body_of(answer)
        assert body["error"]["code"] == "500-201"
        assert "boom" not in json.dumps(body)


# /healthz ----------------------------------------------------------------------------------


async def test_healthz_without_a_key_is_liveness_only(server: RunningServer) -> None:
    api = server.client("acme")
    call_sid = "CA" + uuid.uuid4().hex
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "5" * 32)
    async with websockets.connect(await api.stream_url()) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start())
        async with asyncio.timeout(15):
            while len(server.runtime.registry) == 0:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            public = await http.get("/healthz")
    assert public.status_code == 200
    assert set(public.json()) == {"status", "version", "liveCalls"}
    assert public.json()["status"] == "ok" and public.json()["liveCalls"] == 1
    assert call_sid not in public.text and "acme" not in public.text


async def test_healthz_with_a_key_shows_counters_and_only_that_tenants_calls(
    server: RunningServer,
) -> None:
    assert server.runtime.connect is not None
    readers = [
        {"guid": "contact-of-acme", "tenant": "acme", "status": "streaming"},
        {"guid": "contact-of-globex", "tenant": "globex", "status": "streaming"},
    ]
    real_stats = server.runtime.connect.stats
    with mock.patch.object(
        server.runtime.connect, "stats", lambda: {**real_stats(), "readers": readers}
    ):
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            detailed = await http.get("/healthz", headers=key_headers(server, "acme"))
            wrong = await http.get(
                "/healthz", headers={"asapp-api-id": "cs-nobody", "asapp-api-secret": "x"}
            )
    assert detailed.status_code == 200
    details = detailed.json()
    assert details["status"] == "ok"
    assert "utterances" in details["asr"] and "delivered" in details["delivery"]
    assert details["amazonConnect"]["readers"] == [readers[0]]
    assert "globex" not in detailed.text
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "401-201"
    # What `callscribe bench` reads, through the API client's key.
    assert "realTimeFactor" in (await server.client("acme").health())["asr"]


# Out of file descriptors (a separate server process, so that its limit is its own) ---------


async def _healthy(base_url: str, limit_s: float) -> None:
    async with asyncio.timeout(limit_s), httpx.AsyncClient(base_url=base_url) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz", timeout=5)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


async def test_out_of_descriptors_the_server_recovers_and_logs_little(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "CALLSCRIBE_LIMITS_REQUEST_TIMEOUT_S": "1",
        "CALLSCRIBE_LIMITS_LOG_INTERVAL_S": "600",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "callscribe",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--sip-port",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base_url = f"http://127.0.0.1:{port}"
    attack: list[asyncio.StreamWriter] = []
    try:
        await _healthy(base_url, limit_s=180)
        # Leave the server 40 descriptors beyond those it holds: idle connections use them up.
        in_use = len(os.listdir(f"/proc/{process.pid}/fd"))
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (in_use + 40, hard))
        for _ in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            attack.append(writer)
        # Still held open by the attacker: the server must free its side and answer again.
        await _healthy(base_url, limit_s=90)
    finally:
        for writer in attack:
            writer.close()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()
    lines = log_path.read_text(errors="replace").splitlines()
    out_of_resource = [line for line in lines if "out of system resource" in line]
    assert 1 <= len(out_of_resource) <= 2, out_of_resource[:5]
    tracebacks = [line for line in lines if line.startswith("Traceback")]
    assert len(tracebacks) <= 2, tracebacks[:5]
