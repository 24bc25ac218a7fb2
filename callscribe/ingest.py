"""The ingest side of a serving process, composed once for every process that holds calls.

The core every such process shares: stream tokens, the transcription pipeline, the live-call
registry and the ``Calls`` factory every ingest opens its calls through. On it, only the ingests
the process serves are built: local mode serves all three (SIPREC when enabled), the AWS Twilio
gateway task Twilio only, the KVS reader task Amazon Connect only. (Its HTTP routes are
callscribe.server's: the core does not import the HTTP API.)
"""

from __future__ import annotations

import asyncio
import enum
import importlib.metadata
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from callscribe.adapters import DAY_S, Adapters
from callscribe.asr.base import AsrEngine, AsrError, AsrRequest, InterimCapableEngine
from callscribe.asr.factory import make_asr_engine
from callscribe.auth import StreamTokens
from callscribe.blobs.base import BlobStore
from callscribe.bus import DeliveryWithFanOut, EventBus, TranscriptEvent
from callscribe.calls import CallRegistry, Calls, CallServices, VadFactory
from callscribe.config import Settings
from callscribe.connect.ingest import ConnectIngest
from callscribe.connect.kvs import BotoMediaSources
from callscribe.endpointing import SileroVad
from callscribe.interim import InterimDecoder
from callscribe.live import LiveFeed
from callscribe.secrets import TOKEN_SIGNING_KEY, Secrets, new_signing_key
from callscribe.siprec.gateway import SiprecGateway, SiprecServices
from callscribe.store.base import Store
from callscribe.transcription import TranscriptionPipeline
from callscribe.twilio.gateway import GatewayServices, TwilioGateway
from callscribe.webhooks.delivery import WebhookDispatcher

log = logging.getLogger(__name__)

try:
    SERVER_VERSION = importlib.metadata.version("callscribe")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "unknown"

DRAIN_TIMEOUT_S = 15.0
# What the live event stream's last events (the calls' ends at shutdown) get to be posted.
LIVE_CLOSE_TIMEOUT_S = 5.0
DRAIN_POLL_S = 0.25


class BusWithLiveCopy:
    """The process's event bus, each message also handed to the live feed as a final (AWS: the
    bus is the delivery queue, which nothing in the process reads). The feed only queues it,
    and never raises."""

    def __init__(self, bus: EventBus, feed: LiveFeed) -> None:
        self.bus = bus
        self.feed = feed

    async def publish(self, event: TranscriptEvent) -> None:
        self.feed.final(event)
        await self.bus.publish(event)

    async def close(self) -> None:
        await self.bus.close()


class Ingest(enum.Enum):
    """A source of calls a process may serve."""

    TWILIO = "twilio"
    AMAZON_CONNECT = "amazonconnect"
    SIPREC = "siprec"


