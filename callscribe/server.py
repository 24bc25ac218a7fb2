"""Local mode: the API, the Twilio gateway, the SIPREC recorder, endpointing, ASR, redaction, the
SQLite store, webhook delivery, recordings, the daily export and retention in one process
(``callscribe serve``). ``LocalRuntime.assemble`` is the ingest side alone, on any adapters:
the AWS gateway task builds on it too."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from callscribe.api.app import TWILIO_MEDIA_PATH, create_api_app
from callscribe.api.deps import ApiServices, OutputServices
from callscribe.api.errors import error_response
from callscribe.asr.base import AsrEngine, AsrError, AsrRequest
from callscribe.asr.factory import make_asr_engine
from callscribe.auth import AuthError, StreamTokens, authenticate
from callscribe.blobs.base import BlobStore
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.bus import EventBus, InProcessEventBus
from callscribe.calls import CallRegistry
from callscribe.config import Settings
from callscribe.connect.ingest import ConnectIngest
from callscribe.connection_limits import install_log_rate_limits, limited_http_protocol
from callscribe.connect.kvs import BotoMediaSources
from callscribe.control import LocalControl
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.export import UtteranceExporter, run_daily
from callscribe.model import CallError, ErrorCode, Namespace
from callscribe.private_files import secure_data_dir
from callscribe.recording import Recordings
from callscribe.retention import Retention
from callscribe.secrets import (
    FILE_LINK_SIGNING_KEY,
    TOKEN_SIGNING_KEY,
    FileSecrets,
    Secrets,
    new_signing_key,
)
from callscribe.siprec.gateway import SiprecGateway, SiprecServices
from callscribe.store.base import Store
from callscribe.store.sqlite import SqliteStore
from callscribe.takeover import LocalInstance, complete_abandoned_calls
from callscribe.transcription import TranscriptionPipeline
from callscribe.twilio.gateway import GatewayServices, TwilioGateway
from callscribe.webhooks.targets import WebhookTargets, default_webhook_target

log = logging.getLogger(__name__)

try:
    SERVER_VERSION = importlib.metadata.version("callscribe")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "unknown"

DAY_S = 86_400
DRAIN_TIMEOUT_S = 15.0
PURGE_INTERVAL_S = 3600


def open_blob_store(settings: Settings, secrets: Secrets) -> BlobStore:
    """S3 when a bucket is configured, else the data directory's ``blobs/``."""
    if settings.blob_s3_bucket:
        from callscribe.blobs.s3 import S3BlobStore  # boto3 only when asked for

        return S3BlobStore(settings.blob_s3_bucket, settings.blob_s3_prefix)
    return DirectoryBlobStore(settings.blob_dir, link_signer(secrets))


def link_signer(secrets: Secrets) -> BlobLinkSigner:
    return BlobLinkSigner(secrets.get_or_create(FILE_LINK_SIGNING_KEY, new_signing_key))


