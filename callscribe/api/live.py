"""The live event stream and the live page, on the hub of ``callscribe.live`` (local mode) or
beside the deployment's WebSocket API (AWS: the API Lambda serves the page, the stream is the
WebSocket API's).

- ``GET /callscribe/v1/live/events`` (WebSocket): a snapshot of the tenant's live calls, then
  their events as they happen (``callStarted``, ``callEnded``, ``interim``, ``final``), one
  JSON text frame each; ``?guid=`` (and ``&namespace=``) for one call only.
- ``POST /callscribe/v1/live/token``: a program's short-lived pass to the stream, asked for
  with its API key.
- ``/live``: the page supervisors watch calls on; ``/live/session`` signs in (an API key
  exchanged for a signed session cookie: the key never reaches the page) and out;
  ``/live/config`` tells the page where the stream is and how it opens (local: this server,
  with the session cookie; AWS: the WebSocket API, with a live token the page gets for its
  session from ``POST /live/session/token``); ``/live/calls``: the session's tenant's live
  calls as a ``snapshot``, for a stream that sends none (AWS).

Who may open the stream: a program with its API key headers or a live token (``?token=``),
or the page with its session cookie. A browser's handshake must come from this server's own
origin (any handshake that names another origin is refused), so another site cannot open a
stream with a viewer's cookie; the cookie is SameSite=Strict besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect

from callscribe.api.deps import ERROR_RESPONSES, Authenticated
from callscribe.api.errors import error_response
from callscribe.auth import AuthError, LiveSessions, LiveTokens, authenticate
from callscribe.live import LiveHub, LiveSubscription, LiveSubscriptionEnded, snapshot_from_store
from callscribe.model import CallError, ErrorCode, Namespace
from callscribe.store.base import ApiKey, Store

log = logging.getLogger(__name__)

LIVE_EVENTS_PATH = "/callscribe/v1/live/events"
LIVE_TOKEN_PATH = "/callscribe/v1/live/token"
LIVE_PAGE_PATH = "/live"
LIVE_SESSION_PATH = "/live/session"
LIVE_SESSION_TOKEN_PATH = "/live/session/token"
LIVE_CONFIG_PATH = "/live/config"
LIVE_CALLS_PATH = "/live/calls"
LIVE_ASSETS_PATH = "/live/assets"
SESSION_COOKIE = "callscribe_live_session"

# Close codes of the event stream, besides 1000 and the server's own.
CLOSE_SERVER_STOPPING = 1001  # going away
CLOSE_FELL_BEHIND = 1013  # try again later: the viewer did not keep up
CLOSE_SESSION_EXPIRED = 4401  # the page's session ran out: sign in again
# How long a close frame may wait to be sent to a viewer that is not reading: after that the
# connection is simply dropped.
CLOSE_TIMEOUT_S = 1.0
MAX_GUID_CHARS = 128

# The page and its files: no inline script or style, nothing from elsewhere (but the event
# stream's origin, where that is another: AWS's WebSocket API), never framed.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'{stream}; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP.format(stream=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass
class LiveServices:
    # Local mode's hub; None where the stream is elsewhere (AWS: the WebSocket API).
    hub: LiveHub | None
    tokens: LiveTokens
    sessions: LiveSessions
    store: Store
    # This server's base URL as browsers reach it (another origin than the Host header's
    # behind a proxy that rewrites Host).
    public_url: str | None = None
    # The stream's URL where it is not this server's (AWS: the WebSocket API's wss://…): the
    # page opens it with a live token, and takes its snapshot from /live/calls.
    events_url: str | None = None

    def page_headers(self) -> dict[str, str]:
        if self.events_url is None:
            return PAGE_HEADERS
        parts = urlsplit(self.events_url)
        stream = f" {parts.scheme}://{parts.netloc}"
        return {**PAGE_HEADERS, "Content-Security-Policy": PAGE_CSP.format(stream=stream)}


def _services(connection: Request | WebSocket) -> LiveServices:
    return connection.app.state.live


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


# Who is asking ------------------------------------------------------------------------------


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or DEFAULT_PORTS.get(scheme, 443)


def cross_site(headers: Headers, public_url: str | None) -> bool | None:
    """None when the request names no Origin (not a browser's cross-origin request); else
    whether that origin is another site's than this server's (its Host, or ``public_url``).
    The scheme is not compared: behind a proxy that ends TLS the server itself sees http."""
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return True  # "null" (a sandboxed frame, a file) and anything stranger
    theirs = _host_port(parts.netloc, parts.scheme)
    ours = {_host_port(headers.get("host", ""), parts.scheme)}
    if public_url:
        public = urlsplit(public_url)
        ours.add(_host_port(public.netloc, public.scheme))
    return theirs is None or theirs not in ours


def _refuse_cross_site(headers: Headers, public_url: str | None) -> None:
    if cross_site(headers, public_url):
        raise CallError(ErrorCode.CROSS_SITE, "requests from another site's pages are refused here")


@dataclass(frozen=True)
class Viewer:
    """Who opened a stream: the tenant, and when its sign-in runs out (a page's session)."""

    tenant: str
    until: float | None = None


async def _viewer(websocket: WebSocket, services: LiveServices) -> Viewer:
    """The stream's viewer, by the first credentials it brings: API key headers, a live
    token, or the page's session cookie. Raises ``CallError``."""
    headers = websocket.headers
    browser = cross_site(headers, services.public_url)
    if browser:
        raise CallError(ErrorCode.CROSS_SITE, "a WebSocket from another site's page is refused")
    try:
        api_id, api_secret = headers.get("asapp-api-id"), headers.get("asapp-api-secret")
        if api_id is not None or api_secret is not None:
            key = await asyncio.to_thread(authenticate, services.store, api_id, api_secret)
            return Viewer(key.tenant)
        token = websocket.query_params.get("token")
        if token is not None:
            grant = await asyncio.to_thread(services.tokens.verify, token, services.store)
            return Viewer(grant.tenant)
        cookie = websocket.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            if browser is None:
                # The cookie lives in a browser, and browsers name the page's origin on
                # every WebSocket: a handshake with the cookie and no origin is not the page.
                raise CallError(ErrorCode.CROSS_SITE, "a session needs the page's Origin")
            grant, until = await asyncio.to_thread(
                services.sessions.verify_until, cookie, services.store
            )
            return Viewer(grant.tenant, until)
    except AuthError as exc:
        raise CallError(ErrorCode.UNAUTHENTICATED, str(exc)) from None
    raise CallError(
        ErrorCode.UNAUTHENTICATED,
        "sign in: asapp-api-id and asapp-api-secret headers, a live token (?token=) or the "
        "live page's session",
    )


def _filter(connection: WebSocket | Request) -> tuple[str | None, str | None]:
    """The stream's (or snapshot's) ``guid`` and ``namespace`` query parameters (both
    optional)."""
    guid = connection.query_params.get("guid") or None
    namespace = connection.query_params.get("namespace") or None
    if guid is not None and len(guid) > MAX_GUID_CHARS:
        raise CallError(ErrorCode.PARAMETER, f"guid: at most {MAX_GUID_CHARS} characters")
    if namespace is not None and namespace not in {n.value for n in Namespace}:
        raise CallError(ErrorCode.PARAMETER, f"namespace: unknown namespace {namespace!r}")
    return guid, namespace


# The event stream -----------------------------------------------------------------------------


async def live_events(websocket: WebSocket) -> None:
    services = _services(websocket)
    try:
        viewer = await _viewer(websocket, services)
        guid, namespace = _filter(websocket)
    except CallError as exc:
        # Refused in the handshake, with the API's error body and status (401, 403, 400).
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    assert services.hub is not None  # served only where the hub is (local mode)
    subscription = services.hub.subscribe(viewer.tenant, guid=guid, namespace=namespace)
    try:
        await _stream(websocket, subscription, viewer.until)
    finally:
        subscription.close()


async def _stream(
    websocket: WebSocket, subscription: LiveSubscription, until: float | None
) -> None:
    """Sends the snapshot, then each event, until the viewer leaves, falls behind, its session
    runs out or the server stops."""
    pump = asyncio.ensure_future(_send_events(websocket, subscription))
    leaving = asyncio.ensure_future(_until_viewer_leaves(websocket))
    let_go = asyncio.ensure_future(subscription.ended.wait())
    running = {pump, leaving, let_go}
    try:
        timeout = None if until is None else max(0.0, until - time.time())
        done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in running:
            task.cancel()
        # A pump cancelled while it waits for a viewer that is not reading sends nothing more.
        await asyncio.gather(*running, return_exceptions=True)
    if subscription.end_reason is not None:  # the hub let the viewer go
        code = CLOSE_FELL_BEHIND if subscription.fell_behind else CLOSE_SERVER_STOPPING
        reason = subscription.end_reason
    elif not done:
        code, reason = CLOSE_SESSION_EXPIRED, "session expired: sign in again"
    else:
        return  # the viewer left (or its connection failed while an event was sent)
    # A viewer that is not reading may never take the close frame: then the connection is
    # dropped (the server closes its socket when this handler returns).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason[:120]), CLOSE_TIMEOUT_S)


async def _send_events(websocket: WebSocket, subscription: LiveSubscription) -> None:
    with contextlib.suppress(WebSocketDisconnect, LiveSubscriptionEnded, OSError):
        await websocket.send_text(json.dumps(subscription.snapshot))
        while True:
            await websocket.send_text(await subscription.next())


async def _until_viewer_leaves(websocket: WebSocket) -> None:
    """Reads (and ignores) what the viewer sends, until it closes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


# Tokens and sessions ------------------------------------------------------------------------


class LiveTokenResponse(BaseModel):
    token: str
    tenant: str
    expiresAt: str = Field(description="ISO 8601, UTC: the stream must be opened before this")
    eventsUrl: str = Field(description="the event stream's URL with this token")


class SignInRequest(BaseModel):
    apiId: Annotated[str, Field(min_length=1, max_length=200)]
    apiSecret: Annotated[str, Field(min_length=1, max_length=200)]


class LiveSessionResponse(BaseModel):
    signedIn: bool
    tenant: str | None = None
    expiresAt: str | None = None


class LivePageConfig(BaseModel):
    eventsUrl: str = Field(description="the event stream's WebSocket URL, without credentials")
    streamAuth: Literal["session", "token"] = Field(
        description="session: the stream opens with the page's session cookie (this server's "
        "own stream); token: with ?token= from POST /live/session/token (the WebSocket API)"
    )
    streamSendsSnapshot: bool = Field(
        description="false: the page takes the snapshot from GET /live/calls once connected"
    )


def _websocket_base(request: Request, public_url: str | None) -> str:
    if public_url:
        parts = urlsplit(public_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return f"{scheme}://{request.url.netloc}"


def _cookie_flags(request: Request) -> dict[str, Any]:
    # Secure whenever the page was reached over HTTPS (a proxy's X-Forwarded-Proto counts);
    # on plain http://127.0.0.1 a Secure cookie would not be sent back.
    return {
        "path": "/",
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
    }


def build_live_token_router(
    tokens_of: Callable[[Request], LiveTokens], events_url_of: Callable[[Request], str]
) -> APIRouter:
    """``POST /callscribe/v1/live/token``: local mode's (the stream on this server) and the API
    Lambda's (the stream on the deployment's WebSocket API)."""
    router = APIRouter()

    @router.post(
        LIVE_TOKEN_PATH,
        response_model=LiveTokenResponse,
        responses=ERROR_RESPONSES,
        summary="A short-lived token for the live event stream",
        description="Open `eventsUrl` (a WebSocket: the stream's URL with `?token=…`) before "
        "`expiresAt`; the token is checked once, when the stream opens. The stream sends one "
        "JSON text frame per event: `callStarted`, `callEnded`, `interim` (`utteranceId`, "
        "`role`, `start`, `text`, `stablePrefix`; only for calls started with "
        "`autotranscribeParams.interimResults`, never after the `final` of its utterance) and "
        "`final` (`utteranceId`, `seq`, `messageId`, `message`: the webhook's message) for the "
        "tenant's calls only; "
        "`&guid=` keeps one call's, `&namespace=` one namespace's. Local mode's stream "
        f"(`{LIVE_EVENTS_PATH}`) first sends a `snapshot` (`calls`: each live call's "
        "`namespace`, `guid`, `startedAt` and its recent `finals`) and opens with the API key "
        "headers as well.",
    )
    async def live_token(request: Request, key: Authenticated) -> LiveTokenResponse:
        token, until = tokens_of(request).issue_until(key)
        return LiveTokenResponse(
            token=token,
            tenant=key.tenant,
            expiresAt=_iso(until),
            eventsUrl=f"{events_url_of(request)}?{urlencode({'token': token})}",
        )

    return router


def build_live_router() -> APIRouter:
    """Local mode: the page, the token for programs, and the event stream on this server."""
    router = APIRouter()
    router.include_router(
        build_live_token_router(
            lambda request: _services(request).tokens,
            lambda request: _local_events_url(request, _services(request)),
        )
    )
    router.add_api_websocket_route(LIVE_EVENTS_PATH, live_events)
    router.include_router(build_live_page_router())
    return router


def _local_events_url(request: Request, services: LiveServices) -> str:
    return _websocket_base(request, services.public_url) + LIVE_EVENTS_PATH


async def _session_key(request: Request, services: LiveServices) -> ApiKey:
    """The API key the page's session was made with (raises ``CallError``: no session, or
    one that expired, or whose key was revoked)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise CallError(ErrorCode.UNAUTHENTICATED, "sign in on the live page first")
    try:
        grant = await asyncio.to_thread(services.sessions.verify, cookie, services.store)
        key = await asyncio.to_thread(services.store.get_api_key, grant.api_id)
    except AuthError as exc:
        raise CallError(ErrorCode.UNAUTHENTICATED, str(exc)) from None
    if key is None:  # deleted between the two reads
        raise CallError(ErrorCode.UNAUTHENTICATED, "the session's API key no longer exists")
    return key