@dataclass
class IngestRuntime:
    settings: Settings
    adapters: Adapters
    asr: AsrEngine
    pipeline: TranscriptionPipeline
    registry: CallRegistry
    calls: Calls
    tokens: StreamTokens
    # Recorded in the Store as the holder of this process's calls.
    owner: str
    owns_asr: bool = True
    # The ingests this process serves; None where it does not.
    gateway: TwilioGateway | None = None
    connect: ConnectIngest | None = None
    siprec: SiprecGateway | None = None
    # Local mode delivers webhooks in-process (in AWS: the webhook Lambda, off the bus).
    dispatcher: WebhookDispatcher | None = None
    # Set by stop_taking_calls(): the process takes no new calls (it is stopping, or its
    # deployment was replaced).
    draining: bool = False
    # The Amazon Connect calls being handed to other readers while draining.
    handing_over: asyncio.Task[None] | None = None
    # Interim results of the calls that ask for them (None: this process has none).
    interims: InterimDecoder | None = None

    @classmethod
    def compose(
        cls,
        settings: Settings,
        adapters: Adapters,
        *,
        ingests: Iterable[Ingest],
        owner: str,
        asr: AsrEngine | None = None,
        vad_factory: VadFactory = SileroVad,
        dispatcher: WebhookDispatcher | None = None,
        live_feed: LiveFeed | None = None,
    ) -> Self:
        """The core on ``adapters``, and the ``ingests`` this process serves on it.
        ``live_feed``: where interim results go, for a process that has live viewers; they
        are decoded only on an engine that can put finals first (in-process Whisper, or the
        remote GPU workers' client)."""
        serves = set(ingests)
        tokens = StreamTokens(
            adapters.secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key),
            settings.stream_token_ttl_s,
        )
        owns_asr = asr is None
        asr = asr or make_asr_engine(settings.asr)
        registry = CallRegistry()
        bus: EventBus = adapters.bus
        if adapters.live is not None:
            # Viewers outside the process (AWS): calls' starts and ends from the registry,
            # finals as they are published.
            live_feed = LiveFeed(adapters.live)
            registry.watch(live_feed)
            bus = BusWithLiveCopy(bus, live_feed)
        pipeline = TranscriptionPipeline(
            asr, adapters.store, bus, retention_s=settings.message_retention_days * DAY_S
        )
        interims = (
            InterimDecoder(asr, live_feed, settings.interim)
            if live_feed is not None and isinstance(asr, InterimCapableEngine)
            else None
        )
        calls = Calls(
            CallServices(
                store=adapters.store,
                pipeline=pipeline,
                endpointing=settings.endpointing,
                owner=owner,
                recordings=adapters.recordings,
                vad_factory=vad_factory,
                interims=interims,
            ),
            registry,
        )
        runtime = cls(
            settings,
            adapters,
            asr,
            pipeline,
            registry,
            calls,
            tokens,
            owner,
            owns_asr=owns_asr,
            dispatcher=dispatcher,
            interims=interims,
        )
        if Ingest.TWILIO in serves:
            runtime.gateway = TwilioGateway(
                GatewayServices(
                    store=adapters.store,
                    tokens=tokens,
                    calls=calls,
                    intake=settings.twilio,
                    max_frame_bytes=settings.max_ws_frame_bytes,
                    start_timeout_s=settings.limits.twilio_start_timeout_s,
                )
            )
        if Ingest.AMAZON_CONNECT in serves:
            runtime.connect = ConnectIngest(
                calls=calls,
                settings=settings.connect,
                # boto3 is imported only when a tenant's first Connect call starts.
                sources=BotoMediaSources(adapters.store, settings.connect),
            )
        if Ingest.SIPREC in serves:
            runtime.siprec = SiprecGateway(
                SiprecServices(
                    calls=calls,
                    settings=settings.siprec,
                    store=adapters.store,
                    host=settings.host,
                )
            )
        return runtime

    @property
    def store(self) -> Store:
        return self.adapters.store

    @property
    def secrets(self) -> Secrets:
        return self.adapters.secrets

    @property
    def blobs(self) -> BlobStore:
        return self.adapters.blobs

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

    async def start(self) -> None:
        """Before serving: the engine warmed up, the SIPREC listener open."""
        await self.warm_up()
        if self.siprec is not None:
            await self.siprec.start()

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Jobs that run while the process serves (none in the core)."""
        return []

    def why_not_ready(self) -> str | None:
        """Why this process should be given no new call now, or None: what a load balancer's
        readiness check hears (liveness is separate: a draining process is alive)."""
        if self.draining:
            return "draining"
        if self.siprec is not None:
            return self.siprec.why_no_new_calls()
        return None

    def stop_taking_calls(self) -> None:
        """From now on this process is not ready and takes no new calls; live ones go on.
        SIPREC refuses new INVITEs; the Twilio gateway refuses new streams once its load
        balancer has had time to see it unready (``twilio.unready_grace_s``); Amazon Connect
        calls are handed to other readers. Runs on the event loop."""
        if self.draining:
            return
        self.draining = True
        if self.siprec is not None:
            self.siprec.begin_draining()
        if self.gateway is not None:
            self.gateway.begin_draining(self.settings.twilio.unready_grace_s)
        if self.connect is not None:
            self.connect.begin_draining()
            self.handing_over = asyncio.get_running_loop().create_task(
                self.connect.hand_over_calls()
            )

    async def drain(self, timeout_s: float) -> None:
        """The process is stopping: take no new calls (none at all from now), hand Amazon
        Connect calls over, then wait (up to ``timeout_s``) for the live calls to end by
        themselves; the shutdown that follows completes whatever is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self.connect is not None:
            self.connect.handover_deadline = deadline
        self.stop_taking_calls()
        if self.gateway is not None:
            # The load balancer deregistered this task before ECS stopped it.
            self.gateway.begin_draining(0.0)
        while len(self.registry) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.handing_over is not None:
            # A handover under way ends within its own bounds (it starts none this late).
            await self.handing_over
        log.info("drained: %d live calls left to complete", len(self.registry))

    def liveness(self) -> dict[str, Any]:
        """What anyone may see (load balancers, container health checks): no call details."""
        return {"status": "ok", "version": SERVER_VERSION, "liveCalls": len(self.registry)}

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """The server's counters, and the details of ``tenant``'s own live calls (every
        tenant's when None: for callers inside this process)."""
        connect = self.connect.stats() if self.connect else None
        if connect is not None and tenant is not None:
            connect["readers"] = [r for r in connect["readers"] if r.get("tenant") == tenant]
        gateway = self.gateway
        remote_workers = getattr(self.asr, "worker_counters", None)
        return {
            **self.liveness(),
            "twilioStreams": {
                "opened": gateway.streams_opened,
                "rejected": gateway.streams_rejected,
                "timedOut": gateway.streams_timed_out,
                # Streams read more slowly for running far ahead of real time (a flood).
                "paced": gateway.streams_paced,
                # Refused while draining (closed at once with 1013).
                "refusedDraining": gateway.streams_refused_draining,
            }
            if gateway
            else None,
            "siprec": self.siprec.snapshot() if self.siprec else None,
            "asr": {
                **self.pipeline.stats.as_dict(),
                # Shortened-window decodes that looked broken and were done again in 30 s.
                "fullWindowRetries": getattr(self.asr, "full_window_retries", 0),
                # Loops that even the full window gave, cut back to one occurrence.
                "loopsCut": getattr(self.asr, "loops_cut", 0),
                # Decodes that only copied their call vocabulary's prompt, done again without.
                "promptEchoes": getattr(self.asr, "prompt_echoes", 0),
                # A remote ASR service's workers and what became of the requests sent to them.
                "remoteWorkers": remote_workers() if remote_workers else None,
                # Interim results: decoded, published, shed for want of an idle worker.
                "interim": self.interims.stats.as_dict() if self.interims else None,
                # Custom vocabularies: tenants' not read at a start, terms over the bounds.
                "vocabulary": self.calls.services.vocabulary_stats.as_dict(),
            },
            "amazonConnect": connect,
            "delivery": self.dispatcher.as_dict() if self.dispatcher else None,
            "publishing": {
                # Persisted messages the bus would not take: each is a recorded delivery failure.
                "failed": self.pipeline.publish_failures,
                # The AWS bus's best-effort copies to EventBridge (None where there are none).
                "fanOut": bus.stats.as_dict()
                if isinstance(bus := self.adapters.bus, DeliveryWithFanOut)
                else None,
            },
            # Events posted to the live event stream's viewers (AWS; None where none).
            "live": {**live.stats.as_dict(), "pending": live.pending()}
            if (live := self.adapters.live) is not None
            else None,
        }

    async def shutdown(self) -> None:
        """Finish open utterances, deliver what is pending, then release resources."""
        if self.siprec is not None:
            await self.siprec.stop()  # no new sessions; buffered RTP goes into the calls
        await self.registry.complete_all()
        if self.connect is not None:
            await self.connect.close()
        if self.adapters.live is not None:
            # The calls' ends just published reach their viewers (bounded).
            await asyncio.to_thread(self.adapters.live.close, LIVE_CLOSE_TIMEOUT_S)
        # The last messages are published; what the bus still has in flight (the AWS
        # fan-out's copies) gets its bounded time before anything is closed.
        await self.adapters.bus.close()
        if self.dispatcher is not None:
            await self.dispatcher.drain(DRAIN_TIMEOUT_S)
            await self.dispatcher.close()
        if self.owns_asr:
            await self.asr.close()
        self.store.close()