@dataclass
class LocalRuntime:
    settings: Settings
    store: Store
    asr: AsrEngine
    pipeline: TranscriptionPipeline
    registry: CallRegistry
    dispatcher: WebhookDispatcher | None
    gateway: TwilioGateway
    tokens: StreamTokens
    api: ApiServices | None = None  # the API runs here in local mode only (in AWS: a Lambda)
    owns_asr: bool = True
    connect: ConnectIngest | None = None  # Amazon Connect calls and their KVS readers
    siprec: SiprecGateway | None = None
    # Local mode's outputs (in AWS: S3, the exporter Lambda, DynamoDB TTL and lifecycle rules).
    secrets: Secrets | None = None
    blobs: BlobStore | None = None
    exporter: UtteranceExporter | None = None
    retention: Retention | None = None
    # Local mode: this run as the owner of its calls (see callscribe.takeover).
    instance: LocalInstance | None = None

    @classmethod
    def build(cls, settings: Settings, asr: AsrEngine | None = None) -> LocalRuntime:
        """Local mode: SQLite, secrets and blobs in the data dir, in-process bus and delivery."""
        # Transcripts, call audio and credentials: the owner's only, and tightened when an
        # older version left them readable by others.
        tightened = secure_data_dir(settings)
        if tightened:
            log.info("data dir %s: %d modes set owner-only", settings.data_dir, tightened)
        store = SqliteStore(settings.store_path)
        # Calls an earlier run on this data dir left open (killed: no shutdown completed them)
        # are completed before this one serves, so the after-call API says they are complete.
        instance = LocalInstance(settings.data_dir)
        complete_abandoned_calls(
            store, instance.owner_is_gone, settings.message_retention_days * DAY_S, time.time()
        )
        secrets = FileSecrets(settings.secrets_path)
        blobs = open_blob_store(settings, secrets)
        recordings = Recordings(
            blobs, settings.spool_dir, settings.recording_retention_days * DAY_S,
            settings.recording,
        )
        bus = InProcessEventBus()
        webhook = settings.webhook
        # Always on: tenants may have their own target even without a deployment-wide one.
        dispatcher = WebhookDispatcher(
            WebhookTargets(
                store,
                secrets,
                default=default_webhook_target(webhook),
                refresh_s=webhook.config_refresh_s,
            ),
            store,
            max_pending=webhook.max_pending,
        )
        bus.subscribe(dispatcher)
        runtime = cls.assemble(
            settings,
            store=store,
            secrets=secrets,
            bus=bus,
            asr=asr,
            owner=instance.owner,
            dispatcher=dispatcher,
            recordings=recordings,
        )
        runtime.instance = instance
        export_retention_s = settings.export_retention_days * DAY_S
        runtime.api = ApiServices(
            store=store,
            tokens=runtime.tokens,
            control=LocalControl(runtime.registry),
            public_gateway_url=settings.public_gateway_url,
            max_messages=settings.max_messages_per_call,
            openers={Namespace.AMAZON_CONNECT: runtime.connect} if runtime.connect else {},
            outputs=OutputServices(
                blobs=blobs,
                recordings=recordings,
                export_retention_s=export_retention_s,
                link_ttl_s=settings.link_ttl_s,
                public_url=settings.public_url,
                link_signer=blobs.signer if isinstance(blobs, DirectoryBlobStore) else None,
            ),
        )
        runtime.secrets = secrets
        runtime.blobs = blobs
        runtime.exporter = UtteranceExporter(store, blobs, settings.spool_dir)
        runtime.retention = Retention(store, blobs, recordings, export_retention_s)
        return runtime

    @classmethod
    def assemble(
        cls,
        settings: Settings,
        *,
        store: Store,
        secrets: Secrets,
        bus: EventBus,
        asr: AsrEngine | None,
        owner: str,
        dispatcher: WebhookDispatcher | None = None,
        recordings: Recordings | None = None,
    ) -> LocalRuntime:
        """The ingest side (gateway, calls, transcription) on whichever adapters are given."""
        tokens = StreamTokens(
            secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key), settings.stream_token_ttl_s
        )
        owns_asr = asr is None
        asr = asr or make_asr_engine(settings.asr)
        pipeline = TranscriptionPipeline(
            asr,
            store,
            bus,
            retention_s=settings.message_retention_days * DAY_S,
            recordings=recordings,
        )
        registry = CallRegistry()
        gateway = TwilioGateway(
            GatewayServices(
                store=store,
                tokens=tokens,
                pipeline=pipeline,
                registry=registry,
                endpointing=settings.endpointing,
                intake=settings.twilio,
                max_frame_bytes=settings.max_ws_frame_bytes,
                owner=owner,
                start_timeout_s=settings.limits.twilio_start_timeout_s,
            )
        )
        connect = ConnectIngest(
            store=store,
            pipeline=pipeline,
            registry=registry,
            endpointing=settings.endpointing,
            settings=settings.connect,
            # boto3 is imported only when a tenant's first Connect call starts.
            sources=BotoMediaSources(store, settings.connect),
            owner=owner,
        )
        siprec = None
        if settings.siprec.enabled:
            siprec = SiprecGateway(
                SiprecServices(
                    store=store,
                    pipeline=pipeline,
                    registry=registry,
                    endpointing=settings.endpointing,
                    settings=settings.siprec,
                    host=settings.host,
                    owner=owner,
                )
            )
        return cls(
            settings, store, asr, pipeline, registry, dispatcher, gateway, tokens,
            owns_asr=owns_asr, connect=connect, siprec=siprec,
        )

    async def warm_up(self) -> None:
        """One tiny transcription so the first caller does not pay for lazy initialisation."""
        try:
            # Faint noise, not zeros: the engine answers digital silence without the model.
            noise = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 1e-3
            await self.asr.transcribe(AsrRequest(audio=noise, language="en"))
        except AsrError as exc:
            # A remote ASR worker may start after this gateway: serve anyway; utterances
            # fail (and are counted) until it answers.
            log.warning("ASR warm-up failed: %s", exc)

    def liveness(self) -> dict[str, Any]:
        """What anyone may see (load balancers, container health checks): no call details."""
        return {"status": "ok", "version": SERVER_VERSION, "liveCalls": len(self.registry)}

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """The server's counters, and the details of ``tenant``'s own live calls (every
        tenant's when None: for callers inside this process)."""
        connect = self.connect.stats() if self.connect else None
        if connect is not None and tenant is not None:
            connect["readers"] = [r for r in connect["readers"] if r.get("tenant") == tenant]
        return {
            **self.liveness(),
            "twilioStreams": {
                "opened": self.gateway.streams_opened,
                "rejected": self.gateway.streams_rejected,
                "timedOut": self.gateway.streams_timed_out,
                # Streams read more slowly for running far ahead of real time (a flood).
                "paced": self.gateway.streams_paced,
            },
            "siprec": self.siprec.snapshot() if self.siprec else None,
            "asr": {
                **self.pipeline.stats.as_dict(),
                # Shortened-window decodes that looked broken and were done again in 30 s.
                "fullWindowRetries": getattr(self.asr, "full_window_retries", 0),
                # Loops that even the full window gave, cut back to one occurrence.
                "loopsCut": getattr(self.asr, "loops_cut", 0),
            },
            "amazonConnect": connect,
            "delivery": self.dispatcher.as_dict() if self.dispatcher else None,
        }

    async def shutdown(self) -> None:
        """Finish open utterances, deliver what is pending, then release resources."""
        if self.siprec is not None:
            await self.siprec.stop()  # no new sessions; buffered RTP goes into the calls
        await self.registry.complete_all()
        if self.connect is not None:
            await self.connect.close()
        if self.dispatcher is not None:
            await self.dispatcher.drain(DRAIN_TIMEOUT_S)
            await self.dispatcher.close()
        if self.owns_asr:
            await self.asr.close()
        self.store.close()
        if self.instance is not None:
            self.instance.close()


