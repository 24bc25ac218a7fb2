"""Shared fixtures: the real Whisper model (loaded once), a real local server on loopback with
a real webhook receiver, and API clients for tenants."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from callscribe.asr.base import AsrEngine, AsrRequest, AsrResult
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.auth import IssuedKey, create_api_key
from callscribe.config import AsrSettings, Settings, SiprecSettings, WebhookSettings
from callscribe.server import LocalRuntime, create_local_app
from callscribe.serving import start_serving, stop_serving, uvicorn_config
from callscribe.testing.simulate import ApiClient, WebhookReceiver, bind_loopback, running_receiver

# Servers a test starts take any free SIPREC port rather than 5070, so a suite never collides
# with another server (or suite) on the same machine. Tests that need a port pass their own.
os.environ.setdefault("CALLSCRIBE_SIPREC_PORT", "0")

WEBHOOK_SECRET_NAME = "X-Test-Webhook-Token"
WEBHOOK_SECRET = "s3cr3t-for-tests"


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: ./scripts/test.sh installs what tests need"
        )


@pytest.fixture
def speech_tools() -> None:
    """Tests that make real speech need espeak-ng and sox."""
    _require("espeak-ng", "sox")


@pytest.fixture
def sox_tool() -> None:
    _require("sox")


@pytest.fixture(scope="session")
def asr_engine() -> FasterWhisperEngine:
    return FasterWhisperEngine(AsrSettings())


@dataclass
class RunningServer:
    base_url: str
    ws_base: str
    runtime: LocalRuntime
    clients: list[ApiClient]
    # The server's app (its ``state.live`` holds what the live page's routes use).
    app: FastAPI | None = None

    def client(self, tenant: str) -> ApiClient:
        issued = self.issue_key(tenant)
        client = ApiClient(self.base_url, issued.api_id, issued.api_secret)
        self.clients.append(client)
        return client

    def issue_key(self, tenant: str) -> IssuedKey:
        return create_api_key(self.runtime.store, tenant)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with running_receiver() as r:
        yield r


@pytest.fixture
async def server_factory(
    tmp_path: Path, asr_engine: FasterWhisperEngine
) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start local servers (in this process, each on a real loopback socket); all are shut
    down cleanly (SIGTERM-equivalent) at the end of the test."""
    started: list[tuple[uvicorn.Server, asyncio.Task[None], RunningServer]] = []

    async def start(
        webhook_url: str | None,
        webhook: dict[str, object] | None = None,
        asr: AsrEngine | None = None,
        **overrides: object,
    ) -> RunningServer:
        """``asr``: another engine than the shared one (the server does not close it)."""
        webhook_settings = WebhookSettings(
            **{
                "url": webhook_url,
                "secret_name": WEBHOOK_SECRET_NAME,
                "secret": WEBHOOK_SECRET,
                "timeout_s": 2.0,
                **(webhook or {}),
            }
        )
        # Any free SIPREC port unless a test asks: suites run side by side on one machine.
        overrides.setdefault("siprec", SiprecSettings(port=0))
        settings = Settings(
            data_dir=tmp_path / f"data{len(started)}", webhook=webhook_settings, **overrides
        )
        runtime = LocalRuntime.build(settings, asr=asr or asr_engine)
        app = create_local_app(runtime)
        sock = bind_loopback()
        port = sock.getsockname()[1]
        server, task = await start_serving(uvicorn_config(app, settings), [sock])
        if not server.started:
            task.result()  # raises what stopped it
            raise RuntimeError("the server did not start")
        running = RunningServer(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", runtime, [], app
        )
        started.append((server, task, running))
        return running

    yield start

    for server, task, running in started:
        for client in running.clients:
            await client.close()
        await stop_serving(server, task)


@pytest.fixture
async def server(
    server_factory: Callable[..., Awaitable[RunningServer]], receiver: WebhookReceiver
) -> RunningServer:
    return await server_factory(receiver.url)


class GatedAsr:
    """The real engine behind a gate: a test holds transcription to catch a call while it
    completes, or while a BYE is being processed (AsrEngine is a port; the model still does
    the work)."""

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
