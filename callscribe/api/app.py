"""The HTTP API (FastAPI): the contract's four endpoints. The same app runs in local mode and,
through Mangum, in the API Lambda; it reaches live calls only through the ``Control`` port."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable, Set
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse

from callscribe.api.middleware import BodySizeLimit, InternalErrorAsJson
from callscribe.api.schemas import (
    ApiError,
    AutotranscribeResult,
    ErrorCode,
    ErrorResponse,
    MessagesResponse,
    Namespace,
    StartRequest,
    StopRequest,
    StreamingResponse,
    StreamUrlResponse,
    TranscriptMessage,
    parse_start,
    parse_stop,
    request_body_schema,
)
from callscribe.asr.base import WHISPER_LANGUAGES
from callscribe.auth import AuthError, StreamTokens, authenticate
from callscribe.calls import claim_end_summary
from callscribe.control import CallOpener, Control
from callscribe.store.base import ApiKey, CallKey, CallRecord, CallStatus, Store

if TYPE_CHECKING:
    from callscribe.api.outputs import OutputServices

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # every request; the middleware refuses more before reading it
LOCK_TTL_S = 60.0
TWILIO_MEDIA_PATH = "/twilio-media"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "400-201, 400-202 or 400-203"},
    401: {"model": ErrorResponse, "description": "401-201: missing or wrong credentials"},
    409: {"model": ErrorResponse, "description": "409-201, 409-202 or 409-203"},
    500: {"model": ErrorResponse, "description": "500-201"},
}


@dataclass
class ApiServices:
    store: Store
    tokens: StreamTokens
    control: Control
    public_gateway_url: str | None = None
    max_messages: int = 1000
    # Recordings, feed files, delivery failures (absent: those endpoints are not served).
    outputs: OutputServices | None = None
    # Namespaces whose calls start-streaming itself opens (amazonconnect).
    openers: dict[Namespace, CallOpener] = field(default_factory=dict)
    # The languages start-streaming accepts (their ISO 639 codes): the ASR port's.
    accepted_languages: Set[str] = WHISPER_LANGUAGES


def _services(request: Request) -> ApiServices:
    return request.app.state.services


async def _tenant_key(
    request: Request,
    asapp_api_id: Annotated[str | None, Header(alias="asapp-api-id")] = None,
    asapp_api_secret: Annotated[str | None, Header(alias="asapp-api-secret")] = None,
) -> ApiKey:
    store = _services(request).store
    try:
        return await asyncio.to_thread(authenticate, store, asapp_api_id, asapp_api_secret)
    except AuthError as exc:
        raise ApiError(ErrorCode.UNAUTHENTICATED, str(exc)) from None


Authenticated = Annotated[ApiKey, Depends(_tenant_key)]


async def _json_body(request: Request) -> Any:
    raw = await request.body()  # at most MAX_BODY_BYTES (BodySizeLimit)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(ErrorCode.PARAMETER, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # 64 KB of "[" nests far deeper than the parser recurses.
        raise ApiError(ErrorCode.PARAMETER, "body is nested too deeply") from None


class _CallLock:
    """The Store's per-call request lock: a second request for a call in flight gets 409-202."""

    def __init__(self, store: Store, key: CallKey) -> None:
        self.store, self.key, self.holder = store, key, str(uuid.uuid4())

    async def __aenter__(self) -> None:
        taken = await asyncio.to_thread(
            self.store.acquire_call_lock, self.key, self.holder, time.time(), LOCK_TTL_S
        )
        if not taken:
            raise ApiError(ErrorCode.PENDING, "another request for this guid is pending")

    async def __aexit__(self, *_: Any) -> None:
        await asyncio.to_thread(self.store.release_call_lock, self.key, self.holder)


async def _call(store: Store, key: CallKey, *, ended_ok: bool = False) -> CallRecord:
    call = await asyncio.to_thread(store.get_call, key)
    if call is None:
        raise ApiError(ErrorCode.NO_SUCH_CALL, f"no {key.namespace} call with guid {key.guid}")
    if call.status is CallStatus.COMPLETED and not ended_ok:
        raise ApiError(ErrorCode.NO_SUCH_CALL, f"call {key.guid} has ended")
    return call


async def _control_call(
    services: ApiServices,
    key: CallKey,
    action: Callable[[Control, CallRecord], Awaitable[AutotranscribeResult]],
    ended: Callable[[Store, CallKey], Awaitable[AutotranscribeResult]] | None = None,
) -> StreamingResponse:
    """Start or stop: the call must exist for this tenant, and only one request at a time.
    ``ended`` answers for a call whose media has ended (instead of 400-203), also when it
    ends while this request is on its way to the call's holder."""
    call = await _call(services.store, key, ended_ok=ended is not None)
    async with _CallLock(services.store, key):
        if ended is not None and call.status is CallStatus.COMPLETED:
            result = await ended(services.store, key)
        else:
            try:
                result = await action(services.control, call)
            except ApiError as exc:
                if ended is None or exc.code is not ErrorCode.NO_SUCH_CALL:
                    raise
                # The holder may have let the call go, its media ended, between the read
                # above and this request.
                again = await _call(services.store, key, ended_ok=True)
                if again.status is not CallStatus.COMPLETED:
                    raise
                result = await ended(services.store, key)
    return StreamingResponse(autotranscribeResponse=result)


