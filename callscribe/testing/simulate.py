"""A simulated contact centre: plays a recorded two-party call as a real Twilio Media Stream,
drives start/stop through the API, and receives the webhook. Used by ``callscribe demo``,
``callscribe bench`` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callscribe.serving import start_serving, stop_serving
from callscribe.twilio.protocol import TwilioStreamWriter

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.02


# The sample call --------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    track: str
    kind: str
    start_ms: int
    end_ms: int
    text: str
    transcribed: bool
    contains_pin: bool


@dataclass(frozen=True)
class Control:
    at_ms: int
    action: str  # "start" | "stop"


@dataclass(frozen=True)
class SampleCall:
    tracks: dict[str, bytes]  # Twilio track -> μ-law bytes
    duration_ms: int
    customer_id: str
    agent_id: str
    controls: tuple[Control, ...]
    segments: tuple[Segment, ...]

    @property
    def frames(self) -> int:
        return min(len(b) for b in self.tracks.values()) // FRAME_BYTES


def load_sample_call(directory: Path | None = None) -> SampleCall:
    if directory is None:
        directory = Path(str(importlib.resources.files("callscribe") / "samples" / "twilio_call"))
    timeline = json.loads((directory / "timeline.json").read_text())
    return SampleCall(
        tracks={t: (directory / f"{t}.ulaw").read_bytes() for t in ("inbound", "outbound")},
        duration_ms=timeline["durationMs"],
        customer_id=timeline["customerId"],
        agent_id=timeline["agentId"],
        controls=tuple(Control(c["atMs"], c["action"]) for c in timeline["controls"]),
        segments=tuple(
            Segment(
                s["track"],
                s["kind"],
                s["startMs"],
                s["endMs"],
                s["text"],
                s["transcribed"],
                s.get("containsPin", False),
            )
            for s in timeline["segments"]
        ),
    )


# The webhook receiver ---------------------------------------------------------------------


@dataclass
class ReceivedMessage:
    body: dict[str, Any]
    headers: dict[str, str]
    query: dict[str, str]
    received_at: float  # time.time()
    raw: bytes = b""  # the body as sent (what the webhook signature covers)


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records every POST (optionally failing them).
    With ``tls`` (uvicorn's ``ssl_certfile``, ``ssl_keyfile``, ``ssl_ca_certs``,
    ``ssl_cert_reqs``) it serves HTTPS, and can require a client certificate."""

    path: str = "/webhook"
    status_code: int = 200
    delay_s: float = 0.0
    messages: list[ReceivedMessage] = field(default_factory=list)
    listeners: list[Callable[[ReceivedMessage], None]] = field(default_factory=list)
    port: int = 0
    tls: dict[str, Any] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    async def _receive(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "not JSON"}, status_code=400)
        message = ReceivedMessage(
            body, dict(request.headers), dict(request.query_params), time.time(), raw
        )
        self.messages.append(message)
        for listener in self.listeners:
            listener(message)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return JSONResponse({"ok": self.status_code < 400}, status_code=self.status_code)

    async def start(self) -> None:
        app = Starlette(routes=[Route(self.path, self._receive, methods=["POST"])])
        sock = bind_loopback()
        self.port = sock.getsockname()[1]
        self._server, self._task = await start_serving(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **self.tls),
            [sock],
        )
        if not self._server.started:
            self._task.result()  # raises what stopped it
            raise RuntimeError("the webhook receiver did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            await stop_serving(self._server, self._task)


def bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: no Nagle delay on small JSON answers.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with contextlib.closing(bind_loopback()) as sock:
        return sock.getsockname()[1]


# The API client ---------------------------------------------------------------------------


class ApiClient:
    def __init__(self, base_url: str, api_id: str, api_secret: str) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"asapp-api-id": api_id, "asapp-api-secret": api_secret},
            timeout=60,
        )

    async def stream_url(self) -> str:
        response = await self._http.get("/mg-autotranscribe/v1/twilio-media-stream-url")
        response.raise_for_status()
        return response.json()["streamingUrl"]

    async def start(
        self, guid: str, customer_id: str, agent_id: str, **params: Any
    ) -> httpx.Response:
        return await self._http.post(
            "/mg-autotranscribe/v1/start-streaming",
            json={
                "namespace": "twilio",
                "guid": guid,
                "customerId": customer_id,
                "agentId": agent_id,
                "autotranscribeParams": {"language": "en-US", **params},
                "twilioParams": {"trackMap": {"inbound": "customer", "outbound": "agent"}},
            },
        )

    async def stop(self, guid: str) -> httpx.Response:
        return await self._http.post(
            "/mg-autotranscribe/v1/stop-streaming", json={"namespace": "twilio", "guid": guid}
        )

    async def messages(self, guid: str) -> httpx.Response:
        return await self._http.get(
            "/conversation/v1/conversation/messages", params={"externalConversationId": guid}
        )

    async def recording(self, guid: str) -> httpx.Response:
        return await self._http.get(
            "/conversation/v1/conversation/recording", params={"externalConversationId": guid}
        )

    async def webhook_failures(self, **params: Any) -> httpx.Response:
        return await self._http.get("/callscribe/v1/webhook-failures", params=params)

    async def health(self) -> dict[str, Any]:
        """``/healthz`` with this key: the server's counters (ASR, delivery, streams)."""
        response = await self._http.get("/healthz")
        response.raise_for_status()
        return response.json()

    async def feed_files(self, feed: str, start: str, end: str) -> httpx.Response:
        return await self._http.get(
            f"/fileexporter/v1/feeds/{feed}/files", params={"start": start, "end": end}
        )

    async def close(self) -> None:
        await self._http.aclose()


