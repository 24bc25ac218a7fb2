"""The HTTP API (FastAPI): the contract's four endpoints. The same app runs in local mode and,
through Mangum, in the API Lambda; it reaches live calls only through the ``Control`` port."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from callscribe.api.deps import (
    ERROR_RESPONSES,
    ApiServices,
    Authenticated,
    api_services,
    find_tenant_call,
    json_body,
)
from callscribe.api.errors import answer_call_error, answer_validation_error
from callscribe.api.middleware import BodySizeLimit, InternalErrorAsJson
from callscribe.api.outputs import build_download_router, build_router
from callscribe.api.schemas import (
    InterimMessage,
    MessagesResponse,
    StopRequest,
    StreamingResponse,
    StreamUrlResponse,
    TranscriptMessage,
    parse_start,
    parse_stop,
    request_body_schema,
)
from callscribe.api.vocabulary import build_vocabulary_router
from callscribe.blobs.directory import DirectoryBlobStore
from callscribe.calls import claim_end_summary
from callscribe.control import Control
from callscribe.model import AutotranscribeResult, CallError, ErrorCode, Namespace, StartRequest
from callscribe.store.base import CallKey, CallRecord, CallStatus, Store
from callscribe.vocabulary import BOUNDS as VOCABULARY_BOUNDS

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # every request; the middleware refuses more before reading it
LOCK_TTL_S = 60.0
TWILIO_MEDIA_PATH = "/twilio-media"


class _CallLock:
    """The Store's per-call request lock: a second request for a call in flight gets 409-202."""

    def __init__(self, store: Store, key: CallKey) -> None:
        self.store, self.key, self.holder = store, key, str(uuid.uuid4())

    async def __aenter__(self) -> None:
        taken = await asyncio.to_thread(
            self.store.acquire_call_lock, self.key, self.holder, time.time(), LOCK_TTL_S
        )
        if not taken:
            raise CallError(ErrorCode.PENDING, "another request for this guid is pending")

    async def __aexit__(self, *_: Any) -> None:
        await asyncio.to_thread(self.store.release_call_lock, self.key, self.holder)


async def _call(store: Store, key: CallKey, *, ended_ok: bool = False) -> CallRecord:
    call = await asyncio.to_thread(store.get_call, key)
    if call is None:
        raise CallError(ErrorCode.NO_SUCH_CALL, f"no {key.namespace} call with guid {key.guid}")
    if call.status is CallStatus.COMPLETED and not ended_ok:
        raise CallError(ErrorCode.NO_SUCH_CALL, f"call {key.guid} has ended")
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
        # Again under the lock: a KVS reader that handed the call to another (it holds this
        # lock meanwhile) changed its owner since the read above.
        call = await _call(services.store, key, ended_ok=ended is not None)
        if ended is not None and call.status is CallStatus.COMPLETED:
            result = await ended(services.store, key)
        else:
            try:
                result = await action(services.control, call)
            except CallError as exc:
                if ended is None or exc.code is not ErrorCode.NO_SUCH_CALL:
                    raise
                # The holder may have let the call go, its media ended, between the read
                # above and this request.
                again = await _call(services.store, key, ended_ok=True)
                if again.status is not CallStatus.COMPLETED:
                    raise
                result = await ended(services.store, key)
    return StreamingResponse(autotranscribeResponse=result)


router = APIRouter()

