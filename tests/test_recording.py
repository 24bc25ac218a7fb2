"""``CallRecorder``: speakers' audio spooled to disk at its timeline position, assembled into a
stereo WAV with bounded memory, stored in the BlobStore; retention of recordings."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from callscribe.api.schemas import Role
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.recording import Recordings, recording_info
from callscribe.store.base import CallKey

KEY = CallKey("acme", "twilio", "CA../../x")  # a hostile guid stays inside its prefix
RATE = 8000


@pytest.fixture
def blobs(tmp_path: Path) -> DirectoryBlobStore:
    return DirectoryBlobStore(tmp_path / "blobs", BlobLinkSigner("k"))


@pytest.fixture
def recordings(blobs: DirectoryBlobStore, tmp_path: Path) -> Recordings:
    return Recordings(blobs, tmp_path / "spool", retention_s=7 * 86400)


def tone(samples: int, value: int) -> np.ndarray:
    return np.full(samples, value, dtype=np.int16)


def read_wav(data: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(data)) as wav:
        params = wav.getparams()
        frames = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, frames.reshape(-1, params.nchannels)


def test_channels_positions_gaps_and_offset(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=1000)
    recorder.write(Role.CUSTOMER, 900, tone(300, 7))  # starts 100 samples before the origin
    recorder.write(Role.AGENT, 1200, tone(100, -5))
    recorder.write(Role.AGENT, 2000, tone(50, 9))  # a gap before it (a hold): silence
    recorder.write(Role.CUSTOMER, 1150, tone(10, 3))  # arrives late, overwrites its place
    spool = list((tmp_path / "spool").iterdir())
    assert len(spool) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in spool)

    info = recorder.finish()
    assert info is not None
    assert list((tmp_path / "spool").iterdir()) == []  # spool removed
    params, frames = read_wav(blobs.get(info.key))
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, RATE)
    assert params.comptype == "NONE"
    assert len(frames) == 1050  # up to the agent's last sample, from the origin
    customer, agent = frames[:, 0], frames[:, 1]
    assert (customer[:150] == 7).all() and (customer[150:160] == 3).all()
    assert (customer[160:200] == 7).all() and (customer[200:] == 0).all()
    assert (agent[:200] == 0).all() and (agent[200:300] == -5).all()
    assert (agent[300:1000] == 0).all() and (agent[1000:] == 9).all()

    (listed,) = recordings.for_call(KEY, time.time())
    assert listed == recording_info(blobs.stat(info.key))  # type: ignore[arg-type]
    assert listed.offset_ms == 125 and listed.duration_ms == 1050 * 1000 // RATE
    assert info.key.startswith("recordings/acme/twilio/CA..%2F..%2Fx/")


def test_nothing_heard_stores_nothing(recordings: Recordings, blobs: DirectoryBlobStore) -> None:
    recorder = recordings.recorder(KEY, origin_sample=0)
    assert recorder.finish() is None
    assert blobs.list("recordings/") == []


def test_recordings_expire_with_retention(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=0)
    recorder.write(Role.AGENT, 0, tone(800, 1))
    info = recorder.finish()
    assert info is not None
    now = time.time()
    assert len(recordings.for_call(KEY, now)) == 1
    # Seven days on, the recording is no longer offered, and the purge removes it.
    later = now + 7 * 86400 + 1
    assert recordings.for_call(KEY, later) == []
    assert recordings.purge(now) == 0 and blobs.stat(info.key) is not None
    assert recordings.purge(later) == 1
    assert blobs.stat(info.key) is None


def test_purge_removes_stale_spool_of_a_dead_process(
    recordings: Recordings, tmp_path: Path
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=0)
    recorder.write(Role.AGENT, 0, tone(80, 1))
    (stale,) = (tmp_path / "spool").iterdir()
    old = time.time() - 8 * 86400
    os.utime(stale, (old, old))
    recordings.purge(time.time())
    assert not stale.exists()
    recorder.discard()


def test_memory_stays_bounded_for_a_long_call(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    """30 minutes of both speakers in 20 ms frames: Python memory stays far below the
    57 MB recording, while writing and while assembling the WAV."""
    minutes = 30
    frame = np.arange(160, dtype=np.int16)
    recorder = recordings.recorder(KEY, origin_sample=0)
    tracemalloc.start()
    try:
        for n in range(minutes * 60 * 50):
            recorder.write(Role.CUSTOMER, n * 160, frame)
            recorder.write(Role.AGENT, n * 160, -frame)
        _, peak_writing = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        info = recorder.finish()
        _, peak_finishing = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info is not None
    expected = 44 + minutes * 60 * RATE * 2 * 2
    assert info.size == expected
    assert peak_writing < 2 << 20 and peak_finishing < 2 << 20, (peak_writing, peak_finishing)
    with open(blobs.open_path(info.key), "rb") as f:
        f.seek(44 + 4 * 160 * 1000)  # frame 1000 of the interleaved audio
        head = np.frombuffer(f.read(4 * 160), dtype="<i2").reshape(-1, 2)
    assert (head[:, 0] == frame).all() and (head[:, 1] == -frame).all()


async def test_a_failing_spool_loses_the_recording_not_the_call(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    from callscribe.api.schemas import StartRequest
    from callscribe.bus import InProcessEventBus
    from callscribe.calls import CallSession
    from callscribe.config import EndpointingSettings
    from callscribe.store.sqlite import SqliteStore
    from callscribe.transcription import TranscriptionPipeline

    class SilentAsr:
        async def transcribe(self, request: object) -> object:
            raise AssertionError("no speech is sent")

        async def close(self) -> None:
            pass

    store = SqliteStore(tmp_path / "s.sqlite3")
    pipeline = TranscriptionPipeline(SilentAsr(), store, InProcessEventBus(), 3600,  # type: ignore[arg-type]
                                     recordings=recordings)
    key = CallKey("acme", "twilio", "CA-disk")
    session = CallSession(key, pipeline, store, EndpointingSettings(), channels=("inbound", "outbound"),
                          channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT})
    await session.open()
    request = StartRequest.model_validate({
        "namespace": "twilio", "guid": key.guid, "customerId": "C", "agentId": "A",
        "autotranscribeParams": {"audioRecordingAllowed": True},
    })
    await session.start(request)
    session.audio("inbound", np.zeros(160, dtype=np.int16), 0)
    (spool,) = (tmp_path / "spool").iterdir()
    for fd in session._recorder._files.values():  # type: ignore[union-attr]
        os.close(fd)  # the next write fails as a full disk would
    session.audio("inbound", np.zeros(160, dtype=np.int16), 160)  # no exception escapes
    session.audio("outbound", np.zeros(160, dtype=np.int16), 0)
    assert session.streams["inbound"].total_audio_bytes == 640  # audio still counted
    assert not spool.exists()
    await session.complete()
    assert recordings.for_call(key, time.time()) == []
    store.close()