# The simulated Twilio call ----------------------------------------------------------------


@dataclass
class PlayedCall:
    call_sid: str
    started_at: float = 0.0  # time.time() of the first media frame
    speed: float = 1.0
    control_responses: list[tuple[Control, httpx.Response]] = field(default_factory=list)
    # Frames of audio sent (per track) when each control request left and when its answer came.
    control_frames: list[tuple[int, int]] = field(default_factory=list)
    frames_sent: int = 0
    close_code: int | None = None
    close_reason: str | None = None

    def wall_time_of(self, call_ms: float) -> float:
        """When the audio at ``call_ms`` was sent."""
        return self.started_at + call_ms / 1000 / self.speed


async def play_call(
    stream_url: str,
    call: SampleCall,
    api: ApiClient,
    *,
    played: PlayedCall | None = None,
    autotranscribe_params: dict[str, Any] | None = None,
    on_control: Callable[[Control, httpx.Response, PlayedCall], Awaitable[None] | None]
    | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> PlayedCall:
    """Stream ``call`` as Twilio would: 20 ms frames of both tracks, paced at ``played.speed`` × real
    time, with start/stop requests at the timeline's moments. Pass ``played`` to choose the
    call SID and speed and to watch progress (``started_at``) while the call plays."""
    played = played or PlayedCall(call_sid="CA" + uuid.uuid4().hex)
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, played.call_sid, "AC" + "0" * 32)
    controls = sorted(call.controls, key=lambda c: c.at_ms)
    tracks = tuple(call.tracks)
    async with websockets.connect(stream_url, max_size=None) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start(tracks=tracks))
        await asyncio.sleep(0.05)  # let the gateway register the call before any control
        played.started_at = time.time()
        next_control = 0
        previous: asyncio.Task[None] | None = None
        for frame in range(call.frames):
            at_ms = frame * FRAME_S * 1000
            while next_control < len(controls) and controls[next_control].at_ms <= at_ms:
                control = controls[next_control]
                next_control += 1
                # Sent in order, each after the previous answered, as an integration would.
                previous = asyncio.get_running_loop().create_task(
                    _control(
                        api,
                        control,
                        played,
                        call,
                        autotranscribe_params,
                        on_control,
                        after=previous,
                    )
                )
            for track in tracks:
                chunk = call.tracks[track][frame * FRAME_BYTES : (frame + 1) * FRAME_BYTES]
                await ws.send(writer.media(track, chunk, timestamp_ms=int(at_ms)))
            played.frames_sent += 1
            if on_progress is not None and frame % 50 == 0:
                on_progress(at_ms / 1000)
            delay = played.wall_time_of(at_ms + FRAME_S * 1000) - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        # Controls due at the very end (the final stop) run before hang-up.
        for control in controls[next_control:]:
            previous = asyncio.get_running_loop().create_task(
                _control(
                    api, control, played, call, autotranscribe_params, on_control, after=previous
                )
            )
        if previous is not None:
            await previous
        await ws.send(writer.stop())
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=30)
        played.close_code = ws.close_code
        played.close_reason = ws.close_reason
    return played


async def _control(
    api: ApiClient,
    control: Control,
    played: PlayedCall,
    call: SampleCall,
    params: dict[str, Any] | None,
    on_control: Callable[[Control, httpx.Response, PlayedCall], Awaitable[None] | None] | None,
    after: asyncio.Task[None] | None,
) -> None:
    if after is not None:
        await after
    sent_before = played.frames_sent
    if control.action == "start":
        response = await api.start(
            played.call_sid, call.customer_id, call.agent_id, **(params or {})
        )
    else:
        response = await api.stop(played.call_sid)
    played.control_responses.append((control, response))
    played.control_frames.append((sent_before, played.frames_sent))
    if on_control is not None:
        outcome = on_control(control, response, played)
        if outcome is not None:
            await outcome


@contextlib.asynccontextmanager
async def running_receiver(**kwargs: Any) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(**kwargs)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


# The server as a separate process ---------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path


@contextlib.asynccontextmanager
async def running_server(
    data_dir: Path,
    webhook_url: str,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ServerProcess]:
    """``callscribe serve`` in a child process; SIGTERM on exit (a clean shutdown)."""
    port = free_port()
    log_path = data_dir / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callscribe",
            "-v",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--webhook-url",
            webhook_url,
            # Any free SIPREC port, so that servers side by side do not fight over 5070.
            "--sip-port",
            "0",
            *(extra_args or []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", data_dir)
    try:
        await _wait_healthy(server, log_path)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


async def _wait_healthy(server: ServerProcess, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"callscribe serve exited with {server.process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            try:
                if (await client.get(f"{server.base_url}/healthz", timeout=2)).is_success:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("callscribe serve did not become healthy in time")
