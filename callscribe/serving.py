"""How every CallScribe HTTP server runs (local mode, the AWS tasks, the test and demo servers):
one uvicorn configuration, one lifespan shape, one "start and wait until it accepts" helper."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

import uvicorn

from callscribe.config import Settings
from callscribe.connection_limits import install_log_rate_limits, limited_http_protocol

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


def lifespan(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    background: Callable[[], Iterable[Coroutine[Any, Any, None]]] = tuple,
) -> Lifespan:
    """An app's lifespan: ``start`` before it answers anything, ``background`` jobs while it
    serves (cancelled at shutdown), then ``stop``."""

    @contextlib.asynccontextmanager
    async def run(_: Any) -> AsyncIterator[None]:
        await start()
        loop = asyncio.get_running_loop()
        jobs = [loop.create_task(job) for job in background()]
        yield
        for job in jobs:
            job.cancel()
        await stop()

    return run


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How every CallScribe server listens (local mode and the AWS tasks). Installs the
    rate limits on the logs of connection limits as a side effect: the server this config
    starts is the one they are about."""
    install_log_rate_limits(settings.limits.log_interval_s)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Deadlines, header size and connection cap (see callscribe.connection_limits).
        http=limited_http_protocol(settings.limits),
        ws="websockets-sansio",
        # Our protocol object reports oversized frames with a precise reason; the server's own
        # limit only guards memory, above it.
        ws_max_size=max(1 << 20, settings.max_ws_frame_bytes * 4),
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=30,
        log_level="warning",
        lifespan="on",
        proxy_headers=True,
    )


class DrainingServer(uvicorn.Server):
    """A server that, on the first SIGTERM or SIGINT, runs ``drain`` (taking no new work and
    letting the live work end) while it still serves, and only then shuts down as uvicorn
    does. A second signal shuts it down at once."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining is not None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        # Signal handlers run between bytecodes of the loop's thread: schedule, do not run.
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        finally:
            self.should_exit = True


async def start_serving(
    config: uvicorn.Config,
    sockets: list[socket.socket] | None = None,
    drain: Callable[[], Awaitable[None]] | None = None,
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Runs a server (on ``sockets`` already bound, else on the config's address); returns
    once it accepts connections, or once it has stopped without ever doing so (a failed
    startup: ``server.started`` is False and the task is done, carrying the error if there
    was one). With ``drain``, a stop signal drains first (see :class:`DrainingServer`)."""
    server = uvicorn.Server(config) if drain is None else DrainingServer(config, drain)
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    return server, serving


async def stop_serving(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """A graceful shutdown, as on SIGTERM: open requests finish, then the lifespan's stop."""
    server.should_exit = True
    await serving


async def serve_until_stopped(
    config: uvicorn.Config,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[uvicorn.Server], None] = lambda server: None,
    drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until the server is stopped (a signal); ``on_started`` runs once it accepts."""
    server, serving = await start_serving(config, sockets, drain)
    if server.started:
        on_started(server)
    await serving


class CannotListen(OSError):
    """The server's address is taken or not this machine's: said in one line, not a traceback."""


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before anything is loaded, so a port in use fails at once and plainly (uvicorn,
    binding itself, exits from inside its task with a traceback)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CannotListen(exc.errno, f"cannot listen on {host}:{port}: {reason}") from exc


def exit_cleanly_on_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: let that end
    the process with status 0, as a requested stop is not a failure."""

    def exit_zero(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_zero)