def build_live_page_router() -> APIRouter:
    """The live page, its sign-in and what it asks for (``app.state.live``'s services): local
    mode's, and the API Lambda's, whose page opens the deployment's WebSocket API."""
    router = APIRouter()
    assets = _page_assets()

    @router.get(LIVE_PAGE_PATH, include_in_schema=False)
    async def live_page(request: Request) -> Response:
        return _asset_response(assets, "index.html", _services(request))

    @router.get(LIVE_ASSETS_PATH + "/{name}", include_in_schema=False)
    async def live_asset(request: Request, name: str) -> Response:
        if name == "index.html" or name not in assets:
            return Response("not found", status_code=404, media_type="text/plain")
        return _asset_response(assets, name, _services(request))

    @router.get(LIVE_CONFIG_PATH, include_in_schema=False)
    async def live_config(request: Request) -> JSONResponse:
        """Where the page's stream is and how it opens: nothing secret (the WebSocket API's
        URL is a stack output)."""
        services = _services(request)
        if services.events_url is not None:
            config = LivePageConfig(
                eventsUrl=services.events_url, streamAuth="token", streamSendsSnapshot=False
            )
        else:
            config = LivePageConfig(
                eventsUrl=_local_events_url(request, services),
                streamAuth="session",
                streamSendsSnapshot=True,
            )
        return JSONResponse(config.model_dump(), headers={"Cache-Control": "no-store"})

    @router.post(LIVE_SESSION_TOKEN_PATH, include_in_schema=False)
    async def live_session_token(request: Request) -> JSONResponse:
        """The page's pass to a stream it cannot bring its cookie to (the WebSocket API, on
        another origin): a live token for the session's API key, as a program gets with the
        key itself. From this server's own pages only."""
        services = _services(request)
        _refuse_cross_site(request.headers, services.public_url)
        key = await _session_key(request, services)
        token, until = services.tokens.issue_until(key)
        base = services.events_url or _local_events_url(request, services)
        answer = LiveTokenResponse(
            token=token,
            tenant=key.tenant,
            expiresAt=_iso(until),
            eventsUrl=f"{base}?{urlencode({'token': token})}",
        )
        return JSONResponse(answer.model_dump(), headers={"Cache-Control": "no-store"})

    @router.get(LIVE_CALLS_PATH, include_in_schema=False)
    async def live_calls(request: Request) -> JSONResponse:
        """The session's tenant's live calls as the stream's ``snapshot`` (``?guid=``,
        ``&namespace=`` as the stream's), for a page whose stream sends none."""
        services = _services(request)
        _refuse_cross_site(request.headers, services.public_url)
        key = await _session_key(request, services)
        guid, namespace = _filter(request)
        if services.hub is not None:
            snapshot = services.hub.snapshot(key.tenant, guid=guid, namespace=namespace)
        else:
            snapshot = await asyncio.to_thread(
                snapshot_from_store,
                services.store,
                key.tenant,
                guid=guid,
                namespace=namespace,
                now=time.time(),
            )
        return JSONResponse(snapshot, headers={"Cache-Control": "no-store"})

    @router.get(LIVE_SESSION_PATH, include_in_schema=False)
    async def live_session(request: Request) -> JSONResponse:
        """Whether the page is signed in, and as which tenant until when. Signed out is an
        answer here, not an error: the page asks on every load."""
        services = _services(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        answer = LiveSessionResponse(signedIn=False)
        if cookie is not None:
            try:
                grant, until = await asyncio.to_thread(
                    services.sessions.verify_until, cookie, services.store
                )
                answer = LiveSessionResponse(
                    signedIn=True, tenant=grant.tenant, expiresAt=_iso(until)
                )
            except AuthError:
                pass  # expired, revoked or forged: signed out
        return JSONResponse(answer.model_dump(), headers={"Cache-Control": "no-store"})

    @router.post(LIVE_SESSION_PATH, include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        """The page's sign-in: an API key (JSON ``apiId``, ``apiSecret``) for a session cookie.
        JSON only, and from this server's own pages: another site's form cannot sign a
        browser in (nor send JSON without asking first, which nothing here allows)."""
        services = _services(request)
        _refuse_cross_site(request.headers, services.public_url)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise CallError(ErrorCode.PARAMETER, "sign in with a JSON body")
        try:
            body = SignInRequest.model_validate_json(await request.body())
        except ValidationError:
            raise CallError(ErrorCode.PARAMETER, "apiId and apiSecret are required") from None
        try:
            key = await asyncio.to_thread(authenticate, services.store, body.apiId, body.apiSecret)
        except AuthError as exc:
            raise CallError(ErrorCode.UNAUTHENTICATED, str(exc)) from None
        value, until = services.sessions.issue_until(key)
        response = JSONResponse(
            LiveSessionResponse(
                signedIn=True, tenant=key.tenant, expiresAt=_iso(until)
            ).model_dump(),
            headers={"Cache-Control": "no-store"},
        )
        response.set_cookie(
            SESSION_COOKIE, value, max_age=services.sessions.ttl_s, **_cookie_flags(request)
        )
        return response

    @router.delete(LIVE_SESSION_PATH, include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        _refuse_cross_site(request.headers, _services(request).public_url)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, **_cookie_flags(request))
        return response

    return router


def _page_assets() -> dict[str, bytes]:
    """The page's files, shipped in the package (no build step): read once."""
    folder = importlib.resources.files("callscribe") / "api" / "static" / "live"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in ASSET_TYPES)
    }


def _asset_response(assets: dict[str, bytes], name: str, services: LiveServices) -> Response:
    suffix = name[name.rindex(".") :]
    return Response(assets[name], media_type=ASSET_TYPES[suffix], headers=services.page_headers())
