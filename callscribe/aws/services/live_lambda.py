"""The live event stream's connection Lambda, behind the deployment's WebSocket API (API
Gateway): ``$connect`` lets a viewer in with a live token and records its connection in the
Store, ``$disconnect`` deletes it. The tasks that hold calls post each tenant's events to the
recorded connections (``callscribe.aws.adapters.live_connections``).

A viewer connects to ``<LiveWebSocketUrl>?token=<live token>`` (``&guid=<guid>`` for one
call's events only, ``&namespace=<namespace>`` for those of one namespace), the token from
``POST /callscribe/v1/live/token`` (a program, with its API key) or ``POST
/live/session/token`` (the live page, with its session). A missing, forged,
expired or revoked token answers 401 and API Gateway refuses the handshake; that is the
WebSocket API's only authorization. A browser's handshake (one that names an ``Origin``) is
let in only from the live page's origin (``CALLSCRIBE_LIVE_PAGE_ORIGIN``, the API's URL), so
another site's page cannot open a stream even with a token it got hold of: 403.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from callscribe import adapters
from callscribe.auth import AuthError, LiveTokens
from callscribe.aws.settings import LiveFunctionSettings
from callscribe.config import LiveSettings
from callscribe.model import ErrorCode, Namespace
from callscribe.secrets import TOKEN_SIGNING_KEY
from callscribe.store.base import Store

logger = Logger(service="callscribe-live")
metrics = Metrics(namespace="CallScribe", service="callscribe-live")

# As the local event stream's (callscribe.api.live).
MAX_GUID_CHARS = 128
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class LiveConnectionServices:
    store: Store
    tokens: LiveTokens
    # How long a connection is kept if its $disconnect never reaches the Store.
    connection_ttl_s: int
    # The live page's origin (https://host[:port]); None: no browser page is let in.
    page_origin: str | None = None


@functools.cache
def services() -> LiveConnectionServices:
    """Built once per Lambda container (cold start), reused by every invocation."""
    settings = LiveFunctionSettings()
    secrets = adapters.secrets_manager(
        {TOKEN_SIGNING_KEY: settings.token_secret_arn}, settings.secrets_prefix
    )
    signing_key = secrets.get(TOKEN_SIGNING_KEY)
    if not signing_key:
        raise RuntimeError("the token-signing key is missing from Secrets Manager")
    return LiveConnectionServices(
        store=adapters.dynamodb_store(settings.table_name),
        tokens=LiveTokens(signing_key, LiveSettings().token_ttl_s),
        connection_ttl_s=settings.live_connection_ttl_s,
        page_origin=settings.live_page_origin,
    )


def _answer(status: int, code: ErrorCode | None = None, message: str = "") -> dict[str, Any]:
    if code is None:
        return {"statusCode": status}
    body = {"isOk": False, "error": {"code": code.value, "message": message}}
    return {"statusCode": status, "body": json.dumps(body)}


def _header(event: dict[str, Any], name: str) -> str | None:
    """A handshake header, whatever its case (API Gateway passes them as the client sent
    them)."""
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def _same_origin(origin: str, page_origin: str) -> bool:
    """Scheme, host and port alike (a port the scheme implies counts as written)."""

    def normal(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url.strip().lower())
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = -1
        return parts.scheme, parts.hostname or "", port

    return normal(origin) == normal(page_origin)


def connect(event: dict[str, Any], live: LiveConnectionServices, now: float) -> dict[str, Any]:
    connection_id = event["requestContext"]["connectionId"]
    query = event.get("queryStringParameters") or {}
    origin = _header(event, "origin")
    if origin is not None and (
        live.page_origin is None or not _same_origin(origin, live.page_origin)
    ):
        metrics.add_metric(name="LiveConnectionsRefused", unit=MetricUnit.Count, value=1)
        return _answer(403, ErrorCode.CROSS_SITE, "a WebSocket from another site's page is refused")
    try:
        grant = live.tokens.verify(query.get("token"), live.store)
    except AuthError as exc:
        metrics.add_metric(name="LiveConnectionsRefused", unit=MetricUnit.Count, value=1)
        return _answer(401, ErrorCode.UNAUTHENTICATED, str(exc))
    guid = query.get("guid") or None
    if guid is not None and len(guid) > MAX_GUID_CHARS:
        return _answer(400, ErrorCode.PARAMETER, f"guid: at most {MAX_GUID_CHARS} characters")
    namespace = query.get("namespace") or None
    if namespace is not None and namespace not in {n.value for n in Namespace}:
        return _answer(400, ErrorCode.PARAMETER, f"namespace: unknown namespace {namespace!r}")
    live.store.put_live_connection(
        connection_id, grant.tenant, guid, now + live.connection_ttl_s, namespace=namespace
    )
    metrics.add_metric(name="LiveConnections", unit=MetricUnit.Count, value=1)
    logger.info("live viewer connected", extra={"tenant": grant.tenant, "guid": guid})
    return _answer(200)


def disconnect(event: dict[str, Any], live: LiveConnectionServices) -> dict[str, Any]:
    live.store.delete_live_connection(event["requestContext"]["connectionId"])
    metrics.add_metric(name="LiveDisconnections", unit=MetricUnit.Count, value=1)
    return _answer(200)


def handle(event: dict[str, Any], live: LiveConnectionServices, now: float) -> dict[str, Any]:
    route = event["requestContext"].get("routeKey")
    if route == "$connect":
        return connect(event, live, now)
    if route == "$disconnect":
        return disconnect(event, live)
    # The API routes nothing else here: what a viewer sends is not read.
    return _answer(400, ErrorCode.PARAMETER, f"route {route!r} is not served")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, services(), time.time())
