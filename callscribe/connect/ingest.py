"""Amazon Connect calls: created by start-streaming, fed by a KVS reader.

A Twilio or SIPREC call exists as soon as its media connects; a Connect contact's media sits in
Kinesis Video Streams until someone reads it, so here ``start-streaming`` itself creates the
call (:meth:`ConnectIngest.open`, the ``CallOpener`` of namespace ``amazonconnect``) and opens
a reader on the stream its ``amazonConnectParams`` name. ``stop-streaming`` pauses
transcription and stops reading; a later start (after a hold, a transfer to another flow) opens
a new reader from the selector it brings, on the same call and timeline. The call completes
when its stream ends on its own (the contact changed, the producer stopped, KVS failed), or
``stopped_call_timeout_s`` after a stop that no start followed.

The customer hears ``AUDIO_TO_CUSTOMER`` (the agent) and says ``AUDIO_FROM_CUSTOMER``: those
are the call's agent and customer channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from callscribe.calls import Calls, CallServices, CallSession
from callscribe.config import ConnectSettings
from callscribe.connect.media import (
    AGENT_TRACK,
    CHANNELS,
    CUSTOMER_TRACK,
    AudioReceived,
    ConnectMediaDemuxer,
    ContactChanged,
    MediaTimeline,
    StreamFailed,
)
from callscribe.connect.reader import (
    KvsAccessError,
    KvsStreamReader,
    MediaSource,
    ReaderEnd,
    ReaderFinished,
    StartSelector,
)
from callscribe.model import (
    AmazonConnectParams,
    AutotranscribeResult,
    CallError,
    ErrorCode,
    Role,
    StartRequest,
)
from callscribe.store.base import CallKey, CallStatus

log = logging.getLogger(__name__)

CHANNEL_ROLES = {CUSTOMER_TRACK: Role.CUSTOMER, AGENT_TRACK: Role.AGENT}


class MediaSources(Protocol):
    def for_tenant(self, tenant: str) -> MediaSource:
        """Blocking; CallError when the tenant cannot use Amazon Connect."""
        ...


def selector_for(params: AmazonConnectParams) -> StartSelector:
    if params.startSelectorType == "FRAGMENT_NUMBER":
        return StartSelector("FRAGMENT_NUMBER", params.afterFragmentNumber)
    return StartSelector("NOW")


class ConnectCall(CallSession):
    def __init__(self, key: CallKey, services: CallServices, ingest: ConnectIngest) -> None:
        super().__init__(key, services, channels=CHANNELS, channel_roles=CHANNEL_ROLES)
        self.ingest = ingest
        self.timeline = MediaTimeline()
        self.reader: KvsStreamReader | None = None
        self.readers_opened = 0
        self.ended: ReaderFinished | None = None
        self._last_read: KvsStreamReader | None = None  # what a later start continues from
        self._pump: asyncio.Task[None] | None = None
        self._idle: asyncio.Task[None] | None = None
        self._completion: asyncio.Task[None] | None = None

    async def start(self, request: StartRequest) -> AutotranscribeResult:
        params = self._startable(request)
        earlier = self._last_read
        same_stream = earlier is not None and earlier.stream_arn == params.streamArn
        reader = await self.ingest.connect_reader(
            self.key, params, earlier=earlier.demuxer if same_stream and earlier else None
        )
        return await self.start_reading(request, reader)

    def _startable(self, request: StartRequest) -> AmazonConnectParams:
        if self.status is CallStatus.COMPLETED:
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {self.key.guid} has ended")
        if self.status is CallStatus.STREAMING:
            raise CallError(ErrorCode.ALREADY, "transcription already started")
        if request.amazonConnectParams is None:
            raise CallError(
                ErrorCode.TRANSCRIPTION_PARAMETER,
                "namespace amazonconnect needs amazonConnectParams",
            )
        return request.amazonConnectParams

    async def start_reading(
        self, request: StartRequest, reader: KvsStreamReader
    ) -> AutotranscribeResult:
        """Start transcription with a reader already connected, then let it read."""
        try:
            self._startable(request)
            result = await super().start(request)
        except BaseException:
            await reader.stop()
            raise
        self._cancel_idle()
        self.reader = reader
        self._last_read = reader
        self.readers_opened += 1
        reader.start()
        self._pump = asyncio.get_running_loop().create_task(self._feed(reader))
        log.info(
            "connect call %s: reading %s from %s",
            self.key,
            reader.stream_arn,
            reader.selector.as_request(),
        )
        return result

    async def stop(self) -> AutotranscribeResult:
        if self.status is CallStatus.STREAMING:
            await self.stop_reading()
        result = await super().stop()
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().create_task(self._complete_when_idle())
        return result

    def ingest_params(self) -> dict[str, Any]:
        # A call reopened later (by this task or another) keeps one timeline.
        return {"amazonConnect": {"timelineOriginMs": self.timeline.origin_ms}}

    def restore_params(self, params: dict[str, Any]) -> None:
        origin = (params.get("amazonConnect") or {}).get("timelineOriginMs")
        if origin is not None:
            self.timeline.origin_ms = float(origin)

    async def complete(self) -> None:
        self._cancel_idle()
        await self.stop_reading()
        await super().complete()
        self.ingest.forget(self)

    # media --------------------------------------------------------------------------------------

    async def _feed(self, reader: KvsStreamReader) -> None:
        """Apply what the reader read, in order, until it finishes."""
        while True:
            batch = await reader.next_batch()
            for item in batch:
                if isinstance(item, AudioReceived):
                    at = self.timeline.place(item.channel, item.time_ms, len(item.pcm16))
                    self.audio(item.channel, item.pcm16, at)
                elif isinstance(item, ContactChanged):
                    log.info(
                        "connect call %s: the stream moved on to contact %s", self.key, item.found
                    )
                elif isinstance(item, StreamFailed):
                    log.warning("connect call %s: %s", self.key, item.reason)
                elif isinstance(item, ReaderFinished):
                    self._reader_finished(reader, item)
                    return

    def _reader_finished(self, reader: KvsStreamReader, end: ReaderFinished) -> None:
        self.ingest.reader_finished(reader, end)
        if end.reason is ReaderEnd.STOPPED or self.reader is not reader:
            return
        # The media ended on its own: the call is over, as when a Twilio stream stops.
        self.reader = None
        self._pump = None
        self.ended = end
        self._completion = asyncio.get_running_loop().create_task(self.complete())

    async def stop_reading(self) -> None:
        """Stop the reader and apply what it read before it stopped."""
        reader, pump = self.reader, self._pump
        self.reader = self._pump = None
        if reader is not None:
            await reader.stop()
        if pump is not None and pump is not asyncio.current_task():
            await pump  # the audio read before the stop is applied before the summary

    async def _complete_when_idle(self) -> None:
        await asyncio.sleep(self.ingest.settings.stopped_call_timeout_s)
        self._idle = None
        if self.status is CallStatus.STOPPED:
            log.info("connect call %s: no start since the stop; completing", self.key)
            await self.complete()

    def _cancel_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle is not asyncio.current_task():
            idle.cancel()

    def reader_stats(self) -> dict[str, Any]:
        reader = self.reader
        return {
            "guid": self.key.guid,
            "tenant": self.key.tenant,
            "status": self.status.value,
            "readers": self.readers_opened,
            **(reader.stats.as_dict() if reader is not None else {}),
        }


class ConnectIngest:
    """The calls of namespace ``amazonconnect`` held by this process and their readers."""

    def __init__(
        self,
        *,
        calls: Calls,
        settings: ConnectSettings,
        sources: MediaSources,
    ) -> None:
        self.call_factory = calls
        self.store = calls.services.store
        self.owner = calls.services.owner
        self.settings = settings
        self.sources = sources
        self.calls: dict[CallKey, ConnectCall] = {}
        self.readers_opened = 0
        self.readers_failed_to_open = 0
        self.readers_finished: dict[str, int] = {}
        self.max_millis_behind_now: int | None = None

    async def open(self, key: CallKey, request: StartRequest) -> AutotranscribeResult:
        """start-streaming for a call this process may not hold yet: create it (or take it
        over, when it was completed or its reader task went away) and start it."""
        existing = self.calls.get(key)
        if existing is not None and existing.status is not CallStatus.COMPLETED:
            result = await existing.start(request)
            # The API came here because the Store named another owner (or none it could reach).
            await asyncio.to_thread(
                self.store.update_call, key, owner=self.owner, updated_at=time.time()
            )
            return result
        params = request.amazonConnectParams
        if params is None:
            raise CallError(
                ErrorCode.TRANSCRIPTION_PARAMETER,
                "namespace amazonconnect needs amazonConnectParams",
            )
        known = await asyncio.to_thread(self.store.get_call, key)
        if known is None:
            for role, external_id in (
                (Role.CUSTOMER, request.customerId),
                (Role.AGENT, request.agentId),
            ):
                if external_id is None:
                    raise CallError(
                        ErrorCode.PARAMETER,
                        f"{role.value}Id is required on the first start-streaming of a call",
                    )
        # The reader connects before the call is created: a stream that this tenant cannot
        # read leaves no call behind.
        reader = await self.connect_reader(key, params)
        try:
            call = await self.call_factory.open(ConnectCall, key, ingest=self)
        except BaseException:
            await reader.stop()
            raise
        self.calls[key] = call
        try:
            return await call.start_reading(request, reader)
        except BaseException:
            await call.complete()
            raise

    async def connect_reader(
        self,
        key: CallKey,
        params: AmazonConnectParams,
        earlier: ConnectMediaDemuxer | None = None,
    ) -> KvsStreamReader:
        try:
            source = await asyncio.to_thread(self.sources.for_tenant, key.tenant)
            reader = KvsStreamReader(
                source,
                params.streamArn,
                selector_for(params),
                self.settings,
                label=f"{key.guid}",
                earlier=earlier,
            )
            await reader.connect()
        except CallError:
            self.readers_failed_to_open += 1
            raise
        except KvsAccessError as exc:
            self.readers_failed_to_open += 1
            raise CallError(ErrorCode.TRANSCRIPTION_PARAMETER, str(exc)) from None
        except Exception as exc:
            self.readers_failed_to_open += 1
            log.exception("connect call %s: GetMedia failed", key)
            raise CallError(
                ErrorCode.INTERNAL, f"Kinesis Video Streams did not answer: {exc}"
            ) from None
        self.readers_opened += 1
        return reader

    def reader_finished(self, reader: KvsStreamReader, end: ReaderFinished) -> None:
        self.readers_finished[end.reason.value] = self.readers_finished.get(end.reason.value, 0) + 1
        stats = reader.stats
        if stats.max_millis_behind_now is not None:
            self.max_millis_behind_now = max(
                stats.max_millis_behind_now, self.max_millis_behind_now or 0
            )
        log.info(
            "reader %s finished (%s: %s): %d fragments, %d bytes, %d reconnects, "
            "millis-behind-now last %s max %s",
            reader.label,
            end.reason.value,
            end.detail,
            stats.fragments,
            stats.bytes,
            stats.reconnects,
            stats.millis_behind_now,
            stats.max_millis_behind_now,
        )

    def forget(self, call: ConnectCall) -> None:
        if self.calls.get(call.key) is call:
            del self.calls[call.key]
        self.call_factory.forget(call)

    def stats(self) -> dict[str, Any]:
        live = [call for call in self.calls.values() if call.reader is not None]
        behind = [
            call.reader.stats.millis_behind_now
            for call in live
            if call.reader is not None and call.reader.stats.millis_behind_now is not None
        ]
        return {
            "calls": len(self.calls),
            "readersActive": len(live),
            "readersOpened": self.readers_opened,
            "readersFailedToOpen": self.readers_failed_to_open,
            "readersFinished": dict(self.readers_finished),
            "millisBehindNow": {
                "max": max(behind) if behind else None,
                "mean": round(sum(behind) / len(behind)) if behind else None,
                "maxEver": max(
                    [b for b in (*behind, self.max_millis_behind_now) if b is not None],
                    default=None,
                ),
            },
            "readers": [call.reader_stats() for call in list(self.calls.values())[:100]],
            "at": time.time(),
        }

    async def close(self) -> None:
        """Stop every reader (the calls themselves are completed by the registry)."""
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await call.stop_reading()
