"""A live call: one audio stream per participant, transcription switched on and off by the API.

Every ingest (Twilio, SIPREC, Amazon Connect) turns its source into a ``CallSession`` and feeds
16-bit PCM at 8 kHz per *channel* (a Twilio track, a SIPREC stream label, a KVS track). Which
channel is the customer and which the agent is decided by the ingest or by the start request
(Twilio's ``trackMap``). Audio is counted from the moment the source connects, but only
transcribed between start-streaming and stop-streaming.

Every ingest gets its calls from one ``Calls`` factory (construct, open in the Store, register
as live) on the process's ``CallServices``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from callscribe.audio import TELEPHONE_RATE, Upsampler
from callscribe.config import EndpointingSettings
from callscribe.endpointing import (
    Endpointer,
    OpenUtterance,
    SileroVad,
    SpeechProbability,
    Utterance,
)
from callscribe.interim import InterimDecoder, StreamInterims
from callscribe.model import (
    AutotranscribeResult,
    CallError,
    ErrorCode,
    ParticipantResult,
    Role,
    StartRequest,
    StreamSummary,
)
from callscribe.silencing import RedactedAudio, silences_recording, utterance_range
from callscribe.store.base import CallKey, CallRecord, CallStatus, Store
from callscribe.transcription import MessageSequence, Speaker, TranscriptionPipeline
from callscribe.vocabulary import merge_vocabulary

if TYPE_CHECKING:
    from callscribe.recording import CallRecorder, Recordings

log = logging.getLogger(__name__)

# A timestamp gap up to this long is filled with silence to keep the timeline; a longer jump
# (a source that paused) restarts the endpointer at the new position instead.
MAX_SILENCE_FILL_SAMPLES = TELEPHONE_RATE * 2
# How long stop-streaming waits for the last utterance's transcript so that the summary counts
# it (the transcript is delivered either way), and how long a hang-up waits before the call is
# marked complete.
STOP_WAIT_S = 3.0
COMPLETE_WAIT_S = 60.0
# The call record's params key under which a call that ended while transcribing keeps its summary
# for stop-streaming (see ``CallSession.summary_after_end``).
END_SUMMARY = "endSummary"

# Each participant stream gets a VAD of its own (it keeps state between chunks).
VadFactory = Callable[[], SpeechProbability]


@dataclass
class VocabularyStats:
    """What became of the custom vocabularies of the calls this process started."""

    # Starts whose tenant vocabulary could not be read (they went on with the call's terms).
    tenant_read_failures: int = 0
    # Tenant terms left out of a call's vocabulary, which the call's own filled.
    terms_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "tenantReadFailures": self.tenant_read_failures,
            "termsDropped": self.terms_dropped,
        }


@dataclass(frozen=True)
class CallServices:
    """What every call of a process shares."""

    store: Store
    pipeline: TranscriptionPipeline
    endpointing: EndpointingSettings
    # Recorded in the Store as the holder of the process's calls (the control API finds it so).
    owner: str = "local"
    # Where a call's audio goes when its start request allows recording; None: not kept.
    recordings: Recordings | None = None
    vad_factory: VadFactory = SileroVad
    # Interim results for calls that ask for them; None: this process has none (no live
    # viewers here, or an engine that cannot put finals first).
    interims: InterimDecoder | None = None
    # Shown in /healthz (asr.vocabulary).
    vocabulary_stats: VocabularyStats = field(default_factory=VocabularyStats)


# An ingest's own rule for whether a call takes start/stop now (raises CallError to refuse).
Admission = Callable[["CallSession"], None]


class ParticipantStream:
    def __init__(self, channel: str, settings: EndpointingSettings, vad: SpeechProbability) -> None:
        self.channel = channel
        self.role: Role | None = None
        self.position = 0  # 8 kHz samples from the start of the call's audio
        self.total_audio_bytes = 0
        self.transcripts = 0
        self.transcribing = False
        self._settings = settings
        self._endpointer = Endpointer(settings, vad)
        self._upsampler = Upsampler()
        # This participant's interim results, while the call's start asks for them.
        self.interims: StreamInterims | None = None

    def push(self, pcm16: np.ndarray, at_sample: int | None = None) -> list[Utterance]:
        """Add audio received now; ``at_sample`` is where the source says it belongs."""
        self.total_audio_bytes += 2 * len(pcm16)
        finished: list[Utterance] = []
        if at_sample is not None and at_sample > self.position:
            gap = at_sample - self.position
            if gap <= MAX_SILENCE_FILL_SAMPLES:
                finished += self._advance(np.zeros(gap, dtype=np.int16))
            else:
                finished += self._restart(at_sample)
        finished += self._advance(pcm16)
        return finished

    def _advance(self, pcm16: np.ndarray) -> list[Utterance]:
        self.position += len(pcm16)
        if not self.transcribing:
            return []
        return self._endpointer.feed(self._upsampler.process(pcm16))

    def _restart(self, at_sample: int) -> list[Utterance]:
        finished = self.flush()
        self.position = at_sample
        self._reset_endpointer()
        return finished

    def _reset_endpointer(self) -> None:
        self._upsampler = Upsampler()
        self._endpointer.reset(self.position * 2)

    def set_transcribing(self, on: bool) -> list[Utterance]:
        if on == self.transcribing:
            return []
        if on:
            self._reset_endpointer()
            self.transcribing = True
            return []
        finished = self.flush()
        self.transcribing = False
        return finished

    def open_utterance(self) -> OpenUtterance | None:
        """The utterance being spoken now (None between utterances or when not transcribing)."""
        return self._endpointer.open_utterance() if self.transcribing else None

    def open_audio(self) -> np.ndarray:
        return self._endpointer.open_audio()

    def mid_speech(self, pause_ms: int) -> bool:
        """Whether a cut now would split a word (see ``Endpointer.speaking``)."""
        return self.transcribing and self._endpointer.speaking(pause_ms)

    def flush(self) -> list[Utterance]:
        if not self.transcribing:
            return []
        # The resampler's delay holds the last few ms given: they reach the endpointer before
        # it ends, so an utterance cut here (a stop, a hang-up, a handover to another reader
        # that takes the audio from here on) ends exactly where the audio did.
        finished = self._endpointer.feed(self._upsampler.drain())
        self._upsampler = Upsampler()
        utterance = self._endpointer.flush()
        return finished + ([utterance] if utterance else [])

    @property
    def audio_duration_ms(self) -> int:
        return self.total_audio_bytes * 1000 // (2 * TELEPHONE_RATE)


class CallSession:
    # When the media ends while transcription is on, a later stop-streaming answers with the
    # call's summary as it ended instead of 400-203. For sources whose media may end on its
    # own while the customer's stop is under way (a Twilio stream ends at hang-up, often just
    # before the integration's stop-streaming arrives).
    summary_after_end = False

    def __init__(
        self,
        key: CallKey,
        services: CallServices,
        channels: Iterable[str],
        channel_roles: dict[str, Role] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.key = key
        self.services = services
        self.pipeline = services.pipeline
        self.store = services.store
        self.owner = services.owner
        self._admission = admission
        self.streams = {channel: self._new_stream(channel) for channel in channels}
        self.channel_roles: dict[str, Role] = dict(channel_roles or {})
        self._apply_roles()
        self.status = CallStatus.CONNECTED
        # True while complete() finishes the last utterances (e.g. after a SIPREC BYE).
        self.closing = False
        self.connected_at = time.monotonic()
        self.request: StartRequest | None = None
        # What the speech recogniser is biased towards in the window the last start opened:
        # its vocabulary merged with the tenant's (callscribe.vocabulary).
        self.vocabulary: tuple[str, ...] = ()
        self.participants: dict[Role, dict[str, str]] = {}  # role -> externalId, streamId
        self._messages = MessageSequence()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        # Audio is kept only while transcription is on and its start allowed recording.
        self._recorder: CallRecorder | None = None
        self._recording = False
        # Per channel, how far the source's timestamps jumped since its last recorded chunk
        # (a jump during a hold must not become silence when recording resumes).
        self._skipped_since_recorded: dict[str, int] = {}
        # Audio counted when the media ended while transcribing (summary_after_end only), and
        # whether a stop-streaming has had that summary: only one stop gets it, as when live.
        self._audio_at_end: dict[str, int] | None = None
        self._ended_at = 0.0  # time.monotonic() when the media ended
        self._end_summary_claimed = False
        self._end_persisted = False
        # Orders a stop that claims the end summary against complete() persisting it.
        self._end_lock = asyncio.Lock()

    # lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Register the call in the Store (or take it over again after a reconnect)."""
        now = time.time()
        record = CallRecord(self.key, CallStatus.CONNECTED, self.owner, now, now)
        created = await asyncio.to_thread(self.store.create_call, record)
        if not created:
            existing = await asyncio.to_thread(self.store.get_call, self.key)
            if existing is not None:
                self.participants = {
                    Role(role): ids for role, ids in existing.params.get("participants", {}).items()
                }
                self.restore_params(existing.params)
            last = await asyncio.to_thread(self.store.last_message_seq, self.key)
            self._messages = MessageSequence(0 if last is None else last + 1)
            await asyncio.to_thread(
                self.store.update_call,
                self.key,
                status=CallStatus.CONNECTED,
                owner=self.owner,
                updated_at=now,
            )

    def ingest_params(self) -> dict[str, Any]:
        """What an ingest keeps in the call record beside the request (for a takeover)."""
        return {}

    def restore_params(self, params: dict[str, Any]) -> None:
        """Take back what ``ingest_params`` kept, when this process takes the call over."""

    def _new_stream(self, channel: str) -> ParticipantStream:
        return ParticipantStream(channel, self.services.endpointing, self.services.vad_factory())

    def _apply_roles(self) -> None:
        for channel, stream in self.streams.items():
            stream.role = self.channel_roles.get(channel)

    def add_channel(self, channel: str) -> None:
        """A stream that joined the call (a SIPREC re-INVITE adding a stream)."""
        if channel not in self.streams:
            self.streams[channel] = self._new_stream(channel)
            self._apply_roles()

    def assign_roles(self, channel_roles: dict[str, Role]) -> None:
        """Who each channel is, decided again by the ingest (new SIPREC metadata): a channel
        that gains a role while transcription is on starts being transcribed."""
        self.channel_roles = dict(channel_roles)
        self._apply_roles()
        for stream in self.streams.values():
            wanted = self.status is CallStatus.STREAMING and stream.role is not None
            for utterance in stream.set_transcribing(wanted):
                self._submit(stream, utterance)
        self._update_interims()

    def stream_for(self, role: Role) -> ParticipantStream | None:
        for stream in self.streams.values():
            if stream.role is role:
                return stream
        return None

    def audio(self, channel: str, pcm16: np.ndarray, at_sample: int | None = None) -> None:
        stream = self.streams[channel]
        expected_at = stream.position
        for utterance in stream.push(pcm16, at_sample):
            self._submit(stream, utterance)
        if stream.interims is not None:
            stream.interims.audio_arrived()
        # After push, the chunk ends at the stream's position (gaps and jumps applied); what
        # the source's timestamps skipped tells the recorder a jump from a hold.
        chunk_at = stream.position - len(pcm16)
        skipped = self._skipped_since_recorded.get(channel, 0) + chunk_at - expected_at
        self._skipped_since_recorded[channel] = skipped
        if self._recording and stream.transcribing and stream.role is not None:
            assert self._recorder is not None
            self._skipped_since_recorded[channel] = 0
            try:
                self._recorder.write(stream.role, chunk_at, pcm16, skipped_samples=skipped)
            except OSError:
                # A full disk loses the recording, never the transcription.
                log.exception("call %s: recording abandoned", self.key)
                self._recording = False
                self._recorder.discard()
                self._recorder = None

    # control (start / stop) ---------------------------------------------------------------

    def _admit(self) -> None:
        if self._admission is not None:
            self._admission(self)

    async def start(self, request: StartRequest) -> AutotranscribeResult:
        # Read before the checks below, so that nothing changes the call between them and
        # the start taking effect.
        vocabulary = await self._vocabulary_for(request)
        self._admit()
        if self.status is CallStatus.COMPLETED:
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {self.key.guid} has ended")
        if self.status is CallStatus.STREAMING:
            raise CallError(ErrorCode.ALREADY, "transcription already started")
        if request.twilioParams is not None:
            self.channel_roles = {
                track: role for track, role in request.twilioParams.trackMap.items()
            }
            self._apply_roles()
        ids = {Role.CUSTOMER: request.customerId, Role.AGENT: request.agentId}
        for role, external_id in ids.items():
            known = self.participants.get(role)
            if external_id is None and known is None:
                raise CallError(
                    ErrorCode.PARAMETER,
                    f"{role.value}Id is required on the first start-streaming of a call",
                )
            if known is None or (external_id is not None and external_id != known["externalId"]):
                # A new participant id on a later start is a new leg (a transfer).
                self.participants[role] = {
                    "externalId": external_id or "",
                    "streamId": str(uuid.uuid1()),
                }
        self.request = request
        self.vocabulary = vocabulary
        self.status = CallStatus.STREAMING
        for stream in self.streams.values():
            if stream.role is not None:
                stream.set_transcribing(True)
        self._update_interims()
        self._recording = self._recording_allowed(request)
        await self._save(CallStatus.STREAMING)
        log.info("call %s: transcription started", self.key)
        return self._result(summary=False)

    async def stop(self) -> AutotranscribeResult:
        self._admit()
        if self.status is CallStatus.COMPLETED:
            if self._audio_at_end is not None:
                return await self._stop_after_end()
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {self.key.guid} has ended")
        if self.status is not CallStatus.STREAMING:
            raise CallError(ErrorCode.ALREADY, "transcription already stopped")
        self.status = CallStatus.STOPPED
        self._recording = False
        self._stop_transcribing()
        self._update_interims()
        # The summary counts the audio received up to the stop, not what keeps arriving while
        # the last transcript is awaited (how long that takes depends on the machine's load).
        audio_at_stop = {channel: st.total_audio_bytes for channel, st in self.streams.items()}
        await self._save(CallStatus.STOPPED)
        await self.wait_for_transcripts(STOP_WAIT_S)
        log.info("call %s: transcription stopped", self.key)
        return self._result(summary=True, audio_bytes=audio_at_stop)

    async def complete(self) -> None:
        """The media ended (hang-up, stream stop, BYE): finish open utterances, close the call."""
        if self.status is CallStatus.COMPLETED:
            return
        ended_transcribing = self.status is CallStatus.STREAMING
        self.status = CallStatus.COMPLETED
        self.closing = True
        self._recording = False
        if ended_transcribing and self.summary_after_end:
            self._audio_at_end = {ch: st.total_audio_bytes for ch, st in self.streams.items()}
            self._ended_at = time.monotonic()
        self._stop_transcribing()
        self._update_interims()
        await self.wait_for_transcripts(COMPLETE_WAIT_S)
        await self._store_recording()
        now = time.time()
        async with self._end_lock:
            await asyncio.to_thread(
                self.store.update_call,
                self.key,
                status=CallStatus.COMPLETED,
                params=await self._params_at_end(),
                completed_at=now,
                updated_at=now,
            )
            self._end_persisted = True
        await self.pipeline.expire_messages(self.key, ended_at=now)
        self.closing = False
        self._closed.set()
        log.info("call %s: completed", self.key)

    async def _params_at_end(self) -> dict[str, Any]:
        """The call record's params as the media ended: what the ingest keeps for a later
        stream of the same call, and the end summary (summary_after_end). Merged into the
        record's own params, which keep the request of an earlier stream of the call."""
        record = await asyncio.to_thread(self.store.get_call, self.key)
        params = dict(record.params) if record is not None else {}
        params.update(self.ingest_params())
        params.pop(END_SUMMARY, None)  # an earlier stream's, superseded
        if self._audio_at_end is not None:
            result = self._result(
                summary=True, audio_bytes=self._audio_at_end, until=self._ended_at
            )
            params[END_SUMMARY] = {
                "result": result.model_dump(mode="json", exclude_none=True),
                "claimed": self._end_summary_claimed,
            }
        return params

    async def _stop_after_end(self) -> AutotranscribeResult:
        """stop-streaming that reached the call after its media ended while transcribing: the
        summary as it ended, once (a second stop finds transcription already stopped)."""
        async with self._end_lock:
            if self._end_summary_claimed:
                raise CallError(ErrorCode.ALREADY, "transcription already stopped")
            self._end_summary_claimed = True
            if self._end_persisted:
                await claim_end_summary(self.store, self.key)
        await self.wait_for_transcripts(STOP_WAIT_S)
        return self._result(summary=True, audio_bytes=self._audio_at_end, until=self._ended_at)

    async def _vocabulary_for(self, request: StartRequest) -> tuple[str, ...]:
        """The start's vocabulary merged with the tenant's, read from the Store once per start
        (not per utterance). A Store that cannot answer costs the tenant's terms, never the
        start: logged and counted, the call goes on with its own."""
        stats = self.services.vocabulary_stats
        try:
            stored = await asyncio.to_thread(self.store.get_tenant_vocabulary, self.key.tenant)
        except Exception:
            stats.tenant_read_failures += 1
            log.exception("call %s: could not read the tenant's vocabulary", self.key)
            stored = None
        merged = merge_vocabulary(
            request.autotranscribeParams.vocabulary, stored.terms if stored is not None else ()
        )
        if merged.dropped:
            stats.terms_dropped += len(merged.dropped)
            log.info(
                "call %s: %d of the tenant's vocabulary terms left out (over the bounds with "
                "the call's own)",
                self.key,
                len(merged.dropped),
            )
        return merged.terms

    def _recording_allowed(self, request: StartRequest) -> bool:
        recordings = self.services.recordings
        if not request.autotranscribeParams.audioRecordingAllowed or recordings is None:
            return False
        if self._recorder is None:
            origin = min((s.position for s in self.streams.values()), default=0)
            self._recorder = recordings.recorder(self.key, origin)
        if silences_recording(request.autotranscribeParams.redactionOutput):
            self._recorder.redacting = True
        return True

    async def _store_recording(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        try:
            await asyncio.to_thread(recorder.finish)
        except Exception:
            log.exception("call %s: could not store the recording", self.key)

    def _update_interims(self) -> None:
        """Gives each transcribed participant interim results while the call's start asks for
        them, and ends them otherwise (stopped, ended, a role lost)."""
        decoder = self.services.interims
        params = self.request.autotranscribeParams if self.request is not None else None
        wanted = (
            decoder is not None
            and params is not None
            and params.interimResults
            and self.status is CallStatus.STREAMING
        )
        for stream in self.streams.values():
            current = stream.interims
            role = stream.role.value if stream.role is not None else None
            if current is not None and (not wanted or current.role != role):
                current.close()
                stream.interims = current = None
            if wanted and role is not None and current is None:
                assert decoder is not None and params is not None
                assert stream.role is not None  # as role
                stream.interims = decoder.for_stream(
                    self.key,
                    role,
                    stream,
                    params,
                    self._participant_ids(stream.role),
                    vocabulary=self.vocabulary,
                )

    def _participant_ids(self, role: Role) -> Callable[[], dict[str, str] | None]:
        """The participant's externalId and streamId as they are when asked (a transfer's
        start may change them), for its interim results."""
        return lambda: self.participants.get(role)

    def _stop_transcribing(self) -> None:
        for stream in self.streams.values():
            for utterance in stream.set_transcribing(False):
                self._submit(stream, utterance)

    async def wait_for_transcripts(self, timeout_s: float) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            if pending:
                log.warning("call %s: %d utterances still transcribing", self.key, len(pending))

    async def _save(self, status: CallStatus) -> None:
        params: dict[str, Any] = {
            "request": self.request.model_dump(mode="json") if self.request else None,
            "participants": {role.value: ids for role, ids in self.participants.items()},
            **self.ingest_params(),
        }
        await asyncio.to_thread(
            self.store.update_call, self.key, status=status, params=params, updated_at=time.time()
        )

    def _result(
        self, summary: bool, audio_bytes: dict[str, int] | None = None, until: float | None = None
    ) -> AutotranscribeResult:
        """``until``: the time.monotonic() the summary is as of (now when None)."""
        result = AutotranscribeResult()
        elapsed = (time.monotonic() if until is None else until) - self.connected_at
        for role, ids in self.participants.items():
            stream = self.stream_for(role)
            participant = ParticipantResult(streamId=ids["streamId"])
            if summary and stream is not None:
                total = (audio_bytes or {}).get(stream.channel, stream.total_audio_bytes)
                participant.summary = StreamSummary(
                    totalAudioBytes=total,
                    audioDurationMs=total * 1000 // (2 * TELEPHONE_RATE),
                    streamingSeconds=math.ceil(elapsed),
                    transcripts=stream.transcripts,
                )
            setattr(result, role.value, participant)
        return result

    # transcription -------------------------------------------------------------------------

    def _submit(self, stream: ParticipantStream, utterance: Utterance) -> None:
        if stream.role is None or self.request is None:
            return
        ids = self.participants[stream.role]
        speaker = Speaker(stream.role.value, ids["externalId"], ids["streamId"])
        params = self.request.autotranscribeParams
        redacted_audio = None
        if self._recorder is not None and silences_recording(params.redactionOutput):
            # Registered now, before the recording can be assembled: until transcribed, the
            # utterance counts as silence in its channel (never stored unsilenced).
            redacted_audio = self._recorder.redacted_audio(
                stream.role, utterance_range(utterance.start_sample, len(utterance.audio))
            )
        task = asyncio.get_running_loop().create_task(
            self._transcribe(stream, speaker, utterance, params, self.vocabulary, redacted_audio)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _transcribe(
        self,
        stream: ParticipantStream,
        speaker: Speaker,
        utterance: Utterance,
        params: Any,
        vocabulary: tuple[str, ...],
        redacted_audio: RedactedAudio | None = None,
    ) -> None:
        if await self.pipeline.handle(
            self.key,
            speaker,
            utterance,
            params,
            self._messages,
            vocabulary=vocabulary,
            redacted_audio=redacted_audio,
        ):
            stream.transcripts += 1


async def claim_end_summary(store: Store, key: CallKey) -> AutotranscribeResult:
    """stop-streaming for a call whose media ended, answered from the Store (no process holds
    the call any more): the summary it kept as it ended, once. 400-203 when it ended with
    transcription off (or its source keeps no end summary), 409-201 when a stop had it."""
    record = await asyncio.to_thread(store.get_call, key)
    end = record.params.get(END_SUMMARY) if record is not None else None
    if record is None or end is None:
        raise CallError(ErrorCode.NO_SUCH_CALL, f"call {key.guid} has ended")
    if end.get("claimed"):
        raise CallError(ErrorCode.ALREADY, "transcription already stopped")
    params = {**record.params, END_SUMMARY: {**end, "claimed": True}}
    await asyncio.to_thread(store.update_call, key, params=params, updated_at=time.time())
    return AutotranscribeResult.model_validate(end["result"])


SessionKind = TypeVar("SessionKind", bound=CallSession)


class CallWatcher(Protocol):
    """Told when a call goes live in this process and when it is let go (the live event
    stream's started and ended). Called on the event loop; must not block."""

    def call_registered(self, call: CallSession) -> None: ...

    def call_unregistered(self, call: CallSession) -> None: ...


class CallRegistry:
    """The live calls held by this process."""

    def __init__(self) -> None:
        self._calls: dict[CallKey, CallSession] = {}
        self._watchers: list[CallWatcher] = []

    def watch(self, watcher: CallWatcher) -> None:
        self._watchers.append(watcher)

    def add(self, session: CallSession) -> None:
        # A session replacing a live one of the same call (a reconnect) is the same call.
        new = session.key not in self._calls
        self._calls[session.key] = session
        if new:
            self._tell(session, registered=True)

    def remove(self, session: CallSession) -> None:
        if self._calls.get(session.key) is session:
            del self._calls[session.key]
            self._tell(session, registered=False)

    def _tell(self, session: CallSession, *, registered: bool) -> None:
        for watcher in self._watchers:
            try:
                if registered:
                    watcher.call_registered(session)
                else:
                    watcher.call_unregistered(session)
            except Exception:  # a watcher's failure must never reach the call
                log.exception("call %s: a call watcher failed", session.key)

    def get(self, key: CallKey) -> CallSession | None:
        return self._calls.get(key)

    def __len__(self) -> int:
        return len(self._calls)

    async def complete_all(self) -> None:
        await asyncio.gather(*(call.complete() for call in list(self._calls.values())))


class Calls:
    """Where every ingest's calls come from: each is made on the process's shared services,
    opened in the Store (or taken over) and registered as live, in that order, in one place."""

    def __init__(self, services: CallServices, registry: CallRegistry) -> None:
        self.services = services
        self.registry = registry

    async def open(
        self, kind: type[SessionKind], key: CallKey, /, *, register: bool = True, **fields: Any
    ) -> SessionKind:
        """A call of ``kind`` (``CallSession`` or an ingest's subclass of it), opened in the
        Store and registered as live; ``fields`` are the rest of its constructor's arguments.
        ``register=False`` leaves registering to the ingest (``register``), for a source
        whose call goes live later than it is opened (SIPREC: when its 200 OK goes out)."""
        call = kind(key, self.services, **fields)
        await call.open()
        if register:
            self.register(call)
        return call

    def register(self, call: CallSession) -> None:
        self.registry.add(call)

    def get(self, key: CallKey) -> CallSession | None:
        return self.registry.get(key)

    def forget(self, call: CallSession) -> None:
        """The call is no longer held here (its media ended and it completed)."""
        self.registry.remove(call)
