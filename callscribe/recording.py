"""Call recordings (``audioRecordingAllowed``): uncompressed WAV, 8 kHz, 16-bit PCM, one
channel per speaker (channel 1 customer, channel 2 agent), kept in the BlobStore with the same
retention as transcripts.

What is recorded: the audio of the windows in which transcription is on *and* the start request
that opened the window allowed recording. The contract ties the setting to start-streaming
("audioRecordingAllowed (keep the audio)"), so audio before the first start (IVR, queue), on
hold (after stop) or in a window whose start did not allow it is never kept. Sample 0 of a
part's WAV is the call-audio position ``offsetMs``; within a part, gaps (a hold) are silence, so
a message's ``start``/``end`` minus the ``offsetMs`` of the part that holds it points into
that part's WAV.

Parts: a recording is one or more WAV files, each with its own ``offsetMs``.
- A jump in the source's timestamps (Twilio's ``media.timestamp``) longer than
  ``RecordingSettings.max_gap_fill_ms`` is a discontinuity: the audio after it starts a new part
  at its place on the timeline. Filling the jump with silence would turn one bad timestamp
  into gigabytes of zeros (an hour is 115 MB); the new part writes none and keeps positions
  exact. Each discontinuity is logged and counted.
- A part holds at most ``RecordingSettings.max_part_bytes``; a longer call continues in the next
  part, contiguous on the timeline. We split rather than write RF64: every part stays a plain
  WAV that any tool reads (Python's ``wave``, many players and libraries do not read RF64), the
  after-call API already lists a call's recordings with their offsets, and no single file nears
  the 2 GB where readers that take WAV's 32-bit sizes as signed give up.

Redacted recordings (``silencing.py``): when the start request asks for a redacted output,
each utterance's redacted spans are silenced in its speaker's channel as the WAV is assembled,
so the raw audio of a card number never reaches the BlobStore. An utterance still being
transcribed when the call's recording is assembled (or whose transcription failed) is silenced
whole. Such a recording's key ends ``.redacted.wav``, which the after-call API reports as
``redacted``; there is no unsilenced copy.

Memory stays bounded for calls of hours: each speaker's audio is written as it arrives to a raw
spool file per part at its sample offset (gaps stay sparse holes that read back as silence); the
WAVs are assembled from the spool files in chunks when the call completes, then stored and the
spool removed.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callscribe.audio import TELEPHONE_RATE
from callscribe.blobs.base import BlobInfo, BlobStore, key_segment
from callscribe.config import RecordingSettings
from callscribe.model import Role
from callscribe.private_files import private_dir, private_file_descriptor
from callscribe.silencing import SampleRange, merged
from callscribe.store.base import CallKey

log = logging.getLogger(__name__)

PREFIX = "recordings"
CHANNELS = (Role.CUSTOMER, Role.AGENT)
WAV_HEADER_BYTES = 44
FRAME_BYTES = 2 * len(CHANNELS)  # one stereo sample of 16-bit audio
ASSEMBLY_CHUNK_SAMPLES = 8 * TELEPHONE_RATE  # 8 s at a time: 128 KiB of stereo audio
SPOOL_SUFFIX = ".pcm"
WAV_EXTENSION = "wav"
REDACTED_EXTENSION = "redacted.wav"  # the recording's redacted spans are silence


def call_prefix(key: CallKey) -> str:
    return (
        "/".join(
            (PREFIX, key_segment(key.tenant), key_segment(key.namespace), key_segment(key.guid))
        )
        + "/"
    )


@dataclass(frozen=True)
class RecordingInfo:
    key: str
    bytes: int
    recorded_at: float  # when the WAV was stored (the call's completion)
    offset_ms: int  # position of the WAV's first sample on the call's audio timeline
    duration_ms: int
    session_opened_ms: int = 0  # the media session it belongs to (a reconnect opens another)
    redacted: bool = False  # redacted spans are silence (``.redacted.wav``)


def _key_numbers(key: str) -> tuple[int, int, bool] | None:
    """``…/<session-opened-ms>-<offset-ms>.wav`` (or ``.redacted.wav``) → (opened, offset,
    redacted); None for anything else."""
    name = key.rsplit("/", 1)[-1]
    stem, _, extension = name.partition(".")
    opened, dash, offset = stem.partition("-")
    if (
        extension not in (WAV_EXTENSION, REDACTED_EXTENSION)
        or not dash
        or not opened.isdigit()
        or not offset.isdigit()
    ):
        return None
    return int(opened), int(offset), extension == REDACTED_EXTENSION


def recording_info(blob: BlobInfo) -> RecordingInfo | None:
    """Parse ``…/<session-opened-ms>-<offset-ms>.wav``; None for anything else."""
    numbers = _key_numbers(blob.key)
    if numbers is None:
        return None
    frames = max(0, blob.size - WAV_HEADER_BYTES) // FRAME_BYTES
    return RecordingInfo(
        blob.key,
        blob.size,
        blob.modified_at,
        numbers[1],
        frames * 1000 // TELEPHONE_RATE,
        numbers[0],
        numbers[2],
    )


@dataclass
class _Part:
    """One WAV-to-be: the speakers' spool files from ``origin`` on the call's timeline."""

    index: int
    origin: int  # call-timeline sample of the part's first frame
    files: dict[Role, int] = field(default_factory=dict)  # open spool descriptors
    ends: dict[Role, int] = field(default_factory=dict)  # frames written per speaker

    @property
    def frames(self) -> int:
        return max(self.ends.values(), default=0)

    @property
    def end(self) -> int:
        """Call-timeline sample just after the part's last frame."""
        return self.origin + self.frames


