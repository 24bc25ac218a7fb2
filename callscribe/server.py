"""Local mode: the API, the Twilio gateway, the SIPREC recorder, endpointing, ASR, redaction, the
SQLite store, webhook delivery, the live page and event stream, recordings, the daily export
and retention in one process
(``callscribe serve``), composed on the local adapters. The AWS tasks compose the same ingest
core (callscribe.ingest) on the AWS adapters, with only the ingest each of them serves, and the HTTP routes here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from callscribe import adapters as port_adapters
from callscribe.adapters import DAY_S, Adapters
from callscribe.api.app import TWILIO_MEDIA_PATH, create_api_app
from callscribe.api.deps import ApiServices, OutputServices
from callscribe.api.errors import error_response
from callscribe.api.live import LIVE_PAGE_PATH, LiveServices, build_live_router
from callscribe.asr.base import AsrEngine
from callscribe.auth import AuthError, LiveSessions, LiveTokens, authenticate
from callscribe.bus import InProcessEventBus
from callscribe.calls import VadFactory
from callscribe.config import Settings
from callscribe.control import LocalControl
from callscribe.endpointing import SileroVad
from callscribe.export import UtteranceExporter, run_daily
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.live import LiveFeed, LiveHub, LivePublishers
from callscribe.model import CallError, ErrorCode, Namespace
from callscribe.private_files import secure_data_dir
from callscribe.retention import Retention
from callscribe.secrets import TOKEN_SIGNING_KEY, new_signing_key
from callscribe.serving import lifespan, listening_socket, serve_until_stopped, uvicorn_config
from callscribe.takeover import LocalInstance, complete_abandoned_calls
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.webhooks.targets import WebhookTargets, default_webhook_target

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600


@dataclass
class LocalRuntime(IngestRuntime):
    """Everything ``callscribe serve`` runs: the ingest side, and what the AWS deployment runs
    elsewhere (the API: a Lambda; outputs: S3, the exporter Lambda, DynamoDB TTL and
    lifecycle rules)."""

    api: ApiServices | None = None
    exporter: UtteranceExporter | None = None
    retention: Retention | None = None
    # This run as the owner of its calls (see callscribe.takeover).
    instance: LocalInstance | None = None
    # The live event stream's hub, and what feeds it: the registry's calls, the bus's
    # messages, and the interim results of calls that ask for them (``live_feed.interim``).
    live_hub: LiveHub | None = None
    live_feed: LiveFeed | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        asr: AsrEngine | None = None,
        vad_factory: VadFactory = SileroVad,
    ) -> LocalRuntime:
        """Local mode: SQLite, secrets and blobs in the data dir, in-process bus and delivery,
        and every ingest (SIPREC when enabled)."""
        # Transcripts, call audio and credentials: the owner's only, and tightened when an
        # older version left them readable by others.
        tightened = secure_data_dir(settings)
        if tightened:
            log.info("data dir %s: %d modes set owner-only", settings.data_dir, tightened)
        adapters = port_adapters.local(settings)
        # Calls an earlier run on this data dir left open (killed: no shutdown completed them)
        # are completed before this one serves, so the after-call API says they are complete.
        instance = LocalInstance(settings.data_dir)
        complete_abandoned_calls(
            adapters.store,
            instance.owner_is_gone,
            settings.message_retention_days * DAY_S,
            time.time(),
        )
        ingests = [Ingest.TWILIO, Ingest.AMAZON_CONNECT]
        if settings.siprec.enabled:
            ingests.append(Ingest.SIPREC)
        live_hub = LiveHub(settings.live.max_pending_events)
        dispatcher = _webhook_dispatcher(settings, adapters)
        # The viewers, and the webhook for the interim results of tenants that opted in.
        live_feed = LiveFeed(LivePublishers(live_hub, dispatcher))
        runtime = cls.compose(
            settings,
            adapters,
            ingests=ingests,
            owner=instance.owner,
            asr=asr,
            vad_factory=vad_factory,
            dispatcher=dispatcher,
            live_feed=live_feed,
        )
        runtime.instance = instance
        runtime.live_hub = live_hub
        runtime.live_feed = live_feed
        runtime.registry.watch(live_feed)
        assert isinstance(adapters.bus, InProcessEventBus)  # local mode's bus
        adapters.bus.subscribe(live_feed.final)
        export_retention_s = settings.export_retention_days * DAY_S
        runtime.api = ApiServices(
            store=adapters.store,
            tokens=runtime.tokens,
            control=LocalControl(runtime.registry),
            public_gateway_url=settings.public_gateway_url,
            max_messages=settings.max_messages_per_call,
            openers={Namespace.AMAZON_CONNECT: runtime.connect} if runtime.connect else {},
            outputs=OutputServices(
                blobs=adapters.blobs,
                recordings=adapters.recordings,
                export_retention_s=export_retention_s,
                link_ttl_s=settings.link_ttl_s,
                public_url=settings.public_url,
                link_signer=adapters.link_signer,
            ),
        )
        runtime.exporter = UtteranceExporter(adapters.store, adapters.blobs, adapters.spool_dir)
        runtime.retention = Retention(
            adapters.store, adapters.blobs, adapters.recordings, export_retention_s
        )
        return runtime

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        stats = super().stats(tenant)
        if self.live_hub is not None:
            # The live event stream's viewers, and what those let go for falling behind lost.
            stats["live"] = self.live_hub.stats()
        return stats

    async def start(self) -> None:
        await super().start()
        # The first purge finishes before the server answers anything, so nothing a client
        # does once it is up races with it; then one each PURGE_INTERVAL_S.
        assert self.retention is not None
        await _purge_once(self.retention)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        assert self.retention is not None and self.exporter is not None
        return [
            _purge_expired(self.retention),
            run_daily(self.exporter, self.settings.export_hour_utc),
        ]

    async def shutdown(self) -> None:
        if self.live_hub is not None:
            self.live_hub.close()  # viewers' streams end: nothing holds the shutdown up
        await super().shutdown()
        if self.instance is not None:
            self.instance.close()


def _webhook_dispatcher(settings: Settings, adapters: Adapters) -> WebhookDispatcher:
    """In-process delivery, subscribed to the bus. Always on: tenants may have their own
    target even without a deployment-wide one."""
    webhook = settings.webhook
    dispatcher = WebhookDispatcher(
        WebhookTargets(
            adapters.store,
            adapters.secrets,
            default=default_webhook_target(webhook),
            refresh_s=webhook.config_refresh_s,
        ),
        adapters.store,
        max_pending=webhook.max_pending,
    )
    assert isinstance(adapters.bus, InProcessEventBus)  # local mode's bus
    adapters.bus.subscribe(dispatcher)
    return dispatcher


def gateway_routes(runtime: IngestRuntime) -> list[BaseRoute]:
    """Twilio's media WebSocket, ``/healthz`` and ``/readyz``."""
    gateway = runtime.gateway
    assert gateway is not None, "this process serves no Twilio gateway"

    async def twilio_media(websocket: WebSocket) -> None:
        await gateway(websocket)

    return [
        WebSocketRoute(TWILIO_MEDIA_PATH, twilio_media),
        healthz_route(runtime),
        readyz_route(runtime),
    ]


