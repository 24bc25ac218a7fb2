"""``CallRecorder``: speakers' audio spooled to disk at its timeline position, assembled into a
stereo WAV with bounded memory, stored in the BlobStore; retention of recordings."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
import tracemalloc
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.config import RecordingSettings, TwilioSettings
from callscribe.model import Role
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

    (info,) = recorder.finish()
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
    assert recorder.finish() == []
    assert blobs.list("recordings/") == []


def test_recordings_expire_with_retention(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=0)
    recorder.write(Role.AGENT, 0, tone(800, 1))
    (info,) = recorder.finish()
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
        (info,) = recorder.finish()
        _, peak_finishing = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
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
    from callscribe.bus import InProcessEventBus
    from callscribe.calls import CallServices, CallSession
    from callscribe.config import EndpointingSettings
    from callscribe.model import StartRequest
    from callscribe.store.sqlite import SqliteStore
    from callscribe.transcription import TranscriptionPipeline

    class SilentAsr:
        async def transcribe(self, request: object) -> object:
            raise AssertionError("no speech is sent")

        async def close(self) -> None:
            pass

    store = SqliteStore(tmp_path / "s.sqlite3")
    pipeline = TranscriptionPipeline(SilentAsr(), store, InProcessEventBus(), 3600)  # type: ignore[arg-type]
    key = CallKey("acme", "twilio", "CA-disk")
    services = CallServices(store, pipeline, EndpointingSettings(), recordings=recordings)
    session = CallSession(
        key,
        services,
        channels=("inbound", "outbound"),
        channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
    )
    await session.open()
    request = StartRequest.model_validate(
        {
            "namespace": "twilio",
            "guid": key.guid,
            "customerId": "C",
            "agentId": "A",
            "autotranscribeParams": {"audioRecordingAllowed": True},
        }
    )
    await session.start(request)
    session.audio("inbound", np.zeros(160, dtype=np.int16), 0)
    (spool,) = (tmp_path / "spool").iterdir()
    for part in session._recorder._parts:  # type: ignore[union-attr]
        for fd in part.files.values():
            os.close(fd)  # the next write fails as a full disk would
    session.audio("inbound", np.zeros(160, dtype=np.int16), 160)  # no exception escapes
    session.audio("outbound", np.zeros(160, dtype=np.int16), 0)
    assert session.streams["inbound"].total_audio_bytes == 640  # audio still counted
    assert not spool.exists()
    await session.complete()
    assert recordings.for_call(key, time.time()) == []
    store.close()


# --------------------------------------------------------------------------- discontinuities


class SilentAsr:
    """Zeros and tones never reach the ASR (the VAD hears no speech); fail loudly if they do."""

    async def transcribe(self, request: object) -> object:
        raise AssertionError("no speech is sent")

    async def close(self) -> None:
        pass


async def recorded_session(recordings: Recordings, tmp_path: Path, guid: str):  # type: ignore[no-untyped-def]
    from callscribe.bus import InProcessEventBus
    from callscribe.calls import CallServices, CallSession
    from callscribe.config import EndpointingSettings
    from callscribe.model import StartRequest
    from callscribe.store.sqlite import SqliteStore
    from callscribe.transcription import TranscriptionPipeline

    store = SqliteStore(tmp_path / "s.sqlite3")
    pipeline = TranscriptionPipeline(SilentAsr(), store, InProcessEventBus(), 3600)  # type: ignore[arg-type]
    key = CallKey("acme", "twilio", guid)
    services = CallServices(store, pipeline, EndpointingSettings(), recordings=recordings)
    session = CallSession(
        key,
        services,
        channels=("inbound", "outbound"),
        channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
    )
    await session.open()
    request = StartRequest.model_validate(
        {
            "namespace": "twilio",
            "guid": guid,
            "customerId": "C",
            "agentId": "A",
            "autotranscribeParams": {"audioRecordingAllowed": True},
        }
    )
    await session.start(request)
    return session, store


def stored_wavs(blobs: DirectoryBlobStore, key: CallKey) -> list[tuple[int, np.ndarray]]:
    """(offset ms, frames) of each stored part of the call's recording, in timeline order."""
    found = []
    for info in Recordings(blobs, Path("/nonexistent"), 86400).for_call(key, time.time()):
        _, frames = read_wav(blobs.get(info.key))
        found.append((info.offset_ms, frames))
    return found


