"""Outputs of real calls, end to end: the sample call streamed as a real Twilio Media Stream
into a real server with real Whisper. A slow tenant target (drops recorded, order kept,
nothing lost from the after-call API, signed messages) with the call's recording kept and
checked sample by sample; an erroring target with recording not allowed (no audio anywhere)."""

from __future__ import annotations

import io
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from callscribe.audio import ulaw_to_pcm16
from callscribe.testing.simulate import (
    PlayedCall,
    SampleCall,
    load_sample_call,
    play_call,
    running_receiver,
)
from callscribe.webhooks.management import set_webhook, signing_secret
from callscribe.webhooks.signing import verify
from tests.conftest import RunningServer

pytestmark = pytest.mark.e2e

SPEED = 4.0
FRAME = 160  # 20 ms at 8 kHz


@pytest.fixture(scope="module")
def sample_call() -> SampleCall:
    return load_sample_call()


def first_window(call: SampleCall) -> SampleCall:
    controls = sorted(call.controls, key=lambda c: c.at_ms)[:2]
    end_ms = controls[1].at_ms + 500
    return type(call)(
        tracks={t: b[: end_ms * 8] for t, b in call.tracks.items()},
        duration_ms=end_ms,
        customer_id=call.customer_id,
        agent_id=call.agent_id,
        controls=tuple(controls),
        segments=call.segments,
    )


async def drained(server: RunningServer, timeout_s: float = 120) -> None:
    await server.runtime.dispatcher.drain(timeout_s)
    assert server.runtime.dispatcher.pending == 0


