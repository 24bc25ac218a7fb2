"""What the API's endpoints share: the services the app runs on, the authenticated tenant, the
error responses every endpoint documents, and finding a tenant's call by its guid. Both the
contract's endpoints (``app``), the outputs' (``outputs``) and the tenant vocabulary's
(``vocabulary``) build on this module."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from callscribe.api.schemas import ErrorResponse
from callscribe.asr.base import WHISPER_LANGUAGES
from callscribe.auth import AuthError, StreamTokens, authenticate
from callscribe.blobs.base import BlobStore
from callscribe.blobs.directory import BlobLinkSigner
from callscribe.control import CallOpener, Control
from callscribe.model import CallError, ErrorCode, Namespace
from callscribe.recording import Recordings
from callscribe.store.base import ApiKey, CallRecord, Store

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "400-201, 400-202 or 400-203"},
    401: {"model": ErrorResponse, "description": "401-201: missing or wrong credentials"},
    409: {"model": ErrorResponse, "description": "409-201, 409-202 or 409-203"},
    500: {"model": ErrorResponse, "description": "500-201"},
}


@dataclass
class OutputServices:
    blobs: BlobStore
    recordings: Recordings
    export_retention_s: float
    link_ttl_s: int = 3600
    public_url: str | None = None
    # Local mode: links point at this server, which checks their signature and expiry.
    link_signer: BlobLinkSigner | None = None


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


def api_services(request: Request) -> ApiServices:
    return request.app.state.services


async def json_body(request: Request) -> Any:
    """The request's body as JSON, read whatever its content type says (the contract's
    clients do not all send one): 400-201 when it is not JSON."""
    raw = await request.body()  # at most the app's MAX_BODY_BYTES (BodySizeLimit)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CallError(ErrorCode.PARAMETER, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # 64 KB of "[" nests far deeper than the parser recurses.
        raise CallError(ErrorCode.PARAMETER, "body is nested too deeply") from None


async def _tenant_key(
    request: Request,
    asapp_api_id: Annotated[str | None, Header(alias="asapp-api-id")] = None,
    asapp_api_secret: Annotated[str | None, Header(alias="asapp-api-secret")] = None,
) -> ApiKey:
    store = api_services(request).store
    try:
        return await asyncio.to_thread(authenticate, store, asapp_api_id, asapp_api_secret)
    except AuthError as exc:
        raise CallError(ErrorCode.UNAUTHENTICATED, str(exc)) from None


Authenticated = Annotated[ApiKey, Depends(_tenant_key)]


async def find_tenant_call(
    store: Store, tenant: str, guid: str, namespace: Namespace | None
) -> CallRecord:
    """The tenant's call with this guid (after-call endpoints take the guid alone)."""
    calls = await asyncio.to_thread(store.find_calls, tenant, guid)
    if namespace is not None:
        calls = [c for c in calls if c.key.namespace == namespace.value]
    if not calls:
        raise CallError(ErrorCode.NO_SUCH_CALL, f"no call with guid {guid}")
    if len(calls) > 1:
        raise CallError(
            ErrorCode.PARAMETER,
            "calls in several namespaces share this guid: add the namespace query parameter",
        )
    return calls[0]
