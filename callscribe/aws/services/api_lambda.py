"""The API Lambda: the same FastAPI app as local mode, through Mangum, on the AWS adapters
(DynamoDB store, Secrets Manager, HTTP control of the gateway tasks, S3 for recordings and feed
files), with powertools logging, tracing and metrics. Works for API Gateway REST (v1) and HTTP
API (v2) events."""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from callscribe import adapters
from callscribe.api.app import create_api_app
from callscribe.api.deps import ApiServices, OutputServices
from callscribe.api.live import LiveServices, build_live_page_router, build_live_token_router
from callscribe.auth import LiveSessions, LiveTokens, StreamTokens
from callscribe.aws.settings import CONTROL_SECRET, AwsSettings
from callscribe.config import Settings
from callscribe.control import CallOpener
from callscribe.control_http import HttpCallOpener, HttpControl
from callscribe.model import Namespace
from callscribe.secrets import TOKEN_SIGNING_KEY, Secrets

logger = Logger(service="callscribe-api")
tracer = Tracer(service="callscribe-api")
metrics = Metrics(namespace="CallScribe", service="callscribe-api")


def _required(secrets: Secrets, name: str) -> str:
    value = secrets.get(name)
    if not value:
        raise RuntimeError(f"secret {name!r} is missing from Secrets Manager")
    return value


@functools.cache
def asgi_handler() -> Mangum:
    """Built once per Lambda container (cold start), reused by every invocation."""
    aws, settings = AwsSettings(), Settings()
    secrets = adapters.deployment_secrets(aws)
    blobs = adapters.s3_blobs(settings)
    control_secret = _required(secrets, CONTROL_SECRET)
    openers: dict[Namespace, CallOpener] = {}
    if aws.kvs_reader_url:
        # Amazon Connect calls are opened by start-streaming, on one of the KVS reader tasks.
        openers[Namespace.AMAZON_CONNECT] = HttpCallOpener(control_secret, aws.kvs_reader_url)
    services = ApiServices(
        store=adapters.dynamodb_store(aws.table_name),
        tokens=StreamTokens(_required(secrets, TOKEN_SIGNING_KEY), settings.stream_token_ttl_s),
        control=HttpControl(control_secret),
        openers=openers,
        public_gateway_url=settings.public_gateway_url,
        max_messages=settings.max_messages_per_call,
        # Links are pre-signed S3 GETs, so no download route is served.
        outputs=OutputServices(
            blobs=blobs,
            recordings=adapters.recordings(settings, blobs, adapters.AWS_SPOOL_DIR),
            export_retention_s=settings.export_retention_days * adapters.DAY_S,
            link_ttl_s=settings.link_ttl_s,
        ),
    )
    app = create_api_app(services)
    if aws.live_websocket_url:
        # Live tokens for the deployment's WebSocket API (its $connect Lambda checks them),
        # and the live page, whose session gets it a token for the WebSocket API.
        signing_key = _required(secrets, TOKEN_SIGNING_KEY)
        live_tokens = LiveTokens(signing_key, settings.live.token_ttl_s)
        events_url = aws.live_websocket_url
        app.state.live = LiveServices(
            hub=None,
            tokens=live_tokens,
            sessions=LiveSessions(signing_key, settings.live.session_ttl_s),
            store=services.store,
            public_url=settings.public_url,
            events_url=events_url,
        )
        app.include_router(build_live_token_router(lambda _: live_tokens, lambda _: events_url))
        app.include_router(build_live_page_router())
    return Mangum(app, lifespan="off")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    response = asgi_handler()(event, context)
    status = int(response.get("statusCode", 500))
    metrics.add_metric(name="ApiRequests", unit=MetricUnit.Count, value=1)
    if status >= 400:
        metrics.add_metric(
            name="ApiClientErrors" if status < 500 else "ApiServerErrors",
            unit=MetricUnit.Count,
            value=1,
        )
    return response