WEBHOOK_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "The message id: the same on every attempt; de-duplicate on it",
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "integer"},
        "description": "UNIX seconds of this attempt",
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "v1,<base64 HMAC-SHA256 of id.timestamp.body with the signing secret>",
    },
    {
        "name": "X-CallScribe-Message-Id",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "Same as webhook-id",
    },
    {
        "name": "authorization",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Bearer <token> with OAuth2 client-credentials",
    },
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
    services = api_services(request)
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
    "the contract later keeps working. A body over 64 KB is refused with 400-201. "
    "`autotranscribeParams.interimResults` (default false) is a CallScribe extension, not part "
    "of the AutoTranscribe contract: with true, the live event stream (and the live page) of "
    "the call's tenant also gets `interim` events, each participant's text so far while they "
    "speak, redacted as `redactionOutput` asks and replaced by the utterance's `final`; the "
    "after-call API still gets finished utterances only, and so does the webhook unless the "
    "tenant's webhook configuration opts in (the `interim` webhook). Interim results are "
    "best effort: when the speech recogniser is busy they are skipped, never finals. "
    "`autotranscribeParams.vocabulary` (default none) is a CallScribe extension too: a list "
    "of words the call's speakers may say (product, plan and agent names) that the speech "
    "recogniser should spell as given, for the window this start opens. It is merged with the "
    "tenant's vocabulary (PUT /callscribe/v1/vocabulary, or `callscribe vocabulary set`): "
    "the call's terms first, then each of the tenant's that still fits. "
    f"{VOCABULARY_BOUNDS[0].upper()}{VOCABULARY_BOUNDS[1:]} "
    "(joined with ', '), printable characters only; repeats differing only in case are "
    "dropped; a vocabulary over the bounds is refused with 400-202.",
    openapi_extra=request_body_schema(StartRequest),
)
async def start_streaming(request: Request, key: Authenticated) -> StreamingResponse:
    services = api_services(request)
    start = parse_start(await json_body(request), services.accepted_languages)
    call_key = CallKey(key.tenant, start.namespace.value, start.guid)
    if start.namespace is Namespace.AMAZON_CONNECT:
        return await _open_or_start(services, call_key, start)
    return await _control_call(
        services,
        call_key,
        lambda control, call: control.start(call, start),
    )


async def _open_or_start(
    services: ApiServices, key: CallKey, start: StartRequest
) -> StreamingResponse:
    """A call whose media start-streaming opens: started where it lives, or opened afresh when
    it does not exist, has ended, or its holder is gone."""
    opener = services.openers.get(start.namespace)
    if opener is None:
        raise CallError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"this deployment does not ingest namespace {start.namespace.value}",
        )
    async with _CallLock(services.store, key):
        call = await asyncio.to_thread(services.store.get_call, key)
        result = None
        if call is not None and call.status is not CallStatus.COMPLETED:
            try:
                result = await services.control.start(call, start)
            except CallError as exc:
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
    stop = parse_stop(await json_body(request))
    return await _control_call(
        api_services(request),
        CallKey(key.tenant, stop.namespace.value, stop.guid),
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
    store = api_services(request).store
    call = await find_tenant_call(store, key.tenant, externalConversationId, namespace)
    messages = await asyncio.to_thread(
        store.list_messages, call.key, api_services(request).max_messages, time.time()
    )
    return MessagesResponse(
        externalConversationId=externalConversationId,
        namespace=Namespace(call.key.namespace),
        complete=call.status is CallStatus.COMPLETED,
        messages=[m.body for m in messages],
    )


def create_api_app(services: ApiServices, **fastapi_kwargs: Any) -> FastAPI:
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
                methods=list(route.methods or ()),
                response_model=route.response_model,
                response_model_exclude_none=route.response_model_exclude_none,
                include_in_schema=False,
            )
    app.include_router(build_vocabulary_router())
    if services.outputs is not None:
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

    @app.webhooks.post(
        "interim",
        summary="The text so far of an utterance still being spoken (opt-in, best effort)",
        openapi_extra={"parameters": WEBHOOK_HEADERS},
    )
    def interim_webhook(body: InterimMessage) -> None:
        """A CallScribe extension, off unless the tenant's webhook configuration opts in
        (`callscribe webhook set --interim-results`), and only for calls whose start asks for
        interimResults; local mode only (in AWS, interim results reach the live event stream
        only). Signed like transcript messages, with a webhook-id of its own (`interim-…`).
        Best effort, so that finals are never delayed: never retried, never recorded as a
        failure, never in the after-call API; dropped while a transcript message of the call
        is waiting to be sent, replaced by a newer interim of the same speaker while it waits,
        and never sent after the transcript message of its utterance. A transcript message
        that falls due while an interim POST of its call is unanswered cancels that POST, so
        keep an utterance's transcript over any interim with its utteranceId, whatever order
        they arrive in."""

    app.add_exception_handler(CallError, answer_call_error)
    app.add_exception_handler(RequestValidationError, answer_validation_error)
    # The last added is the outermost: whatever escapes the body limit is answered as JSON.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(InternalErrorAsJson)
    return app