def add_gateway_routes(app: Starlette, runtime: IngestRuntime) -> None:
    app.router.routes.extend(gateway_routes(runtime))


def healthz_route(runtime: IngestRuntime) -> Route:
    """``GET /healthz``: liveness for anyone; with a tenant's API key (the asapp-api-id and
    asapp-api-secret headers), the server's counters and that tenant's own live calls. It is
    public behind a load balancer, so without a key it names no call and no tenant."""

    async def healthz(request: Request) -> JSONResponse:
        api_id = request.headers.get("asapp-api-id")
        api_secret = request.headers.get("asapp-api-secret")
        if api_id is None and api_secret is None:
            return JSONResponse(runtime.liveness())
        try:
            key = await asyncio.to_thread(authenticate, runtime.store, api_id, api_secret)
        except AuthError as exc:
            return error_response(CallError(ErrorCode.UNAUTHENTICATED, str(exc)))
        return JSONResponse(runtime.stats(tenant=key.tenant))

    return Route("/healthz", healthz, methods=["GET"], include_in_schema=False)


def readyz_route(runtime: IngestRuntime) -> Route:
    """``GET /readyz``: 200 while this process takes new calls, 503 with the reason while it
    does not (draining, full): a load balancer's health check, which sends new calls to
    other tasks without stopping this one (ECS probes liveness on ``/healthz``)."""

    async def readyz(request: Request) -> JSONResponse:
        reason = runtime.why_not_ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    return Route("/readyz", readyz, methods=["GET"], include_in_schema=False)


def create_local_app(runtime: LocalRuntime) -> FastAPI:
    """Local mode: the API, the Twilio gateway, /healthz and the live page and event stream
    on one port."""
    assert runtime.api is not None and runtime.live_hub is not None
    app = create_api_app(
        runtime.api,
        lifespan=lifespan(runtime.start, runtime.shutdown, background=runtime.background),
    )
    add_gateway_routes(app, runtime)
    # Live tokens and page sessions are signed with the deployment's one signing key (each
    # kind under its own salt).
    signing_key = runtime.secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key)
    live = runtime.settings.live
    app.state.live = LiveServices(
        hub=runtime.live_hub,
        tokens=LiveTokens(signing_key, live.token_ttl_s),
        sessions=LiveSessions(signing_key, live.session_ttl_s),
        store=runtime.store,
        public_url=runtime.settings.public_url,
    )
    app.include_router(build_live_router())
    return app


async def _purge_once(retention: Retention) -> None:
    try:
        removed = await asyncio.to_thread(retention.purge, time.time())
        if any(removed.values()):
            log.info("retention purge: %s", removed)
    except Exception:
        log.exception("retention purge failed; trying again at the next interval")


async def _purge_expired(retention: Retention) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL_S)
        await _purge_once(retention)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    sock = listening_socket(settings.host, settings.port)
    runtime = LocalRuntime.build(settings)
    app = create_local_app(runtime)

    def announce(_: object) -> None:
        port = sock.getsockname()[1]
        sip = (
            f"; SIPREC on {settings.host}:{runtime.siprec.port} (UDP, TCP)"
            if runtime.siprec
            else ""
        )
        print(
            f"CallScribe listening on http://{settings.host}:{port} "
            f"(API, Twilio media at ws://{settings.host}:{port}{TWILIO_MEDIA_PATH}){sip}; "
            f"data in {settings.data_dir}",
            flush=True,
        )
        print(
            f"Live page: http://{settings.host}:{port}{LIVE_PAGE_PATH} (sign in with an API key)",
            flush=True,
        )
        if settings.webhook.url is None:
            print(
                "No default webhook (--webhook-url): transcripts are kept for the after-call "
                "API (GET /conversation/v1/conversation/messages) and go to the webhooks tenants "
                "set with `callscribe webhook set`.",
                flush=True,
            )
        if ready is not None:
            ready.set()

    await serve_until_stopped(uvicorn_config(app, settings), [sock], on_started=announce)
