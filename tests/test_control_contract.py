"""Both ``Control`` adapters pass the same contract: the direct call into this process's live
calls (local mode) and the signed HTTP client (the API in AWS) against a real gateway control
endpoint on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from callscribe.control import LocalControl
from callscribe.control_http import HttpControl, create_control_app
from callscribe.testing.simulate import bind_loopback
from tests.control_contract import CallHolder, ControlContract, ControlWorld

SECRET = "contract-control-secret"


class TestLocalControl(ControlContract):
    @pytest.fixture
    async def world(self, tmp_path: Path) -> AsyncIterator[ControlWorld]:
        holder = CallHolder.in_directory(tmp_path, owner="local")
        yield ControlWorld(LocalControl(holder.registry), holder)
        await holder.close()


class TestHttpControl(ControlContract):
    @pytest.fixture
    async def world(self, tmp_path: Path) -> AsyncIterator[ControlWorld]:
        sock = bind_loopback()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        holder = CallHolder.in_directory(tmp_path, owner=url)
        server = uvicorn.Server(
            uvicorn.Config(
                create_control_app(holder.registry, SECRET), log_level="warning", lifespan="off"
            )
        )
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        yield ControlWorld(HttpControl(SECRET, timeout_s=30), holder)
        server.should_exit = True
        await serving
        await holder.close()