async def find_tenant_call(
    store: Store, tenant: str, guid: str, namespace: Namespace | None
) -> CallRecord:
    """The tenant's call with this guid (after-call endpoints take the guid alone)."""
    calls = await asyncio.to_thread(store.find_calls, tenant, guid)
    if namespace is not None:
        calls = [c for c in calls if c.key.namespace == namespace.value]
    if not calls:
        raise ApiError(ErrorCode.NO_SUCH_CALL, f"no call with guid {guid}")
    if len(calls) > 1:
        raise ApiError(
            ErrorCode.PARAMETER,
            "calls in several namespaces share this guid: add the namespace query parameter",
        )
    return calls[0]


router = APIRouter()

WEBHOOK_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "The message id: the same on every attempt; de-duplicate on it"},
    {"name": "webhook-timestamp", "in": "header", "required": True,
     "schema": {"type": "integer"}, "description": "UNIX seconds of this attempt"},
    {"name": "webhook-signature", "in": "header", "required": True,
     "schema": {"type": "string"},
     "description": "v1,<base64 HMAC-SHA256 of id.timestamp.body with the signing secret>"},
    {"name": "X-CallScribe-Message-Id", "in": "header", "required": True,
     "schema": {"type": "string"}, "description": "Same as webhook-id"},
    {"name": "authorization", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Bearer <token> with OAuth2 client-credentials"},
]


@router.get(
    "/mg-autotranscribe/v1/twilio-media-stream-url",
    response_model=StreamUrlResponse,
    responses=ERROR_RESPONSES,
    summary="A short-lived WebSocket URL for a Twilio Media Stream",
    description="The URL's token lives 5 minutes and is checked once, when a WebSocket opens; "
    "one URL may open any number of streams during its life.",
)
async def twilio_media_stream_url(request: Request, key: Authenticated) -> StreamUrlResponse:
    services = _services(request)
    base = services.public_gateway_url
    if not base:
        scheme = "wss" if request.url.scheme == "https" else "ws"
        base = f"{scheme}://{request.url.netloc}"
    token = services.tokens.issue(key)
    return StreamUrlResponse(streamingUrl=f"{base.rstrip('/')}{TWILIO_MEDIA_PATH}?token={token}")


@router.post(
    "/mg-autotranscribe/v1/start-streaming",
    response_model=StreamingResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    summary="Start or resume transcription of a call",
    description="A new customerId or agentId on a later start is a new leg (a transfer): that "
    "participant gets a new streamId; messages of all legs stay under the call. For namespace "
    "amazonconnect the call need not exist: start-streaming creates it and reads the Kinesis "
    "Video Stream that amazonConnectParams names (from the fragment given, or from now), "
    "customer audio from AUDIO_FROM_CUSTOMER and agent audio from AUDIO_TO_CUSTOMER; a later "
    "start on a stopped or ended contact reads again from its own selector. Fields this server "
    "does not know, at the top level or inside autotranscribeParams, twilioParams or "
    "amazonConnectParams, are ignored (and logged), so that a client sending a field added to "
    "the contract later keeps working. A body over 64 KB is refused with 400-201.",
    openapi_extra=request_body_schema(StartRequest),
)
async def start_streaming(request: Request, key: Authenticated) -> StreamingResponse:
    services = _services(request)
    start = parse_start(await _json_body(request), services.accepted_languages)
    call_key = CallKey(key.tenant, start.namespace.value, start.guid)
    if start.namespace is Namespace.AMAZON_CONNECT:
        return await _open_or_start(services, call_key, start)
    return await _control_call(
        services, call_key, lambda control, call: control.start(call, start),
    )


async def _open_or_start(
    services: ApiServices, key: CallKey, start: StartRequest
) -> StreamingResponse:
    """A call whose media start-streaming opens: started where it lives, or opened afresh when
    it does not exist, has ended, or its holder is gone."""
    opener = services.openers.get(start.namespace)
    if opener is None:
        raise ApiError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"this deployment does not ingest namespace {start.namespace.value}",
        )
    async with _CallLock(services.store, key):
        call = await asyncio.to_thread(services.store.get_call, key)
        result = None
        if call is not None and call.status is not CallStatus.COMPLETED:
            try:
                result = await services.control.start(call, start)
            except ApiError as exc:
                if exc.code is not ErrorCode.NO_SUCH_CALL:
                    raise
                log.info("call %s: its holder is gone; opening it afresh", key)
        if result is None:
            result = await opener.open(key, start)
    return StreamingResponse(autotranscribeResponse=result)


