"""Both ``AsrEngine`` adapters pass the same contract: faster-whisper in this process (local
mode) and the client of the ASR worker service (how gateway tasks reach the GPU workers in
AWS) against a real worker app on loopback, both on the real Whisper base model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn

from callscribe.asr.remote import RemoteAsrEngine
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.asr.worker import create_worker_app, worker_uvicorn_config
from callscribe.config import AsrWorkerSettings
from callscribe.testing.simulate import bind_loopback
from tests.asr_contract import AsrEngineContract

WAIT_S = 120.0  # generous: other test suites share this machine's cores


class TestFasterWhisperEngine(AsrEngineContract):
    @pytest.fixture
    def engine(self, asr_engine: FasterWhisperEngine) -> FasterWhisperEngine:
        # The session's engine (one model load for the whole run); closed by no test.
        return asr_engine


class TestRemoteAsrEngine(AsrEngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    async def worker_url(cls, asr_engine: FasterWhisperEngine) -> AsyncIterator[str]:
        """``callscribe asr-worker``'s app serving the same model on a loopback socket."""
        settings = AsrWorkerSettings()
        sock = bind_loopback()
        app = create_worker_app(asr_engine, settings)
        server = uvicorn.Server(worker_uvicorn_config(app, settings))
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        server.should_exit = True
        await serving

    @pytest.fixture
    async def engine(self, worker_url: str) -> AsyncIterator[RemoteAsrEngine]:
        engine = RemoteAsrEngine(worker_url, timeout_s=WAIT_S)
        yield engine
        await engine.close()
