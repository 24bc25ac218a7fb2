"""ASGI middleware of the API app: request bodies bounded before they are read, and any
unexpected error answered with the contract's 500 body on a connection that stays open."""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callscribe.api.errors import error_response
from callscribe.connection_limits import LIMITS_LOG
from callscribe.model import CallError, ErrorCode

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a streamed body passes the limit."""


class BodySizeLimit:
    """A request body over ``max_bytes`` is answered 400-201 (as the contract's endpoints
    answer any bad body) without being read: by its Content-Length before the app runs, or,
    for a chunked body, as soon as what has arrived passes the limit. The answer closes the
    connection, so the rest is never read either. Reading a body whole before checking its
    size let one request hold hundreds of megabytes."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"body of {declared} bytes")
            return

        received = 0
        over = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if over:
                return  # whatever the app made of the interrupted read: ours replaces it
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not response_started:
            await self._refuse(scope, receive, send, f"body of more than {received} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        LIMITS_LOG.warning("refused a request body over %d bytes", self.max_bytes)
        error = CallError(ErrorCode.PARAMETER, f"{what} exceeds {self.max_bytes}")
        await error_response(error, headers={"connection": "close"})(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses a malformed one before the app runs
    return None


class InternalErrorAsJson:
    """An exception no handler took is answered 500 with the contract's body (500-201), and
    the connection stays open for the client's next request. Starlette's own last-resort
    handler answers too, but then re-raises, and uvicorn closes a connection whose request
    raised: a keep-alive client's next request would fail."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except ClientDisconnect:
            return  # the client is gone: no one to answer
        except Exception:
            log.exception("internal error answering %s %s", scope["method"], scope["path"])
            if response_started:
                raise  # half an answer is out: only closing the connection tells the client
            error = CallError(ErrorCode.INTERNAL, "internal error")
            await error_response(error)(scope, receive, send)