async def test_a_timestamp_jump_is_a_discontinuity_not_an_hour_of_silence(
    recordings: Recordings,
    blobs: DirectoryBlobStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twilio's media.timestamp jumps by an hour after 400 ms of audio: the recording must
    not fill the hour with silence (115 MB); the audio after the jump starts a new part whose
    offsetMs is its place on the call's timeline."""
    session, store = await recorded_session(recordings, tmp_path, "CA-jump")
    jump_ms = 3_600_000
    for n in range(20):  # 400 ms of both tracks, as Twilio sends them: 20 ms frames
        session.audio("inbound", tone(160, 11), n * 160)
        session.audio("outbound", tone(160, -11), n * 160)
    for n in range(10):  # then the source's timestamps jump by an hour
        at = jump_ms * RATE // 1000 + n * 160
        session.audio("inbound", tone(160, 22), at)
        session.audio("outbound", tone(160, -22), at)
    with caplog.at_level("WARNING", logger="callscribe.recording"):
        await session.complete()

    stored = sum(b.size for b in blobs.list("recordings/"))
    assert stored < 100_000, f"{stored} bytes stored for 600 ms of audio"
    (first_offset, first), (second_offset, second) = stored_wavs(blobs, session.key)
    assert first_offset == 0 and len(first) == 20 * 160
    assert (first[:, 0] == 11).all() and (first[:, 1] == -11).all()
    assert second_offset == jump_ms and len(second) == 10 * 160
    assert (second[:, 0] == 22).all() and (second[:, 1] == -22).all()
    assert recordings.discontinuities == 1
    assert any("discontinuity" in r.getMessage() for r in caplog.records)
    store.close()


async def test_a_gap_within_the_bound_stays_silence_in_the_same_part(
    blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    """A jump of 3 s (under the 5 s bound) keeps the timeline in one file, filled with
    silence, as do the windows between a stop and the next start (a hold)."""
    recordings = Recordings(
        blobs, tmp_path / "spool", 86400, RecordingSettings(max_gap_fill_ms=5000)
    )
    session, store = await recorded_session(recordings, tmp_path, "CA-short-gap")
    for n in range(10):
        session.audio("inbound", tone(160, 5), n * 160)
        session.audio("outbound", tone(160, 6), n * 160)
    resume = 10 * 160 + 3 * RATE
    for n in range(10):
        session.audio("inbound", tone(160, 7), resume + n * 160)
        session.audio("outbound", tone(160, 8), resume + n * 160)
    await session.complete()

    ((offset, frames),) = stored_wavs(blobs, session.key)
    assert offset == 0 and len(frames) == 20 * 160 + 3 * RATE
    assert (frames[1600:resume] == 0).all()
    assert (frames[resume:, 0] == 7).all() and (frames[resume:, 1] == 8).all()
    assert recordings.discontinuities == 0
    store.close()


def sox_read(path: Path) -> tuple[int, int, int, np.ndarray]:
    """(channels, rate, samples per channel, frames) of a WAV as sox reads it."""
    info = {
        flag: int(
            subprocess.run(
                ["soxi", flag, str(path)], capture_output=True, text=True, check=True
            ).stdout
        )
        for flag in ("-c", "-r", "-s")
    }
    raw = subprocess.run(
        ["sox", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-"],
        capture_output=True,
        check=True,
    ).stdout
    frames = np.frombuffer(raw, dtype="<i2").reshape(-1, info["-c"])
    return info["-c"], info["-r"], info["-s"], frames


def test_a_long_recording_is_split_into_parts_that_sox_reads(
    blobs: DirectoryBlobStore, tmp_path: Path, sox_tool: None
) -> None:
    """Parts of at most max_part_bytes (here ~1 s, in production well under WAV's 4 GB): each a
    valid WAV, contiguous on the call's timeline, together sample-exact."""
    max_part_bytes = 44 + 4 * RATE  # one second of stereo audio per part
    recordings = Recordings(
        blobs, tmp_path / "spool", 86400, RecordingSettings(max_part_bytes=max_part_bytes)
    )
    recorder = recordings.recorder(KEY, origin_sample=4000)
    seconds = 7.5
    total = int(seconds * RATE)
    customer = (np.arange(total) % 30000).astype(np.int16)
    agent = (-(np.arange(total) % 20000)).astype(np.int16)
    for start in range(0, total, 160):
        recorder.write(Role.CUSTOMER, 4000 + start, customer[start : start + 160])
        recorder.write(Role.AGENT, 4000 + start, agent[start : start + 160])
    stored = recorder.finish()
    assert len(stored) == 8

    parts = recordings.for_call(KEY, time.time())
    assert [p.offset_ms for p in parts] == [500 + 1000 * n for n in range(8)]
    joined = []
    for part in parts:
        assert part.bytes <= max_part_bytes
        path = blobs.open_path(part.key)
        channels, rate, samples, frames = sox_read(path)
        assert (channels, rate) == (2, RATE)
        assert samples == len(frames) == part.duration_ms * RATE // 1000
        joined.append(frames)
    everything = np.concatenate(joined)
    assert len(everything) == total
    assert (everything[:, 0] == customer).all() and (everything[:, 1] == agent).all()


def test_audio_behind_a_part_that_began_after_a_jump_is_dropped_not_an_error(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    """The first audio recorded comes after a jump (the part begins there); the other
    speaker's frames from before the jump arrive afterwards and are dropped, while the other
    speaker's frames after the jump land in the part."""
    hour = 3600 * RATE
    recorder = recordings.recorder(KEY, origin_sample=0)
    recorder.write(Role.CUSTOMER, hour, tone(160, 3), skipped_samples=hour)
    recorder.write(Role.AGENT, 160, tone(160, 4))
    recorder.write(Role.AGENT, hour - 80, tone(160, 5), skipped_samples=hour - 240)
    (info,) = recorder.finish()
    _, frames = read_wav(blobs.get(info.key))
    assert recording_info(info).offset_ms == 3_600_000  # type: ignore[union-attr]
    assert len(frames) == 160
    assert (frames[:, 0] == 3).all()
    assert (frames[:80, 1] == 5).all() and (frames[80:, 1] == 0).all()


async def test_the_after_call_api_serves_every_part_of_a_real_twilio_call(
    server_factory: Any, receiver: Any
) -> None:
    """A real Twilio Media Stream into a real server: 2.5 s of audio, an hour's jump in
    media.timestamp, 1 s more. The recording endpoint lists the parts in timeline order
    (1 s parts here), and each link downloads a WAV holding exactly that audio."""
    import asyncio
    import uuid

    import httpx
    import websockets

    from callscribe.audio import ulaw_to_pcm16
    from callscribe.twilio.protocol import TwilioStreamWriter

    server = await server_factory(
        receiver.url,
        recording=RecordingSettings(max_part_bytes=44 + 4 * RATE),
        # The intake pacer reads the jump as an hour of audio sent at once; at its default
        # 25x it would hold the stream for 144 s. This bound lets it through in about 3 s.
        twilio=TwilioSettings(max_speed=1000, burst_s=600),
    )
    api = server.client("acme")
    call_sid = "CA" + uuid.uuid4().hex
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "4" * 32)
    payloads = {"inbound": bytes([0xF0]) * 160, "outbound": bytes([0x70]) * 160}
    jump_ms = 3_600_000
    async with websockets.connect(await api.stream_url()) as ws:
        await ws.send(writer.start())
        deadline = time.monotonic() + 30
        while (
            started := await api.start(call_sid, "C1", "A1", audioRecordingAllowed=True)
        ).status_code != 200:
            assert time.monotonic() < deadline, started.text
            await asyncio.sleep(0.1)
        timestamps = [n * 20 for n in range(125)] + [jump_ms + n * 20 for n in range(50)]
        for timestamp in timestamps:
            for track, payload in payloads.items():
                await ws.send(writer.media(track, payload, timestamp))
        await ws.send(writer.stop())
        # Hang up as Twilio does: the gateway closes the socket once the stream stopped.
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), timeout=30)
        deadline = time.monotonic() + 60
        while not (await api.messages(call_sid)).json()["complete"]:
            assert time.monotonic() < deadline, "the call never completed"
            await asyncio.sleep(0.1)

    parts = (await api.recording(call_sid)).json()["recordings"]
    assert [(p["offsetMs"], p["durationMs"]) for p in parts] == [
        (0, 1000),
        (1000, 1000),
        (2000, 500),
        (jump_ms, 1000),
    ]
    expected = np.stack(
        [ulaw_to_pcm16(payloads["inbound"][:1]), ulaw_to_pcm16(payloads["outbound"][:1])], axis=1
    )
    async with httpx.AsyncClient(timeout=60) as http:
        for part in parts:
            response = await http.get(part["url"])
            assert response.status_code == 200 and len(response.content) == part["bytes"]
            _, frames = read_wav(response.content)
            assert len(frames) == part["durationMs"] * RATE // 1000
            assert (frames == expected).all()
    assert server.runtime.api.outputs.recordings.discontinuities == 1


async def test_a_timestamp_jump_during_a_hold_is_a_discontinuity_too(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    """The jump comes while transcription is stopped (nothing recorded then): when recording
    resumes, the hour the timestamps skipped is still not written as silence, while the hold's
    own few seconds of real time are."""
    from callscribe.model import StartRequest

    session, store = await recorded_session(recordings, tmp_path, "CA-hold-jump")
    for n in range(20):
        session.audio("inbound", tone(160, 1), n * 160)
    await session.stop()
    for n in range(20, 50):  # 600 ms of hold, then the jump, then more hold
        session.audio("inbound", tone(160, 2), n * 160)
    hour = 3600 * RATE
    for n in range(10):
        session.audio("inbound", tone(160, 2), hour + n * 160)
    await session.start(
        StartRequest.model_validate(
            {
                "namespace": "twilio",
                "guid": "CA-hold-jump",
                "autotranscribeParams": {"audioRecordingAllowed": True},
            }
        )
    )
    for n in range(10, 20):
        session.audio("inbound", tone(160, 3), hour + n * 160)
    await session.complete()

    assert sum(b.size for b in blobs.list("recordings/")) < 100_000
    (first_offset, first), (second_offset, second) = stored_wavs(blobs, session.key)
    assert (first_offset, len(first)) == (0, 20 * 160) and (first[:, 0] == 1).all()
    assert (second_offset, len(second)) == (3_600_000 + 200, 10 * 160)
    assert (second[:, 0] == 3).all()
    store.close()
