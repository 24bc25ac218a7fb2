"""Local mode: the API, the Twilio gateway, the SIPREC recorder, endpointing, ASR, redaction, the
SQLite store and webhook delivery in one process (``callscribe serve``)."""

from __future__ import annotations

import asyncio
import contextlib
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

from callscribe.api.app import TWILIO_MEDIA_PATH, ApiServices, create_api_app
from callscribe.api.schemas import Namespace
from callscribe.asr.base import AsrEngine, AsrError, AsrRequest
from callscribe.asr.factory import make_asr_engine
from callscribe.auth import StreamTokens
from callscribe.bus import EventBus, InProcessEventBus
from callscribe.calls import CallRegistry
from callscribe.config import Settings
from callscribe.connect.ingest import ConnectIngest
from callscribe.connect.kvs import BotoMediaSources
from callscribe.control import LocalControl
from callscribe.delivery import WebhookDispatcher, WebhookTarget
from callscribe.secrets import TOKEN_SIGNING_KEY, FileSecrets, Secrets, new_signing_key
from callscribe.siprec.gateway import SiprecGateway, SiprecServices
from callscribe.store.base import Store
from callscribe.store.sqlite import SqliteStore
from callscribe.transcription import TranscriptionPipeline
from callscribe.twilio.gateway import GatewayServices, TwilioGateway

log = logging.getLogger(__name__)

DAY_S = 86_400
DRAIN_TIMEOUT_S = 15.0


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

    @classmethod
    def build(cls, settings: Settings, asr: AsrEngine | None = None) -> LocalRuntime:
        """Local mode: SQLite, secrets in the data dir, in-process bus and webhook delivery."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(settings.store_path)
        bus = InProcessEventBus()
        dispatcher = None
        webhook = settings.webhook
        if webhook.url is not None:
            dispatcher = WebhookDispatcher(
                WebhookTarget(
                    url=str(webhook.url),
                    secret_name=webhook.secret_name,
                    secret=webhook.secret,
                    secret_in=webhook.secret_in,
                    timeout_s=webhook.timeout_s,
                ),
                store,
                max_pending=webhook.max_pending,
            )
            bus.subscribe(dispatcher)
        runtime = cls.assemble(
            settings,
            store=store,
            secrets=FileSecrets(settings.data_dir / "secrets.json"),
            bus=bus,
            asr=asr,
            owner=f"local:{socket.gethostname()}:{os.getpid()}",
            dispatcher=dispatcher,
        )
        runtime.api = ApiServices(
            store=store,
            tokens=runtime.tokens,
            control=LocalControl(runtime.registry),
            public_gateway_url=settings.public_gateway_url,
            max_messages=settings.max_messages_per_call,
            openers={Namespace.AMAZON_CONNECT: runtime.connect} if runtime.connect else {},
        )
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
    ) -> LocalRuntime:
        """The ingest side (gateway, calls, transcription) on whichever adapters are given."""
        tokens = StreamTokens(
            secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key), settings.stream_token_ttl_s
        )
        owns_asr = asr is None
        asr = asr or make_asr_engine(settings.asr)
        pipeline = TranscriptionPipeline(
            asr, store, bus, retention_s=settings.message_retention_days * DAY_S
        )
        registry = CallRegistry()
        gateway = TwilioGateway(
            GatewayServices(
                store=store,
                tokens=tokens,
                pipeline=pipeline,
                registry=registry,
                endpointing=settings.endpointing,
                max_frame_bytes=settings.max_ws_frame_bytes,
                owner=owner,
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
            await self.asr.transcribe(AsrRequest(audio=np.zeros(16_000, dtype=np.float32)))
        except AsrError as exc:
            # A remote ASR worker may start after this gateway: serve anyway; utterances
            # fail (and are counted) until it answers.
            log.warning("ASR warm-up failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        delivery = self.dispatcher.stats if self.dispatcher else None
        return {
            "status": "ok",
            "liveCalls": len(self.registry),
            "twilioStreams": {
                "opened": self.gateway.streams_opened,
                "rejected": self.gateway.streams_rejected,
            },
            "siprec": self.siprec.snapshot() if self.siprec else None,
            "asr": self.pipeline.stats.as_dict(),
            "amazonConnect": self.connect.stats() if self.connect else None,
            "delivery": (
                {
                    "delivered": delivery.delivered,
                    "failed": delivery.failed,
                    "dropped": delivery.dropped,
                    "pending": self.dispatcher.pending if self.dispatcher else 0,
                }
                if delivery
                else None
            ),
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


def create_local_app(runtime: LocalRuntime) -> FastAPI:
    """Local mode: the API, the Twilio gateway and /healthz on one port."""
    assert runtime.api is not None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.warm_up()
        if runtime.siprec is not None:
            await runtime.siprec.start()
        purge = asyncio.get_running_loop().create_task(_purge_expired(runtime))
        yield
        purge.cancel()
        await runtime.shutdown()

    app = create_api_app(runtime.api, lifespan=lifespan)
    add_gateway_routes(app, runtime)
    return app


def add_gateway_routes(app: Starlette, runtime: LocalRuntime) -> None:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse(runtime.stats())

    async def twilio_media(websocket: WebSocket) -> None:
        await runtime.gateway(websocket)

    app.router.routes.extend(
        [
            WebSocketRoute(TWILIO_MEDIA_PATH, twilio_media),
            Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        ]
    )


async def _purge_expired(runtime: LocalRuntime) -> None:
    while True:
        removed = await asyncio.to_thread(runtime.store.purge_expired, time.time())
        if removed:
            log.info("purged %d expired messages", removed)
        await asyncio.sleep(3600)


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    runtime = LocalRuntime.build(settings)
    app = create_local_app(runtime)
    server = uvicorn.Server(uvicorn_config(app, settings))
    serving = asyncio.get_running_loop().create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        sip = f"; SIPREC on {settings.host}:{runtime.siprec.port} (UDP, TCP)" if runtime.siprec else ""
        print(
            f"CallScribe listening on http://{settings.host}:{port} "
            f"(API, Twilio media at ws://{settings.host}:{port}{TWILIO_MEDIA_PATH}){sip}; "
            f"data in {settings.data_dir}",
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
