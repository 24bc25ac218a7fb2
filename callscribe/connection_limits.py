"""Bounds on what one peer may hold of the HTTP and WebSocket server (``ServerLimitsSettings``).

uvicorn bounds only the idle wait between two requests of a keep-alive connection. A
connection that never sends a request, or sends its headers (or body) a byte at a time, is
otherwise held forever; enough of them use up the process's file descriptors, and then the
server answers no one (the event loop logs "accept() out of system resource" thousands of
times a second). So:

- ``LimitedHttpProtocol`` (uvicorn's httptools protocol, extended) gives each request a
  deadline from its first byte (a new connection: from the moment it opens) until its body is
  complete, bounds the size of request headers, and refuses connections beyond a cap at once
  (uvicorn's own ``limit_concurrency`` answers 503 only once a request's headers have
  arrived, so idle connections would still hold their descriptors);
- the Twilio gateway closes a media WebSocket that sends no start frame in time;
- each of these conditions is logged through ``LIMITS_LOG``, at most once per interval.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from callscribe.config import ServerLimitsSettings

# Every limit a peer runs into is logged here: one line per condition per interval.
LIMITS_LOG = logging.getLogger("callscribe.limits")

# Descriptors left to everything but client connections: the store, model files, SIPREC and
# RTP sockets, outgoing webhook connections.
FD_RESERVE_FRACTION = 0.25
FD_RESERVE_MIN = 64

ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
STALE_ACCEPT_RETRY = "Exception in callback BaseSelectorEventLoop._start_serving"


class RateLimitedLogFilter(logging.Filter):
    """Lets the first record of each kind through, then at most one per ``interval_s``; the
    next one let through says how many were held back. A record's kind is its message
    template, so one condition logged with different arguments counts as one kind."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._next_at: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        held = self._admit(record.msg)
        if held is None:
            return False
        if held:
            record.msg = f"{record.getMessage()}{_held_note(held)}"
            record.args = None
        return True

    def _admit(self, kind: str) -> int | None:
        """None: hold this record back; else how many of its kind were held back before it."""
        now = time.monotonic()
        if now < self._next_at.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._next_at[kind] = now + self.interval_s
        return self._held.pop(kind, 0)


class AcceptOutOfResourcesFilter(RateLimitedLogFilter):
    """asyncio logs each failed ``accept()`` with a traceback, and on Linux retries it up to
    the listen backlog times per event: with no descriptor left, hundreds of thousands of
    tracebacks in seconds. One line per interval says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(STALE_ACCEPT_RETRY) and isinstance(
            record.exc_info[1] if record.exc_info else None, ValueError
        ):
            # Each failed accept() also scheduled a retry a second later; retries that come
            # due after shutdown closed the listening socket fail on its closed descriptor
            # (thousands of tracebacks as the process exits) and would have done nothing.
            return False
        if not message.startswith(ACCEPT_OUT_OF_RESOURCES):
            return True
        held = self._admit(ACCEPT_OUT_OF_RESOURCES)
        if held is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg = (
            f"{ACCEPT_OUT_OF_RESOURCES}: {error}; new connections wait until file descriptors "
            f"are free{_held_note(held)}"
        )
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def _held_note(held: int) -> str:
    return f" ({held} more like this since the last)" if held else ""


def install_log_rate_limits(interval_s: float) -> None:
    """Rate-limit ``LIMITS_LOG`` and the event loop's accept errors. Idempotent: a server
    started again (tests start many) replaces the filters, with fresh counts."""
    for logger, new_filter in (
        (LIMITS_LOG, RateLimitedLogFilter(interval_s)),
        (logging.getLogger("asyncio"), AcceptOutOfResourcesFilter(interval_s)),
    ):
        for old in [f for f in logger.filters if isinstance(f, RateLimitedLogFilter)]:
            logger.removeFilter(old)
        logger.addFilter(new_filter)


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to leave a share of the process's descriptor limit to the
    rest of the server: past the limit, accept() fails and no one is answered."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = soft - max(FD_RESERVE_MIN, int(soft * FD_RESERVE_FRACTION))
    cap = max(1, min(max_connections, room))
    if cap < max_connections:
        LIMITS_LOG.info(
            "at most %d connections (not %d): the process may open %d file descriptors",
            cap,
            max_connections,
            soft,
        )
    return cap


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a per-request deadline, a header size limit and a
    connection cap. Use ``limited_http_protocol`` for a class bound to the settings."""

    limits: ClassVar[ServerLimitsSettings]
    max_connections: ClassVar[int]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._request_deadline: asyncio.TimerHandle | None = None
        # Between a request's first byte and its last (headers and body).
        self._in_request = False
        # Until the next request's headers are complete; bytes received meanwhile count
        # against max_header_bytes.
        self._awaiting_headers = True
        self._header_bytes = 0
        if len(self.connections) > self.max_connections:
            LIMITS_LOG.warning(
                "refused a connection: %d connections are open, the limit", self.max_connections
            )
            self._answer_and_close(503, "Too many connections; try again shortly.")
            return
        # A new connection's first request must arrive in time too: one that sends nothing
        # is closed when the deadline passes.
        self._start_request_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Counted per read, before parsing: headers may overshoot the limit by one read.
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._awaiting_headers
            and self._header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            LIMITS_LOG.warning(
                "refused a request whose headers exceed %d bytes", self.limits.max_header_bytes
            )
            self._answer_and_close(431, "Request headers too large.")

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        self._start_request_deadline()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_request = False
        self._awaiting_headers = True
        # Between requests uvicorn's keep-alive timeout applies.
        self._cancel_request_deadline()

    def handle_websocket_upgrade(self) -> None:
        # The handshake is complete; the WebSocket endpoint sets its own deadline.
        self._cancel_request_deadline()
        super().handle_websocket_upgrade()

    # The deadline

    def _start_request_deadline(self) -> None:
        if self._request_deadline is None:
            self._request_deadline = self.loop.call_later(
                self.limits.request_timeout_s, self._request_timed_out
            )

    def _cancel_request_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_timed_out(self) -> None:
        self._request_deadline = None
        if self.transport.is_closing():
            return
        LIMITS_LOG.warning(
            "closed a connection whose request was not complete within %g s",
            self.limits.request_timeout_s,
        )
        answered = (
            not self._awaiting_headers and self.cycle is not None and self.cycle.response_started
        )
        if self._in_request and not answered:
            self._answer_and_close(408, "Request not received in time.")
        else:
            # Nothing was asked (or it was answered already): nothing to say. An answer here
            # could be read as the reply to a request the client is only now sending.
            self.transport.close()

    def _answer_and_close(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._cancel_request_deadline()


def limited_http_protocol(limits: ServerLimitsSettings) -> type[LimitedHttpProtocol]:
    """The protocol class for uvicorn's ``http`` option, bound to ``limits``."""
    return type(
        "LimitedHttpProtocol",
        (LimitedHttpProtocol,),
        {"limits": limits, "max_connections": connection_cap(limits.max_connections)},
    )