async def test_slow_target_and_recording(server_factory: Any, sample_call: SampleCall) -> None:
    # A target slower than the call's pace: messages queue; beyond 2 pending the oldest go.
    async with running_receiver(delay_s=6.0) as slow:
        server: RunningServer = await server_factory(
            None, webhook={"max_pending": 2}, link_ttl_s=300
        )
        runtime = server.runtime
        set_webhook(
            runtime.store,
            runtime.secrets,
            tenant="acme",
            url=slow.url,
            timeout_s=20,
            token_name="X-Acme",
            token="acme-token",
        )
        api = server.client("acme")
        played = PlayedCall(call_sid="CA" + "a1" * 16, speed=SPEED)
        await play_call(
            await api.stream_url(),
            sample_call,
            api,
            played=played,
            autotranscribe_params={"audioRecordingAllowed": True},
        )
        await drained(server)

    after = (await api.messages(played.call_sid)).json()
    assert after["complete"] is True
    stored = runtime.store.list_messages(
        next(iter(runtime.store.find_calls("acme", played.call_sid))).key, 1000, time.time()
    )
    assert [m.body for m in stored] == after["messages"]  # nothing lost
    all_ids = [m.message_id for m in stored]
    assert len(all_ids) >= 8

    # Delivered in transcription order, each signed with the tenant's secret and token.
    secret = signing_secret(runtime.secrets, "acme")
    delivered = [verify(secret, m.headers, m.raw) for m in slow.messages]
    assert all(m.headers["x-acme"] == "acme-token" for m in slow.messages)
    positions = [all_ids.index(message_id) for message_id in delivered]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)

    # The rest were dropped, oldest first, and each drop is listed by the API.
    failures = (await api.webhook_failures(externalConversationId=played.call_sid)).json()[
        "failures"
    ]
    dropped = [f["messageId"] for f in failures]
    assert dropped and all(f["reason"] == "dropped: more than 2 pending" for f in failures)
    assert sorted(dropped + delivered, key=all_ids.index) == all_ids
    assert set(dropped).isdisjoint(delivered)
    assert (await server.client("globex").webhook_failures()).json() == {"failures": []}

    # The recording: a stereo WAV of the transcribed windows, sample-exact against the call.
    answer = (await api.recording(played.call_sid)).json()
    (recording,) = answer["recordings"]
    assert recording["channels"] == ["customer", "agent"]
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(recording["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert recording["bytes"] == len(response.content)
    assert recording["durationMs"] == len(frames) * 1000 // 8000
    offset_ms = recording["offsetMs"]
    controls = sorted(sample_call.controls, key=lambda c: c.at_ms)
    first_start, first_stop, second_start, last_stop = (c.at_ms for c in controls)
    # Recording began when the first start arrived (never during the IVR before it).
    assert first_start <= offset_ms < first_start + 2000
    assert offset_ms + recording["durationMs"] <= sample_call.duration_ms
    origin = offset_ms * 8
    for channel, track in enumerate(("inbound", "outbound")):  # customer, agent
        source = ulaw_to_pcm16(sample_call.tracks[track])
        recorded = frames[:, channel]
        # Every sample is either the call's audio at that position or silence...
        expected = source[origin : origin + len(recorded)]
        assert not recorded[recorded != expected].any(), track

        def window(
            lo_ms: int, hi_ms: int, recorded: np.ndarray = recorded, source: np.ndarray = source
        ) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = lo_ms * 8 - origin, hi_ms * 8 - origin
            return recorded[lo:hi], source[lo + origin : hi + origin]

        # ...the heart of each transcribed window is the call's audio, but for the PIN the
        # customer speaks (redaction is on by default: the digits are silence)...
        (pin,) = [seg for seg in sample_call.segments if seg.contains_pin]
        for lo_ms, hi_ms in (
            (first_start + 2000, first_stop - 500),
            (second_start + 2000, pin.start_ms - 500),
            (pin.end_ms + 1000, last_stop - 2000),
        ):
            got, want = window(lo_ms, hi_ms)
            assert np.array_equal(got, want), track
        got, want = window(pin.start_ms, pin.end_ms)
        if track == "inbound":
            assert recording["redacted"] is True
            assert np.count_nonzero((got == 0) & (want != 0)) > 8000, "the PIN was kept"
        else:
            assert np.array_equal(got, want)
        # ...and the hold between stop and start is silence, although music played.
        got, want = window(first_stop + 500, second_start - 500)
        assert not got.any()
        if track == "outbound":
            assert np.abs(want).max() > 1000  # the hold music that was not kept


async def test_erroring_target_and_no_recording(
    server_factory: Any, sample_call: SampleCall, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a temp file would land
    async with running_receiver(status_code=500) as erroring:
        server: RunningServer = await server_factory(None)
        runtime = server.runtime
        set_webhook(runtime.store, runtime.secrets, tenant="globex", url=erroring.url)
        api = server.client("globex")
        played = PlayedCall(call_sid="CA" + "b2" * 16, speed=SPEED)
        await play_call(
            await api.stream_url(),
            first_window(sample_call),
            api,
            played=played,
            autotranscribe_params={"audioRecordingAllowed": False},
        )
        await drained(server)

    after = (await api.messages(played.call_sid)).json()
    assert len(after["messages"]) >= 3
    # Every message was attempted once, failed, recorded; none lost from the after-call API.
    assert [m.body for m in erroring.messages] == after["messages"]
    failures = (await api.webhook_failures()).json()["failures"]
    assert [f["messageId"] for f in failures] == [
        m.headers["webhook-id"] for m in erroring.messages
    ]
    assert all(f["statusCode"] == 500 and f["reason"] == "http 500" for f in failures)
    since = (await api.webhook_failures(since="2999-01-01T00:00:00Z")).json()
    assert since == {"failures": []}

    # No audio kept anywhere: no recording offered, no audio file on disk.
    assert (await api.recording(played.call_sid)).json()["recordings"] == []
    data_dir = runtime.settings.data_dir
    audio = [p for p in data_dir.rglob("*") if p.suffix in (".wav", ".pcm")]
    assert audio == []
    spool = runtime.settings.spool_dir
    assert not spool.exists() or list(spool.iterdir()) == []
    assert list(scratch.iterdir()) == []
    assert runtime.blobs.list("recordings/") == []

    unknown = await api.recording("CA-never")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "400-203"