@router.post(
    "/mg-autotranscribe/v1/stop-streaming",
    response_model=StreamingResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    summary="Pause or end transcription of a call",
    openapi_extra=request_body_schema(StopRequest),
    description="Each participant carries a summary of its stream. The last utterance is "
    "finished and transcribed before the response, so `transcripts` counts it. For namespace "
    "twilio, a stop that arrives after the Twilio stream ended while transcription was on "
    "(a hang-up racing the stop) answers with the summary as the stream ended, once; "
    "otherwise a call whose media ended is 400-203.",
)
async def stop_streaming(request: Request, key: Authenticated) -> StreamingResponse:
    stop = parse_stop(await _json_body(request))
    return await _control_call(
        _services(request), CallKey(key.tenant, stop.namespace.value, stop.guid),
        lambda control, call: control.stop(call),
        ended=claim_end_summary,
    )


@router.get(
    "/conversation/v1/conversation/messages",
    response_model=MessagesResponse,
    responses=ERROR_RESPONSES,
    summary="Every message of a call, in order (after-call)",
    description="Messages of all legs, in the order transcribed, exactly as POSTed to the "
    "webhook, up to 1,000, kept 7 days after the call completes. A call still in progress "
    "returns what it has so far with `complete: false`.",
)
async def conversation_messages(
    request: Request,
    key: Authenticated,
    externalConversationId: Annotated[str, Query(min_length=1, max_length=128)],
    namespace: Annotated[Namespace | None, Query()] = None,
) -> MessagesResponse:
    store = _services(request).store
    call = await find_tenant_call(store, key.tenant, externalConversationId, namespace)
    messages = await asyncio.to_thread(
        store.list_messages, call.key, _services(request).max_messages, time.time()
    )
    return MessagesResponse(
        externalConversationId=externalConversationId,
        namespace=Namespace(call.key.namespace),
        complete=call.status is CallStatus.COMPLETED,
        messages=[m.body for m in messages],
    )


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.code is not ErrorCode.UNAUTHENTICATED:
        log.info("API error %s: %s", exc.code.value, exc.message)
    return JSONResponse(exc.body(), status_code=exc.http_status)


def _validation_message(exc: Exception) -> str:
    """What was wrong, field by field ("query.externalConversationId: Field required"); never
    the exception's text, which names the endpoint's source file and line."""
    errors_of = getattr(exc, "errors", None)
    errors = errors_of() if callable(errors_of) else []
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        ApiError(ErrorCode.PARAMETER, _validation_message(exc)).body(), status_code=400
    )


def create_api_app(services: ApiServices, **fastapi_kwargs: Any) -> FastAPI:
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute

    app = FastAPI(
        title="CallScribe",
        version="0.1.0",
        description="Real-time call transcription, wire-compatible with the AutoTranscribe "
        "media-gateway API. Every request carries asapp-api-id and asapp-api-secret headers.",
        **fastapi_kwargs,
    )
    app.state.services = services
    app.include_router(router)
    # The SIPREC guide writes ".../start-streaming/" and ".../stop-streaming/": serve that form
    # too, rather than a 307 that a client posting a body may not follow.
    for route in list(router.routes):
        if isinstance(route, APIRoute) and route.path.endswith("-streaming"):
            app.add_api_route(
                route.path + "/",
                route.endpoint,
                methods=list(route.methods),
                response_model=route.response_model,
                response_model_exclude_none=route.response_model_exclude_none,
                include_in_schema=False,
            )
    if services.outputs is not None:
        from callscribe.api.outputs import build_download_router, build_router
        from callscribe.blobs.directory import DirectoryBlobStore

        app.include_router(build_router())
        outputs = services.outputs
        if isinstance(outputs.blobs, DirectoryBlobStore) and outputs.link_signer is not None:
            app.include_router(build_download_router(outputs.blobs, outputs.link_signer))

    @app.webhooks.post(
        "transcript",
        summary="One finished utterance, POSTed to your target",
        openapi_extra={"parameters": WEBHOOK_HEADERS},
    )
    def transcript_webhook(body: TranscriptMessage) -> None:
        """Sent in the order transcribed, per call; an error answer or a timeout is recorded
        (GET /callscribe/v1/webhook-failures) and the message dropped: no retries, unless the
        tenant's webhook configuration has a retry policy (a retry keeps webhook-id). When
        messages queue up behind a slow target, the oldest pending are dropped first.

        Signed as Standard Webhooks: verify that webhook-signature holds
        `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{raw body}")), where
        key is the base64-decoded part of your `whsec_…` signing secret after the prefix, and
        that webhook-timestamp is recent; de-duplicate on webhook-id. Authentication to your
        target, per tenant: a custom CA (TLS 1.2+), mutual TLS with a client certificate, a
        secret token in a header or query parameter, or an OAuth2 client-credentials bearer
        token."""

    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # The last added is the outermost: whatever escapes the body limit is answered as JSON.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(InternalErrorAsJson)
    return app