class CallRecorder:
    """One call session's recording, spooled to disk speaker by speaker, part by part."""

    def __init__(
        self,
        blobs: BlobStore,
        spool_dir: Path,
        key: CallKey,
        origin_sample: int,
        settings: RecordingSettings | None = None,
        on_discontinuity: Callable[[], None] | None = None,
    ) -> None:
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.key = key
        self.origin_sample = origin_sample
        self.settings = settings or RecordingSettings()
        self.opened_at = time.time()
        self.max_gap_fill = self.settings.max_gap_fill_ms * TELEPHONE_RATE // 1000
        self.max_part_frames = (self.settings.max_part_bytes - WAV_HEADER_BYTES) // FRAME_BYTES
        self._on_discontinuity = on_discontinuity
        self._stem = f"{uuid.uuid4().hex}"
        self._parts: list[_Part] = [_Part(0, origin_sample)]
        # Redacted recordings: set once a window that asks for a redacted output records.
        self.redacting = False
        # Per speaker, the call-timeline ranges that are silence in the WAV, and the
        # utterances not yet resolved (silenced whole if still so when the WAV is assembled).
        # Resolved on the event loop while ``finish`` may run in a thread: hence the lock.
        self._silences: dict[Role, list[SampleRange]] = {role: [] for role in CHANNELS}
        self._unresolved: dict[int, tuple[Role, SampleRange]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._finished = False

    def _spool_path(self, part: _Part, role: Role) -> Path:
        return self.spool_dir / f"{self._stem}.{part.index}.{role.value}{SPOOL_SUFFIX}"

    def write(
        self, role: Role, at_sample: int, pcm16: np.ndarray, skipped_samples: int = 0
    ) -> None:
        """Keep ``pcm16``, which belongs at ``at_sample`` of the call's audio timeline;
        ``skipped_samples``: how far the source's timestamps jumped ahead just before it."""
        # Audio from before recording began (or before its first part, when that began
        # after a jump) is not kept.
        before = self._parts[0].origin - at_sample
        if before > 0:
            pcm16 = pcm16[before:]
            at_sample += before
        while len(pcm16):
            part, limit = self._part_for(role, at_sample, skipped_samples)
            count = min(len(pcm16), limit - at_sample)
            if part is not None:
                self._write_into(part, role, at_sample, pcm16[:count])
            pcm16 = pcm16[count:]
            at_sample += count

    def _part_for(self, role: Role, at: int, skipped: int) -> tuple[_Part | None, int]:
        """The part that takes audio at ``at`` and where that part stops taking it (the
        timeline sample); no part: drop the audio up to there."""
        current = self._parts[-1]
        if at >= current.origin:
            if skipped > self.max_gap_fill and at > current.end + self.max_gap_fill:
                current = self._discontinuity(current, at, skipped)
            elif at >= current.origin + self.max_part_frames:
                # A full part: the next begins where it ends, so parts stay contiguous (and a
                # hold longer than a part is silence at the start of the next).
                whole_parts = (at - current.origin) // self.max_part_frames
                current = self._new_part(current.origin + whole_parts * self.max_part_frames)
            return current, current.origin + self.max_part_frames
        # Audio behind the newest part: the other speaker's, not yet past the jump or the
        # split (the tracks' frames arrive interleaved). It goes into the part before, as long
        # as it opens no gap there beyond the bound (dropped otherwise: it must never reach
        # disk as silence); parts older than that are finished and take nothing.
        index = max(i for i, p in enumerate(self._parts) if p.origin <= at)
        part, next_origin = self._parts[index], self._parts[index + 1].origin
        limit = min(part.origin + self.max_part_frames, next_origin)
        if (
            index == len(self._parts) - 2
            and at < limit
            and at <= part.origin + part.ends.get(role, 0) + self.max_gap_fill
        ):
            return part, limit
        log.debug("call %s: %s audio behind the recording dropped", self.key, role.value)
        return None, next_origin

    def _discontinuity(self, current: _Part, at: int, skipped: int) -> _Part:
        log.warning(
            "call %s: recording discontinuity: the source's timestamps jumped %.1f s at %.1f s; "
            "the audio after it is a new part (no silence written for the jump)",
            self.key,
            skipped / TELEPHONE_RATE,
            at / TELEPHONE_RATE,
        )
        if self._on_discontinuity is not None:
            self._on_discontinuity()
        if not current.frames:  # nothing recorded yet: the part simply begins later
            current.origin = at
            return current
        return self._new_part(at)

    def _new_part(self, origin: int) -> _Part:
        part = _Part(len(self._parts), origin)
        self._parts.append(part)
        # Only the newest two parts take audio (the other track may still be behind); older
        # parts are finished, so their descriptors are closed (a call of many parts must not
        # exhaust them).
        for older in self._parts[:-2]:
            self._close(older)
        return part

    def _write_into(self, part: _Part, role: Role, at: int, pcm16: np.ndarray) -> None:
        fd = part.files.get(role)
        if fd is None:
            # Call audio: the owner's only, the spool as the stored WAV.
            private_dir(self.spool_dir)
            fd = private_file_descriptor(self._spool_path(part, role), os.O_RDWR | os.O_TRUNC)
            part.files[role] = fd
        offset = at - part.origin
        os.pwrite(fd, pcm16.astype("<i2", copy=False).tobytes(), offset * 2)
        part.ends[role] = max(part.ends.get(role, 0), offset + len(pcm16))

    def redacted_audio(self, role: Role, whole: SampleRange) -> UtteranceSilence:
        """An utterance of ``role`` covering ``whole`` whose redacted spans are to be silence:
        silenced whole unless resolved before the WAV is assembled."""
        with self._lock:
            self.redacting = True
            token = next(self._tokens)
            self._unresolved[token] = (role, whole)
        return UtteranceSilence(
            self,
            token,
            whole,
            self.settings.redaction_margin_ms,
            self.settings.redaction_margin_after_ms,
        )

    def _resolve(self, token: int, ranges: list[SampleRange]) -> None:
        with self._lock:
            entry = self._unresolved.pop(token, None)
            if entry is None or self._finished:
                return  # assembled already: it was silenced whole
            role, whole = entry
            self._silences[role].extend(
                SampleRange(max(r.start, whole.start), min(r.end, whole.end)) for r in ranges
            )

    def _silences_at_finish(self) -> dict[Role, list[SampleRange]]:
        with self._lock:
            self._finished = True
            silences = {role: list(ranges) for role, ranges in self._silences.items()}
            for role, whole in self._unresolved.values():
                silences[role].append(whole)
            if self._unresolved:
                log.warning(
                    "call %s: %d utterance(s) not transcribed when the recording was "
                    "assembled: silenced whole",
                    self.key,
                    len(self._unresolved),
                )
            self._unresolved.clear()
        return {role: merged(ranges) for role, ranges in silences.items()}

    @property
    def samples(self) -> int:
        """Frames recorded, all parts together."""
        return sum(part.frames for part in self._parts)

    def finish(self) -> list[BlobInfo]:
        """Assemble each part's stereo WAV, store it, remove the spool. Empty if nothing was
        heard."""
        stored: list[BlobInfo] = []
        silences = self._silences_at_finish()
        extension = REDACTED_EXTENSION if self.redacting else WAV_EXTENSION
        try:
            for part in self._parts:
                if not part.frames:
                    continue
                wav_path = self.spool_dir / f"{self._stem}.{part.index}.wav"
                try:
                    self._assemble(part, wav_path, silences)
                    offset_ms = part.origin * 1000 // TELEPHONE_RATE
                    blob_key = (
                        f"{call_prefix(self.key)}{int(self.opened_at * 1000)}-{offset_ms}"
                        f".{extension}"
                    )
                    stored.append(self.blobs.put_file(blob_key, wav_path, "audio/wav"))
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        wav_path.unlink()
            if stored:
                log.info(
                    "call %s: recording of %d s stored in %d part(s)%s",
                    self.key,
                    self.samples // TELEPHONE_RATE,
                    len(stored),
                    (
                        f", redacted: {sum(len(r) for r in silences.values())} range(s), "
                        f"{sum(x.samples for r in silences.values() for x in r) // 8} ms silenced"
                        if self.redacting
                        else ""
                    ),
                )
            return stored
        finally:
            self.discard()

    def _assemble(
        self, part: _Part, wav_path: Path, silences: dict[Role, list[SampleRange]]
    ) -> None:
        total = part.frames
        readers = {
            role: os.open(self._spool_path(part, role), os.O_RDONLY)
            for role in CHANNELS
            if role in part.ends
        }
        silence_ends = {role: [r.end for r in ranges] for role, ranges in silences.items()}
        fd = private_file_descriptor(wav_path, os.O_WRONLY | os.O_TRUNC)
        try:
            with os.fdopen(fd, "wb") as out, wave.open(out, "wb") as wav:
                wav.setnchannels(len(CHANNELS))
                wav.setsampwidth(2)
                wav.setframerate(TELEPHONE_RATE)
                for start in range(0, total, ASSEMBLY_CHUNK_SAMPLES):
                    count = min(ASSEMBLY_CHUNK_SAMPLES, total - start)
                    frames = np.zeros((count, len(CHANNELS)), dtype="<i2")
                    for channel, role in enumerate(CHANNELS):
                        reader = readers.get(role)
                        if reader is None:
                            continue  # a speaker never heard in this part: a silent channel
                        raw = os.pread(reader, count * 2, start * 2)  # short past its end
                        frames[: len(raw) // 2, channel] = np.frombuffer(raw, dtype="<i2")
                        _silence(
                            frames[:, channel],
                            part.origin + start,
                            silences.get(role, []),
                            silence_ends.get(role, []),
                        )
                    wav.writeframes(frames.tobytes())
        finally:
            for reader in readers.values():
                os.close(reader)

    def _close(self, part: _Part) -> None:
        for fd in part.files.values():
            with contextlib.suppress(OSError):  # discarding after an I/O error must not fail
                os.close(fd)
        part.files.clear()

    def discard(self) -> None:
        for part in self._parts:
            self._close(part)
            for role in CHANNELS:
                with contextlib.suppress(FileNotFoundError):
                    self._spool_path(part, role).unlink()
            part.ends.clear()


def _silence(samples: np.ndarray, at: int, ranges: list[SampleRange], ends: list[int]) -> None:
    """Zero what of ``ranges`` (sorted, apart; ``ends`` their ends) falls in ``samples``, whose
    first sample is at ``at`` on the call's timeline."""
    first = bisect.bisect_right(ends, at)  # the first range ending after ``at``
    for silence in ranges[first:]:
        if silence.start >= at + len(samples):
            break
        samples[max(silence.start - at, 0) : max(silence.end - at, 0)] = 0


class UtteranceSilence:
    """One utterance's redacted audio in its speaker's channel of a ``CallRecorder``
    (``silencing.RedactedAudio``)."""

    def __init__(
        self,
        recorder: CallRecorder,
        token: int,
        whole: SampleRange,
        margin_ms: int,
        margin_after_ms: int,
    ) -> None:
        self._recorder = recorder
        self._token = token
        self.whole = whole
        self.margin_ms = margin_ms
        self.margin_after_ms = margin_after_ms

    def resolve(self, ranges: Sequence[SampleRange]) -> None:
        self._recorder._resolve(self._token, list(ranges))


class Recordings:
    """Makes recorders for calls and finds a call's stored recordings."""

    def __init__(
        self,
        blobs: BlobStore,
        spool_dir: Path,
        retention_s: float,
        settings: RecordingSettings | None = None,
    ) -> None:
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.retention_s = retention_s
        self.settings = settings or RecordingSettings()
        self.discontinuities = 0  # source timestamp jumps not filled with silence, all calls

    def recorder(self, key: CallKey, origin_sample: int) -> CallRecorder:
        return CallRecorder(
            self.blobs,
            self.spool_dir,
            key,
            origin_sample,
            self.settings,
            on_discontinuity=self._count_discontinuity,
        )

    def _count_discontinuity(self) -> None:
        self.discontinuities += 1

    def for_call(self, key: CallKey, now: float) -> list[RecordingInfo]:
        """The call's recordings still within retention, in timeline order: by media session
        (a stream that reconnected has one per session), then by part."""
        found = []
        for blob in self.blobs.list(call_prefix(key)):
            info = recording_info(blob)
            if info is not None and info.recorded_at + self.retention_s > now:
                found.append(info)
        # Numerically: listed by key, "…-10000.wav" would come before "…-9000.wav".
        return sorted(found, key=lambda info: (info.session_opened_ms, info.offset_ms))

    def purge(self, now: float) -> int:
        removed = self.blobs.purge_older_than(PREFIX + "/", now - self.retention_s)
        # Spool files of a process that died mid-call: nothing will finish them.
        if self.spool_dir.is_dir():
            for path in self.spool_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < now - self.retention_s:
                        path.unlink()
        return removed
