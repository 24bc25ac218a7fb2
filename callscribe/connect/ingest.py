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

A reader that stops (scale-in, a deployment) hands its calls over instead of completing them
(:meth:`ConnectIngest.hand_over_calls`). Media is in KVS, so another reader can continue a call
from the fragment after the last one this reader processed: the draining reader stops reading
at a fragment's end, preferably one where nobody is mid-word; the utterances open there end on
it (transcribed and delivered, numbered before the next reader numbers its own); it records the
:class:`HandoverPoint` in the call's record and asks another reader (``CallHandover``) to
continue, which connects to the stream after that fragment and becomes the call's owner. Every
fragment's audio is taken by exactly one reader: nothing is lost or transcribed twice. When no
reader takes the call, this one reads on from the same point and the call ends as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from callscribe.calls import COMPLETE_WAIT_S, Calls, CallServices, CallSession
from callscribe.config import ConnectSettings
from callscribe.connect.media import (
    AGENT_TRACK,
    CHANNELS,
    CUSTOMER_TRACK,
    AudioReceived,
    ConnectMediaDemuxer,
    ContactChanged,
    FragmentCompleted,
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
from callscribe.control import CallHandover, NotTakingCalls
from callscribe.model import (
    AmazonConnectParams,
    AutotranscribeResult,
    CallError,
    ErrorCode,
    Role,
    StartRequest,
)
from callscribe.store.base import CallKey, CallStatus, Store

log = logging.getLogger(__name__)

CHANNEL_ROLES = {CUSTOMER_TRACK: Role.CUSTOMER, AGENT_TRACK: Role.AGENT}
# The call record's params: what a call keeps for whichever reader holds it next.
PARAMS_KEY = "amazonConnect"
HANDOVER_KEY = "handover"
# Fragments a handed-over call remembers as taken (the demuxer remembers as many).
FRAGMENT_MEMORY = 64
# A cut waits for a fragment end where every speaker has paused at least this long.
HANDOVER_PAUSE_MS = 300
# A cut that finds no fragment end this long after its quiet wait is given up (a stalled stream).
CUT_GRACE_S = 10.0
# Time a handover needs besides its quiet wait: the next reader's answer (it connects to the
# stream first) and the Store's writes. A draining reader with less left tries no more.
HANDOVER_RESERVE_S = 25.0
# Cuts a call may be given: one that no reader took this often stays here.
MAX_HANDOVER_ATTEMPTS = 3
# Between rounds of handovers, for calls no reader took (the new tasks of a deployment may
# still be starting).
HANDOVER_RETRY_S = 10.0
# Calls handed over at the same time: each waits for its own pause, but the transcription of the
# utterances open at the cuts and the next readers' GetMedia connects come in bursts.
HANDOVERS_AT_ONCE = 16
# The call's request lock (the API's): held from the cut to the next reader's answer, so no
# start or stop meets a call between two readers (they get 409-202 and are retried).
HANDOVER_LOCK_TTL_S = 120.0
HANDOVER_LOCK_WAIT_S = 10.0
# The next reader gives up a handover it could not begin within this (the giving reader, whose
# request has timed out by then, reads on itself).
RESUME_BUDGET_S = 15.0


class MediaSources(Protocol):
    def for_tenant(self, tenant: str) -> MediaSource:
        """Blocking; CallError when the tenant cannot use Amazon Connect."""
        ...


def selector_for(params: AmazonConnectParams) -> StartSelector:
    if params.startSelectorType == "FRAGMENT_NUMBER":
        return StartSelector("FRAGMENT_NUMBER", params.afterFragmentNumber)
    return StartSelector("NOW")


@dataclass(frozen=True)
class ChannelPoint:
    position: int  # the participant stream's position (8 kHz samples on the call's timeline)
    timeline_end: int | None  # where the media timeline placed the channel's audio up to
    audio_bytes: int
    transcripts: int


@dataclass(frozen=True)
class HandoverPoint:
    """Where a call handed over stands: recorded in its record by the giving reader, read by
    the one that continues it. ``fragments`` are those whose audio the call has taken, the last
    one processed whole last: the next reader reads *at* it and takes nothing from it or any
    other of them; ``selector`` is where to read when none was taken yet."""

    stream_arn: str
    selector: StartSelector
    contact_id: str | None
    fragments: tuple[str, ...]
    transcribing: bool
    next_message_seq: int
    connected_for_s: float
    channels: dict[str, ChannelPoint] = field(default_factory=dict)

    @property
    def start(self) -> StartSelector:
        if self.fragments:
            return StartSelector("FRAGMENT_NUMBER", self.fragments[-1])
        return self.selector

    def demuxer(self) -> ConnectMediaDemuxer | None:
        """What the next reader knows of the stream (None: nothing was taken)."""
        if not self.fragments:
            return None
        return ConnectMediaDemuxer.resuming_after(self.fragments, self.contact_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "streamArn": self.stream_arn,
            "selector": {"kind": self.selector.kind, "fragment": self.selector.fragment_number},
            "contactId": self.contact_id,
            "fragments": list(self.fragments),
            "transcribing": self.transcribing,
            "nextMessageSeq": self.next_message_seq,
            "connectedForS": self.connected_for_s,
            "channels": {
                channel: {
                    "position": point.position,
                    "timelineEnd": point.timeline_end,
                    "audioBytes": point.audio_bytes,
                    "transcripts": point.transcripts,
                }
                for channel, point in self.channels.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HandoverPoint:
        selector = data["selector"]
        return cls(
            stream_arn=str(data["streamArn"]),
            selector=StartSelector(selector["kind"], selector.get("fragment")),
            contact_id=data.get("contactId"),
            fragments=tuple(str(f) for f in data["fragments"]),
            transcribing=bool(data["transcribing"]),
            next_message_seq=int(data["nextMessageSeq"]),
            connected_for_s=float(data["connectedForS"]),
            channels={
                channel: ChannelPoint(
                    position=int(point["position"]),
                    timeline_end=None
                    if point.get("timelineEnd") is None
                    else int(point["timelineEnd"]),
                    audio_bytes=int(point["audioBytes"]),
                    transcripts=int(point["transcripts"]),
                )
                for channel, point in data["channels"].items()
            },
        )


class CallRequestLock:
    """The call's request lock in the Store (the API's, which answers 409-202 while another
    holds it), taken by a reader while it hands the call over, so no start or stop reaches a
    call between two readers."""

    def __init__(self, store: Store, key: CallKey, holder: str) -> None:
        self.store = store
        self.key = key
        self.holder = f"{holder} {uuid.uuid4()}"

    async def acquire(self) -> bool:
        """Waits out a request in flight (HANDOVER_LOCK_WAIT_S at most)."""
        deadline = time.monotonic() + HANDOVER_LOCK_WAIT_S
        while not await asyncio.to_thread(
            self.store.acquire_call_lock, self.key, self.holder, time.time(), HANDOVER_LOCK_TTL_S
        ):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def release(self) -> None:
        await asyncio.to_thread(self.store.release_call_lock, self.key, self.holder)


@dataclass
class _Cut:
    """A handover's request to the call's pump: stop after a fragment's end, one where nobody
    is mid-word unless ``deadline`` (event-loop time) has passed."""

    deadline: float
    at: str | None = None  # the fragment it stopped after


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
        # Fragments of the stream being read whose audio this call has taken, latest last
        # (the reader may have read further: a handover continues after these).
        self.taken_fragments: deque[str] = deque(maxlen=FRAGMENT_MEMORY)
        self._taken_from: str | None = None  # their stream
        self._cut: _Cut | None = None
        # Recorded in the call's record while the call is being handed over.
        self._handover: HandoverPoint | None = None
        # A call this reader took over: where the reader before it stopped (a later start on
        # the same stream reads on from there).
        self._resumed: HandoverPoint | None = None
        self.handed_over_to: str | None = None
        self.handover_attempts = 0

    async def start(self, request: StartRequest) -> AutotranscribeResult:
        params = self._startable(request)
        reader = await self.ingest.connect_reader(
            self.key,
            params.streamArn,
            selector_for(params),
            earlier=self._earlier_demuxer(params.streamArn),
        )
        return await self.start_reading(request, reader)

    def _earlier_demuxer(self, stream_arn: str) -> ConnectMediaDemuxer | None:
        """What was read of ``stream_arn`` for this call (by this reader, else by the one it
        took the call over from): a new read skips it."""
        if self._last_read is not None:
            return self._last_read.demuxer if self._last_read.stream_arn == stream_arn else None
        if self._resumed is not None and self._resumed.stream_arn == stream_arn:
            return self._resumed.demuxer()
        return None

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
        self._read_with(reader)
        log.info(
            "connect call %s: reading %s from %s",
            self.key,
            reader.stream_arn,
            reader.selector.as_request(),
        )
        return result

    def _read_with(self, reader: KvsStreamReader) -> None:
        if reader.stream_arn != self._taken_from:
            self.taken_fragments.clear()
            self._taken_from = reader.stream_arn
        self.reader = reader
        self._last_read = reader
        self.readers_opened += 1
        reader.start()
        self._pump = asyncio.get_running_loop().create_task(self._feed(reader))

    async def stop(self) -> AutotranscribeResult:
        if self.status is CallStatus.STREAMING:
            await self.stop_reading()
        result = await super().stop()
        self._complete_later()
        return result

    def _complete_later(self) -> None:
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().create_task(self._complete_when_idle())

    def ingest_params(self) -> dict[str, Any]:
        # A call reopened later (by this task or another) keeps one timeline.
        params: dict[str, Any] = {"timelineOriginMs": self.timeline.origin_ms}
        if self._handover is not None:
            params[HANDOVER_KEY] = self._handover.as_json()
        return {PARAMS_KEY: params}

    def restore_params(self, params: dict[str, Any]) -> None:
        origin = (params.get(PARAMS_KEY) or {}).get("timelineOriginMs")
        if origin is not None:
            self.timeline.origin_ms = float(origin)

    async def complete(self) -> None:
        self._cancel_idle()
        await self.stop_reading()
        await super().complete()
        self.ingest.forget(self)

    # media --------------------------------------------------------------------------------------

    async def _feed(self, reader: KvsStreamReader) -> None:
        """Apply what the reader read, in order, until it finishes (or a handover cuts)."""
        while True:
            batch = await reader.next_batch()
            for item in batch:
                if isinstance(item, AudioReceived):
                    at = self.timeline.place(item.channel, item.time_ms, len(item.pcm16))
                    self.audio(item.channel, item.pcm16, at)
                elif isinstance(item, FragmentCompleted):
                    if item.fragment_number is not None:
                        self.taken_fragments.append(item.fragment_number)
                    if self._cut_here(item):
                        # The rest of this batch, and whatever the reader read beyond it, is
                        # read again by whoever continues the call.
                        return
                elif isinstance(item, ContactChanged):
                    log.info(
                        "connect call %s: the stream moved on to contact %s", self.key, item.found
                    )
                elif isinstance(item, StreamFailed):
                    log.warning("connect call %s: %s", self.key, item.reason)
                elif isinstance(item, ReaderFinished):
                    self._reader_finished(reader, item)
                    return

    def _cut_here(self, fragment: FragmentCompleted) -> bool:
        cut = self._cut
        if cut is None or fragment.fragment_number is None:
            return False
        mid_speech = any(s.mid_speech(HANDOVER_PAUSE_MS) for s in self.streams.values())
        if mid_speech and asyncio.get_running_loop().time() < cut.deadline:
            return False
        cut.at = fragment.fragment_number
        return True

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

    # handing over (this reader is stopping) ---------------------------------------------------

    @property
    def can_be_handed_over(self) -> bool:
        return (
            self.status in (CallStatus.STREAMING, CallStatus.STOPPED)
            and not self.closing
            and self.handed_over_to is None
            and self.handover_attempts < MAX_HANDOVER_ATTEMPTS
            and (self.status is CallStatus.STOPPED or self.reader is not None)
        )

    async def hand_over(
        self, handover: CallHandover, quiet_wait_s: float, lock: CallRequestLock
    ) -> bool:
        """Give this call to another reader. While transcribing: stop reading at a fragment's
        end (within ``quiet_wait_s``, one where nobody is mid-word), finish the utterances open
        there, record where the call stands and ask another reader to continue after that
        fragment. True once another holds it; False when it stays here (none took it: it reads
        on from the same point; or the media ended first: the call ends as it always does).

        The call's request lock is taken once it is cut, not while the cut waits for a pause,
        so a start or stop meets the handover itself only (409-202 for that long)."""
        if not self.can_be_handed_over:
            return False
        self.handover_attempts += 1
        self._cancel_idle()
        cut = self.status is CallStatus.STREAMING
        if cut and not await self._cut_at_fragment_end(quiet_wait_s):
            return False
        if not await lock.acquire():
            log.warning("connect call %s: its request lock stays taken; not handed over", self.key)
            await self._go_on_here()
            return False
        try:
            return await self._hand_over_now(handover)
        except Exception:
            log.exception("connect call %s: handover failed; going on here", self.key)
            self._handover = None
            await self._go_on_here()
            return False
        finally:
            await lock.release()

    async def _hand_over_now(self, handover: CallHandover) -> bool:
        # A stop may have come between the cut and the lock: the call moves as it is now.
        transcribing = self.status is CallStatus.STREAMING
        if transcribing:
            # What was said up to the cut is this reader's: transcribed, numbered and
            # delivered before the next reader numbers anything of its own.
            self._stop_transcribing()
            await self.wait_for_transcripts(COMPLETE_WAIT_S)
        self._handover = self._handover_point(transcribing)
        await self._save(self.status)
        try:
            new_owner = await handover.hand_over(self.key)
        except CallError as exc:
            taken_by = await self._taken_by_another()
            if taken_by is None:
                log.warning("connect call %s: no reader took it (%s); reading on", self.key, exc)
                self._handover = None
                await asyncio.to_thread(
                    self.store.update_call, self.key, owner=self.owner, updated_at=time.time()
                )
                await self._save(self.status)
                await self._go_on_here()
                return False
            new_owner = taken_by  # it took the call; its answer was lost
        self.handed_over_to = new_owner
        self._handover = None
        # This reader's part of the recording is stored; the next reader records its own.
        await self._store_recording()
        self.ingest.forget(self)
        log.info(
            "connect call %s: handed over to %s after fragment %s",
            self.key,
            new_owner,
            self.taken_fragments[-1] if self.taken_fragments else None,
        )
        return True

    async def _cut_at_fragment_end(self, quiet_wait_s: float) -> bool:
        reader, pump = self.reader, self._pump
        if reader is None or pump is None:
            return False
        loop = asyncio.get_running_loop()
        self._cut = _Cut(deadline=loop.time() + quiet_wait_s)
        try:
            await asyncio.wait({pump}, timeout=quiet_wait_s + CUT_GRACE_S)
        finally:
            cut, self._cut = self._cut, None
        if cut.at is None:
            # The media ended first (the call completes as it does), or no fragment came.
            return False
        self.reader = self._pump = None
        await reader.stop_discarding()
        self.ingest.reader_finished(
            reader, ReaderFinished(ReaderEnd.HANDED_OVER, f"after fragment {cut.at}")
        )
        return True

    def _handover_point(self, transcribing: bool) -> HandoverPoint:
        reader, resumed = self._last_read, self._resumed
        if reader is not None:
            stream_arn, selector = reader.stream_arn, reader.selector
            contact_id = reader.demuxer.contact_id
        else:
            # Taken over while stopped, and not read here since.
            assert resumed is not None
            stream_arn, selector, contact_id = (
                resumed.stream_arn,
                resumed.selector,
                resumed.contact_id,
            )
        now = time.monotonic()
        return HandoverPoint(
            stream_arn=stream_arn,
            selector=selector,
            contact_id=contact_id,
            fragments=tuple(self.taken_fragments),
            transcribing=transcribing,
            next_message_seq=self._messages.next_seq,
            connected_for_s=now - self.connected_at,
            channels={
                channel: ChannelPoint(
                    position=stream.position,
                    timeline_end=self.timeline.channel_end(channel),
                    audio_bytes=stream.total_audio_bytes,
                    transcripts=stream.transcripts,
                )
                for channel, stream in self.streams.items()
            },
        )

    async def _taken_by_another(self) -> str | None:
        """After a failed handover: whether another reader holds the call all the same."""
        record = await asyncio.to_thread(self.store.get_call, self.key)
        if record is None or record.status is CallStatus.COMPLETED or record.owner == self.owner:
            return None
        return record.owner

    async def _go_on_here(self) -> None:
        """The call stays on this reader: a transcribing call reads on from the fragment after
        the last one taken, a stopped one waits for a start (or its idle end) as before."""
        if self.status is CallStatus.STOPPED:
            self._complete_later()
            return
        if self.status is not CallStatus.STREAMING or self.reader is not None:
            return
        point = self._handover_point(transcribing=True)
        try:
            reader = await self.ingest.connect_reader(
                self.key, point.stream_arn, point.start, earlier=point.demuxer()
            )
        except CallError as exc:
            log.warning("connect call %s: cannot read on (%s); completing", self.key, exc.message)
            self._completion = asyncio.get_running_loop().create_task(self.complete())
            return
        for stream in self.streams.values():
            if stream.role is not None and not stream.transcribing:
                stream.set_transcribing(True)
        self._read_with(reader)

    def continue_from(self, point: HandoverPoint) -> None:
        """Take over where the reader that handed the call over stopped: the timeline, the
        counts its summaries report and the message numbers go on."""
        self._resumed = point
        self.taken_fragments.extend(point.fragments)
        self._taken_from = point.stream_arn
        self.connected_at = time.monotonic() - point.connected_for_s
        self._messages.next_seq = max(self._messages.next_seq, point.next_message_seq)
        for channel, state in point.channels.items():
            stream = self.streams.get(channel)
            if stream is None:
                continue
            stream.position = state.position
            stream.total_audio_bytes = state.audio_bytes
            stream.transcripts = state.transcripts
            if state.timeline_end is not None:
                self.timeline.continue_channel(channel, state.timeline_end)

    async def hold_stopped(self, request: StartRequest) -> AutotranscribeResult:
        """A call taken over while transcription was stopped: held here until a start reads
        it again, completed if none comes in time (as on the reader that gave it)."""
        self.request = request
        self.status = CallStatus.STOPPED
        await self._save(CallStatus.STOPPED)
        self._complete_later()
        return self._result(summary=False)

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
        handover: CallHandover | None = None,
    ) -> None:
        self.call_factory = calls
        self.store = calls.services.store
        self.owner = calls.services.owner
        self.settings = settings
        self.sources = sources
        # Where a draining process gives its calls (the other KVS reader tasks); None: they
        # end here (local mode).
        self.handover = handover
        self.calls: dict[CallKey, ConnectCall] = {}
        self.readers_opened = 0
        self.readers_failed_to_open = 0
        self.readers_finished: dict[str, int] = {}
        self.max_millis_behind_now: int | None = None
        self.draining = False
        # Handovers stop being tried this close to it (event-loop time; None: no limit).
        self.handover_deadline: float | None = None
        self.handovers = {"given": 0, "kept": 0, "taken": 0}

    # taking calls ------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether this process takes new calls (opened or handed over)."""
        return not self.draining

    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise NotTakingCalls("this KVS reader is draining: it takes no new calls")

    async def open(self, key: CallKey, request: StartRequest) -> AutotranscribeResult:
        """start-streaming for a call this process may not hold yet: create it (or take it
        over, when it was completed or its reader task went away) and start it."""
        self._refuse_when_draining()
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
        reader = await self.connect_reader(key, params.streamArn, selector_for(params))
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

    async def resume(self, key: CallKey) -> AutotranscribeResult:
        """Continue a call another reader handed over, from the point it recorded: connect to
        the stream after its last fragment, then hold the call (the Store names this process
        its owner from then on)."""
        began = time.monotonic()
        self._refuse_when_draining()
        held = self.calls.get(key)
        if held is not None and held.status is not CallStatus.COMPLETED:
            raise CallError(ErrorCode.ALREADY, f"call {key.guid} is held here already")
        record = await asyncio.to_thread(self.store.get_call, key)
        handed = ((record.params.get(PARAMS_KEY) or {}) if record is not None else {}).get(
            HANDOVER_KEY
        )
        if record is None or record.status is CallStatus.COMPLETED or handed is None:
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {key.guid} is not being handed over")
        point = HandoverPoint.from_json(handed)
        request = StartRequest.model_validate(record.params["request"])
        reader = None
        if point.transcribing:
            reader = await self.connect_reader(
                key, point.stream_arn, point.start, earlier=point.demuxer()
            )
        if time.monotonic() - began > RESUME_BUDGET_S:
            # The giving reader has stopped waiting for this answer and reads on itself.
            if reader is not None:
                await reader.stop()
            raise CallError(ErrorCode.INTERNAL, f"call {key.guid}: the handover took too long")
        previous_owner = record.owner
        try:
            call = await self.call_factory.open(ConnectCall, key, ingest=self)
        except BaseException:
            if reader is not None:
                await reader.stop()
            raise
        self.calls[key] = call
        call.continue_from(point)
        try:
            if reader is not None:
                result = await call.start_reading(request, reader)
            else:
                result = await call.hold_stopped(request)
        except BaseException:
            # The reader that gave it reads on: it is the owner again.
            self.forget(call)
            await asyncio.to_thread(
                self.store.update_call, key, owner=previous_owner, updated_at=time.time()
            )
            raise
        self.handovers["taken"] += 1
        log.info("connect call %s: taken over from %s at %s", key, previous_owner, point.start)
        return result

    async def connect_reader(
        self,
        key: CallKey,
        stream_arn: str,
        selector: StartSelector,
        earlier: ConnectMediaDemuxer | None = None,
    ) -> KvsStreamReader:
        try:
            source = await asyncio.to_thread(self.sources.for_tenant, key.tenant)
            reader = KvsStreamReader(
                source,
                stream_arn,
                selector,
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

    # stopping: handing the calls over ----------------------------------------------------------

    def begin_draining(self) -> None:
        """Take no new call (open and resume answer NotTakingCalls); live ones go on."""
        if not self.draining:
            self.draining = True
            log.info("KVS reader draining: %d calls to hand over", len(self.calls))

    async def hand_over_calls(self) -> None:
        """Hand every call to other readers, in rounds until none is left here (a call no
        reader takes stays and is tried again next round) or ``handover_deadline`` is near."""
        handover = self.handover
        if handover is None:
            return
        gate = asyncio.Semaphore(HANDOVERS_AT_ONCE)

        async def hand_over_one(call: ConnectCall, quiet_wait_s: float) -> None:
            async with gate:
                lock = CallRequestLock(self.store, call.key, f"handover {self.owner}")
                given = await call.hand_over(handover, quiet_wait_s, lock)
            self.handovers["given" if given else "kept"] += 1

        while True:
            left = self._time_left()
            if left is not None and left < HANDOVER_RESERVE_S:
                return
            calls = [call for call in self.calls.values() if call.can_be_handed_over]
            if not calls:
                if not self.calls:
                    return
            elif await handover.available():
                quiet_wait_s = self.settings.handover_quiet_wait_s
                if left is not None:
                    quiet_wait_s = min(quiet_wait_s, left - HANDOVER_RESERVE_S)
                await asyncio.gather(*(hand_over_one(call, quiet_wait_s) for call in calls))
                if not self.calls:
                    return
            pause_s = HANDOVER_RETRY_S
            left = self._time_left()
            if left is not None:
                # The drain waits for this loop: it must not oversleep the drain's deadline.
                pause_s = min(pause_s, max(0.0, left - HANDOVER_RESERVE_S))
            await asyncio.sleep(pause_s)

    def _time_left(self) -> float | None:
        if self.handover_deadline is None:
            return None
        return self.handover_deadline - asyncio.get_running_loop().time()

    # bookkeeping -------------------------------------------------------------------------------

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
            # Calls this reader gave to others while draining, kept (none took them), and
            # took from draining readers.
            "handovers": dict(self.handovers),
            "readers": [call.reader_stats() for call in list(self.calls.values())[:100]],
            "at": time.time(),
        }

    async def close(self) -> None:
        """Stop every reader (the calls themselves are completed by the registry)."""
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await call.stop_reading()
