"""The whole Twilio path on loopback: a generated two-party call streamed as a real Twilio
Media Stream into a real server, real Whisper, a real HTTP webhook receiver."""

from __future__ import annotations

import asyncio
import re
import time

import jiwer
import pytest

from callscribe.redaction import redact
from callscribe.testing.simulate import (
    FRAME_BYTES,
    PlayedCall,
    SampleCall,
    WebhookReceiver,
    load_sample_call,
    play_call,
)
from tests.conftest import WEBHOOK_SECRET, WEBHOOK_SECRET_NAME, RunningServer

pytestmark = pytest.mark.e2e

SPEED = 4.0  # faster than real time; the pipeline is driven by the audio, not the clock


def normalise(text: str) -> str:
    text = text.lower().replace("#", " hash ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def transcribed_windows(call: SampleCall) -> list[tuple[int, int]]:
    controls = sorted(call.controls, key=lambda c: c.at_ms)
    windows, opened = [], None
    for control in controls:
        if control.action == "start":
            opened = control.at_ms
        elif opened is not None:
            windows.append((opened, control.at_ms))
            opened = None
    return windows


async def wait_for_quiet(
    receiver: WebhookReceiver, quiet_s: float = 2.0, limit_s: float = 60
) -> None:
    deadline = time.monotonic() + limit_s
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(receiver.messages) != seen:
            seen, since = len(receiver.messages), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def sample_call() -> SampleCall:
    return load_sample_call()


async def test_two_party_call_end_to_end(
    server: RunningServer, receiver: WebhookReceiver, sample_call: SampleCall
) -> None:
    api = server.client("acme")
    played = PlayedCall(call_sid="CA5b040e075515c424391012acc5a870cf", speed=SPEED)
    await play_call(await api.stream_url(), sample_call, api, played=played)
    await wait_for_quiet(receiver)

    # Every start and stop succeeded; Twilio's stream ended normally.
    statuses = [(c.action, r.status_code) for c, r in played.control_responses]
    assert statuses == [("start", 200), ("stop", 200), ("start", 200), ("stop", 200)]
    assert played.close_code == 1000

    messages = [m.body for m in receiver.messages]
    assert len(messages) >= 8

    # Webhook requests carry the configured secret.
    assert all(m.headers[WEBHOOK_SECRET_NAME.lower()] == WEBHOOK_SECRET for m in receiver.messages)

    # Shape of every message, and who said it.
    stream_ids = {}
    for body in messages:
        assert body["type"] == "transcript"
        assert body["externalConversationId"] == played.call_sid
        role = body["sender"]["role"]
        assert role in ("customer", "agent")
        expected_id = sample_call.customer_id if role == "customer" else sample_call.agent_id
        assert body["sender"]["externalId"] == expected_id
        stream_ids.setdefault(role, set()).add(body["streamId"])
        response = body["autotranscribeResponse"]
        assert response["message"] == "transcript"
        assert 0 <= response["start"] < response["end"] <= sample_call.duration_ms
        assert response["utterance"][0]["text"].strip()
    # One stream per participant across the hold (same agent, same customer).
    assert {role: len(ids) for role, ids in stream_ids.items()} == {"customer": 1, "agent": 1}

    # Nothing from the IVR prelude or the hold music: every message lies in a window where
    # transcription was on.
    windows = transcribed_windows(sample_call)
    for body in messages:
        r = body["autotranscribeResponse"]
        assert any(lo - 100 <= r["start"] and r["end"] <= hi + 500 for lo, hi in windows), r

    # Accuracy: WER over each participant's transcribed lines, against the redacted script.
    for track, role in (("inbound", "customer"), ("outbound", "agent")):
        reference = " ".join(
            redact(s.text) for s in sample_call.segments if s.track == track and s.transcribed
        )
        hypothesis = " ".join(
            " ".join(u["text"] for u in b["autotranscribeResponse"]["utterance"])
            for b in messages
            if b["sender"]["role"] == role
        )
        error = jiwer.wer(normalise(reference), normalise(hypothesis))
        assert error <= 0.25, (role, error, reference, hypothesis)

    # The PIN is redacted.
    pin = next(s for s in sample_call.segments if s.contains_pin)
    pin_messages = [
        b
        for b in messages
        if b["sender"]["role"] == "customer"
        and b["autotranscribeResponse"]["start"] < pin.end_ms
        and b["autotranscribeResponse"]["end"] > pin.start_ms
    ]
    assert pin_messages
    pin_text = " ".join(
        u["text"] for b in pin_messages for u in b["autotranscribeResponse"]["utterance"]
    )
    assert "####" in pin_text
    assert not re.search(r"\d|four|seven|two|nine", pin_text.lower()), pin_text

    # The final stop's summary matches the audio sent up to then (16-bit PCM at 8 kHz): at
    # least what was sent before the request left, at most what was sent when it was answered.
    final_stop, final_response = played.control_responses[-1]
    frames_before, frames_after = played.control_frames[-1]
    summary_body = final_response.json()["autotranscribeResponse"]
    for role in ("customer", "agent"):
        summary = summary_body[role]["summary"]
        low, high = frames_before * FRAME_BYTES * 2, frames_after * FRAME_BYTES * 2
        assert low * 0.99 <= summary["totalAudioBytes"] <= high * 1.01, (summary, low, high)
        assert abs(summary["audioDurationMs"] - summary["totalAudioBytes"] / 16) <= 1
        assert summary["transcripts"] == sum(1 for b in messages if b["sender"]["role"] == role)
        assert summary["streamingSeconds"] >= 1

    # After-call: the same messages, in the same order.
    after = await api.messages(played.call_sid)
    assert after.status_code == 200
    body = after.json()
    assert body["complete"] is True
    assert body["namespace"] == "twilio"
    assert body["messages"] == messages

    # A second tenant can neither see nor control the call.
    intruder = server.client("globex")
    for response in (
        await intruder.messages(played.call_sid),
        await intruder.start(played.call_sid, "x", "y"),
        await intruder.stop(played.call_sid),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "400-203"
