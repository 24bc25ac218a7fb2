"""Call recordings (``audioRecordingAllowed``): uncompressed WAV, 8 kHz, 16-bit PCM, one
channel per speaker (channel 1 customer, channel 2 agent), kept in the BlobStore with the same
retention as transcripts.

What is recorded: the audio of the windows in which transcription is on *and* the start request
that opened the window allowed recording. The contract ties the setting to start-streaming
("audioRecordingAllowed (keep the audio)"), so audio before the first start (IVR, queue), on
hold (after stop) or in a window whose start did not allow it is never kept. Sample 0 of the
WAV is the call-audio position where recording first began (``offsetMs``); later gaps are
silence, so a message's ``start``/``end`` minus ``offsetMs`` points into the WAV.

Memory stays bounded for calls of hours: each speaker's audio is written as it arrives to a raw
spool file at its sample offset (gaps stay sparse holes that read back as silence); the WAV is
assembled from the spool files in chunks when the call completes, then stored and the spool
removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callscribe.api.schemas import Role
from callscribe.audio import TELEPHONE_RATE
from callscribe.blobs.base import BlobInfo, BlobStore, key_segment
from callscribe.store.base import CallKey

log = logging.getLogger(__name__)

PREFIX = "recordings"
CHANNELS = (Role.CUSTOMER, Role.AGENT)
WAV_HEADER_BYTES = 44
ASSEMBLY_CHUNK_SAMPLES = 8 * TELEPHONE_RATE  # 8 s at a time: 128 KiB of stereo audio
SPOOL_SUFFIX = ".pcm"


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


def recording_info(blob: BlobInfo) -> RecordingInfo | None:
    """Parse ``…/<session-opened-ms>-<offset-ms>.wav``; None for anything else."""
    name = blob.key.rsplit("/", 1)[-1]
    stem, dot, extension = name.partition(".")
    opened, dash, offset = stem.partition("-")
    if extension != "wav" or not dash or not opened.isdigit() or not offset.isdigit():
        return None
    frames = max(0, blob.size - WAV_HEADER_BYTES) // (2 * len(CHANNELS))
    return RecordingInfo(
        blob.key, blob.size, blob.modified_at, int(offset), frames * 1000 // TELEPHONE_RATE
    )


class CallRecorder:
    """One call session's recording, spooled to disk speaker by speaker."""

    def __init__(self, blobs: BlobStore, spool_dir: Path, key: CallKey, origin_sample: int) -> None:
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.key = key
        self.origin_sample = origin_sample
        self.opened_at = time.time()
        self._stem = f"{uuid.uuid4().hex}"
        self._files: dict[Role, int] = {}  # raw file descriptors, opened on first audio
        self._end: dict[Role, int] = {}  # samples written (highest offset reached)

    def _spool_path(self, role: Role) -> Path:
        return self.spool_dir / f"{self._stem}.{role.value}{SPOOL_SUFFIX}"

    def write(self, role: Role, at_sample: int, pcm16: np.ndarray) -> None:
        """Keep ``pcm16``, which belongs at ``at_sample`` of the call's audio timeline."""
        offset = at_sample - self.origin_sample
        if offset < 0:  # audio from before recording began
            pcm16 = pcm16[-offset:]
            offset = 0
        if not len(pcm16):
            return
        fd = self._files.get(role)
        if fd is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._spool_path(role), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._files[role] = fd
        os.pwrite(fd, pcm16.astype("<i2", copy=False).tobytes(), offset * 2)
        self._end[role] = max(self._end.get(role, 0), offset + len(pcm16))

    @property
    def samples(self) -> int:
        return max(self._end.values(), default=0)

    def finish(self) -> BlobInfo | None:
        """Assemble the stereo WAV, store it, remove the spool. None if nothing was heard."""
        try:
            if not self.samples:
                return None
            wav_path = self.spool_dir / f"{self._stem}.wav"
            try:
                self._assemble(wav_path)
                offset_ms = self.origin_sample * 1000 // TELEPHONE_RATE
                blob_key = f"{call_prefix(self.key)}{int(self.opened_at * 1000)}-{offset_ms}.wav"
                info = self.blobs.put_file(blob_key, wav_path, "audio/wav")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    wav_path.unlink()
            log.info("call %s: recording of %d s stored", self.key, self.samples // TELEPHONE_RATE)
            return info
        finally:
            self.discard()

    def _assemble(self, wav_path: Path) -> None:
        total = self.samples
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(len(CHANNELS))
            wav.setsampwidth(2)
            wav.setframerate(TELEPHONE_RATE)
            for start in range(0, total, ASSEMBLY_CHUNK_SAMPLES):
                count = min(ASSEMBLY_CHUNK_SAMPLES, total - start)
                frames = np.zeros((count, len(CHANNELS)), dtype="<i2")
                for channel, role in enumerate(CHANNELS):
                    fd = self._files.get(role)
                    if fd is None:
                        continue  # a speaker never heard: a silent channel
                    raw = os.pread(fd, count * 2, start * 2)  # short past the speaker's end
                    frames[: len(raw) // 2, channel] = np.frombuffer(raw, dtype="<i2")
                wav.writeframes(frames.tobytes())

    def discard(self) -> None:
        for role, fd in list(self._files.items()):
            with contextlib.suppress(OSError):  # discarding after an I/O error must not fail
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self._spool_path(role).unlink()
        self._files.clear()


class Recordings:
    """Makes recorders for calls and finds a call's stored recordings."""

    def __init__(self, blobs: BlobStore, spool_dir: Path, retention_s: float) -> None:
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.retention_s = retention_s

    def recorder(self, key: CallKey, origin_sample: int) -> CallRecorder:
        return CallRecorder(self.blobs, self.spool_dir, key, origin_sample)

    def for_call(self, key: CallKey, now: float) -> list[RecordingInfo]:
        """The call's recordings still within retention, oldest first (a stream that
        reconnected has one per session)."""
        found = []
        for blob in self.blobs.list(call_prefix(key)):
            info = recording_info(blob)
            if info is not None and info.recorded_at + self.retention_s > now:
                found.append(info)
        return found

    def purge(self, now: float) -> int:
        removed = self.blobs.purge_older_than(PREFIX + "/", now - self.retention_s)
        # Spool files of a process that died mid-call: nothing will finish them.
        if self.spool_dir.is_dir():
            for path in self.spool_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < now - self.retention_s:
                        path.unlink()
        return removed