def create_local_app(runtime: LocalRuntime) -> FastAPI:
    """Local mode: the API, the Twilio gateway and /healthz on one port."""
    assert runtime.api is not None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.warm_up()
        if runtime.siprec is not None:
            await runtime.siprec.start()
        assert runtime.retention is not None and runtime.exporter is not None
        # The first purge finishes before the server answers anything, so nothing a client
        # does once it is up races with it; then one each PURGE_INTERVAL_S.
        await _purge_once(runtime.retention)
        loop = asyncio.get_running_loop()
        background = [
            loop.create_task(_purge_expired(runtime.retention)),
            loop.create_task(run_daily(runtime.exporter, runtime.settings.export_hour_utc)),
        ]
        yield
        for task in background:
            task.cancel()
        await runtime.shutdown()

    app = create_api_app(runtime.api, lifespan=lifespan)
    add_gateway_routes(app, runtime)
    return app


def add_gateway_routes(app: Starlette, runtime: LocalRuntime) -> None:
    async def twilio_media(websocket: WebSocket) -> None:
        await runtime.gateway(websocket)

    app.router.routes.extend(
        [WebSocketRoute(TWILIO_MEDIA_PATH, twilio_media), healthz_route(runtime)]
    )


def healthz_route(runtime: LocalRuntime) -> Route:
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


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    sock = listening_socket(settings.host, settings.port)
    runtime = LocalRuntime.build(settings)
    app = create_local_app(runtime)
    server = uvicorn.Server(uvicorn_config(app, settings))
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = sock.getsockname()[1]
        sip = f"; SIPREC on {settings.host}:{runtime.siprec.port} (UDP, TCP)" if runtime.siprec else ""
        print(
            f"CallScribe listening on http://{settings.host}:{port} "
            f"(API, Twilio media at ws://{settings.host}:{port}{TWILIO_MEDIA_PATH}){sip}; "
            f"data in {settings.data_dir}",
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
    await serving


def exit_cleanly_on_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: let that end
    the process with status 0, as a requested stop is not a failure."""

    def exit_zero(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_zero)
