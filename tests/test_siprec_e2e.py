"""SIPREC end to end on loopback: sipp plays the SBC (SIP over UDP/TCP, tests/sipp/*.xml), a
small RTP sender plays the generated two-party sample call as PCMU, PCMA or G.729 (encoded by
libbcg729), a real server transcribes it with the real Whisper model, and a real webhook
receives the transcripts."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jiwer
import pytest

from callscribe.asr.base import AsrEngine, AsrRequest, AsrResult
from callscribe.config import SiprecSettings
from callscribe.redaction import redact
from callscribe.simulate import SampleCall, WebhookReceiver, load_sample_call
from callscribe.siprec.callid import ucid_from_user_to_user
from callscribe.store.base import CallKey
from tests.conftest import RunningServer
from tests.siprec_support import (
    FRAME_MS,
    PAYLOAD_TYPES,
    RtpPlayback,
    SiprecApi,
    encode_track,
    start_sipp,
)
from tests.test_e2e_twilio import normalise, transcribed_windows, wait_for_quiet

SPEED = 4.0
TENANT = "acme"
CUSTOMER_AOR = "sip:+14155550123@carrier.example.com"
AGENT_AOR = "sip:4001@cc.example.com"


def ucid_hex(node: int, sequence: int, timestamp: int) -> str:
    return f"00FA08{node:04X}{sequence:04X}{timestamp:08X}"


@pytest.fixture(scope="module")
def sample_call() -> SampleCall:
    return load_sample_call()


@pytest.fixture
async def siprec_server(
    server_factory: Callable[..., Awaitable[RunningServer]], receiver: WebhookReceiver
) -> RunningServer:
    return await server_factory(
        receiver.url, siprec=SiprecSettings(port=0, tenant=TENANT, agent_pattern=r"^sip:4\d{3}@")
    )


def sip_target(server: RunningServer) -> tuple[str, int]:
    assert server.runtime.siprec is not None
    return "127.0.0.1", server.runtime.siprec.port


def api_for(server: RunningServer, tenant: str = TENANT) -> SiprecApi:
    issued = server.issue_key(tenant)
    return SiprecApi(server.base_url, issued.api_id, issued.api_secret)


def test_sipp_is_installed() -> None:
    result = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=30)
    assert "SIPp v3" in result.stdout + result.stderr  # sipp -v exits 99 by design


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G729"])
async def test_siprec_call_transcribed_end_to_end(
    codec: str,
    siprec_server: RunningServer,
    receiver: WebhookReceiver,
    sample_call: SampleCall,
    tmp_path: Path,
) -> None:
    api = api_for(siprec_server)
    uui = ucid_hex(2, 54239 + PAYLOAD_TYPES[codec], 1662063156)
    guid = ucid_from_user_to_user(uui)
    assert guid is not None and guid.startswith("00002")
    payloads = {
        "1": encode_track(sample_call.tracks["inbound"], codec),
        "2": encode_track(sample_call.tracks["outbound"], codec),
    }
    frames = min(len(p) for p in payloads.values())
    play_s = frames * FRAME_MS / 1000 / SPEED

    # Before the INVITE there is no such call.
    early = await api.start(guid, sample_call.customer_id, sample_call.agent_id)
    assert early.status_code == 400 and early.json()["error"]["code"] == "400-203"

    sipp = await start_sipp(
        "siprec_call",
        sip_target(siprec_server),
        tmp_path / "sipp",
        pause_ms=int((play_s + 4) * 1000),
        injection=[[uui, str(PAYLOAD_TYPES[codec]), codec, CUSTOMER_AOR, AGENT_AOR]],
    )
    answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
    ports = {"1": int(answered.group(1)), "2": int(answered.group(2))}
    playback = RtpPlayback(
        {label: ("127.0.0.1", port) for label, port in ports.items()},
        payloads,
        PAYLOAD_TYPES[codec],
        speed=SPEED,
    )

    controls = sorted(sample_call.controls, key=lambda c: c.at_ms)
    responses: list[tuple[str, int, dict[str, Any]]] = []
    pending: list[asyncio.Task[None]] = []

    async def control(action: str, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await after
        if action == "start":
            response = await api.start(guid, sample_call.customer_id, sample_call.agent_id)
        else:
            response = await api.stop(guid)
        responses.append((action, response.status_code, response.json()))

    next_control = 0

    def on_frame(frame: int) -> None:
        nonlocal next_control
        while next_control < len(controls) and controls[next_control].at_ms <= frame * FRAME_MS:
            previous = pending[-1] if pending else None
            pending.append(asyncio.get_running_loop().create_task(control(controls[next_control].action, previous)))
            next_control += 1

    await playback.play(on_frame=on_frame)
    for remaining in controls[next_control:]:
        previous = pending[-1] if pending else None
        pending.append(asyncio.get_running_loop().create_task(control(remaining.action, previous)))
    await asyncio.gather(*pending)

    assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-3000:]
    assert any(line.startswith(f"bye-answered {uui}") for line in sipp.logged())
    await wait_for_quiet(receiver)

    assert [(a, s) for a, s, _ in responses] == [("start", 200), ("stop", 200), ("start", 200), ("stop", 200)], responses
    messages = [m.body for m in receiver.messages]
    assert len(messages) >= 8
    windows = transcribed_windows(sample_call)
    for body in messages:
        assert body["externalConversationId"] == guid
        r = body["autotranscribeResponse"]
        assert any(lo - 100 <= r["start"] and r["end"] <= hi + 500 for lo, hi in windows), r
    # Roles: stream 1 is the caller (customer) by SDP order, and the agent pattern agrees.
    errors = {}
    for track, role in (("inbound", "customer"), ("outbound", "agent")):
        reference = " ".join(
            redact(s.text) for s in sample_call.segments if s.track == track and s.transcribed
        )
        hypothesis = " ".join(
            " ".join(u["text"] for u in b["autotranscribeResponse"]["utterance"])
            for b in messages
            if b["sender"]["role"] == role
        )
        errors[role] = jiwer.wer(normalise(reference), normalise(hypothesis))
        assert errors[role] <= 0.25, (codec, role, errors[role], reference, hypothesis)
        expected_id = sample_call.customer_id if role == "customer" else sample_call.agent_id
        assert {b["sender"]["externalId"] for b in messages if b["sender"]["role"] == role} == {expected_id}
    print(f"\nSIPREC {codec}: WER customer {errors['customer']:.3f}, agent {errors['agent']:.3f}, "
          f"{len(messages)} messages")

    # The final stop's summary counts the audio received up to it (16-bit PCM at 8 kHz).
    final_stop = controls[-1]
    summary = responses[-1][2]["autotranscribeResponse"]
    expected_bytes = final_stop.at_ms * 16
    for role in ("customer", "agent"):
        total = summary[role]["summary"]["totalAudioBytes"]
        assert abs(total - expected_bytes) <= 0.03 * expected_bytes, (role, total, expected_bytes)

    # BYE completed the call: the after-call API has every message.
    after = await api.messages(guid)
    assert after.status_code == 200
    assert after.json()["complete"] is True and after.json()["namespace"] == "siprec"
    assert after.json()["messages"] == messages
    late = await api.start(guid, sample_call.customer_id, sample_call.agent_id)
    assert late.json()["error"]["code"] == "400-203"
    stats = siprec_server.runtime.siprec.snapshot()
    assert stats["liveSessions"] == 0 and stats["sessionsAnswered"] == 1
    await api.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_options_ping_answered(siprec_server: RunningServer, tmp_path: Path, transport: str) -> None:
    sipp = await start_sipp("siprec_options", sip_target(siprec_server), tmp_path, transport=transport, calls=3)
    assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-2000:]
    answers = [line for line in sipp.logged() if line.startswith("options-answered")]
    assert len(answers) == 3
    assert all("INVITE" in line and "BYE" in line and "UPDATE" in line for line in answers)


async def test_cancel_before_answer(siprec_server: RunningServer, tmp_path: Path) -> None:
    """The SBC cancels while the recorder is still registering the call (its database is busy:
    another connection holds the write lock), so the CANCEL deterministically comes first."""
    api = api_for(siprec_server)
    uui = ucid_hex(3, 1, 1700000000)
    guid = ucid_from_user_to_user(uui)
    store_path = siprec_server.runtime.store.path
    blocker = sqlite3.connect(store_path, timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        sipp = await start_sipp("siprec_cancel", sip_target(siprec_server), tmp_path, injection=[[uui]])
        assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-2000:]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log = sipp.logged()
    assert any(line.startswith(f"cancel-answered {uui}") for line in log)
    assert any(line.startswith(f"invite-terminated {uui}") for line in log)
    # The set-up finishes after the lock is gone and sees the CANCEL: the call ends.
    gateway = siprec_server.runtime.siprec
    deadline = time.monotonic() + 60
    while gateway.live_sessions or gateway.recording_of(guid) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert gateway.snapshot()["sessionsAnswered"] == 0
    after = await api.messages(guid)
    assert after.status_code == 200 and after.json()["complete"] is True
    assert after.json()["messages"] == []
    await api.close()


@pytest.mark.parametrize(
    ("bad_header", "metadata", "reason"),
    [
        ("This-Line-Has-No-Colon", '<recording xmlns="urn:ietf:params:xml:ns:recording:1"/>', "malformed header line"),
        ("X-Fine: yes", '<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>', "bad recording metadata"),
    ],
)
async def test_malformed_invite_gets_400(
    siprec_server: RunningServer, tmp_path: Path, bad_header: str, metadata: str, reason: str
) -> None:
    sipp = await start_sipp(
        "siprec_malformed", sip_target(siprec_server), tmp_path, injection=[[bad_header, metadata]]
    )
    assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-2000:]
    (rejected,) = [line for line in sipp.logged() if line.startswith("rejected")]
    assert reason in rejected
    assert siprec_server.runtime.siprec.live_sessions == 0


class GatedAsr:
    """The real engine behind a gate, so a test can hold transcription while a BYE is being
    processed (AsrEngine is a port; the model still does the work)."""

    def __init__(self, engine: AsrEngine) -> None:
        self.engine = engine
        self.gate = asyncio.Event()
        self.waiting = 0

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.waiting += 1
        await self.gate.wait()
        return await self.engine.transcribe(request)

    async def close(self) -> None:
        pass


async def test_start_stop_during_bye_get_409_203(
    server_factory: Callable[..., Awaitable[RunningServer]],
    receiver: WebhookReceiver,
    asr_engine: AsrEngine,
    sample_call: SampleCall,
    tmp_path: Path,
) -> None:
    gated = GatedAsr(asr_engine)
    server = await server_factory(receiver.url, siprec=SiprecSettings(port=0, tenant=TENANT))
    # Swap the engine of this server's pipeline for the gated one (warm-up already done).
    server.runtime.pipeline.asr = gated  # type: ignore[assignment]
    api = api_for(server)
    uui = ucid_hex(4, 77, 1700000001)
    guid = ucid_from_user_to_user(uui)
    line = next(s for s in sample_call.segments if s.transcribed and s.track == "outbound")
    first, last = (line.start_ms - 400) // FRAME_MS, (line.end_ms + 1200) // FRAME_MS
    payloads = {
        "1": encode_track(sample_call.tracks["inbound"], "PCMU"),
        "2": encode_track(sample_call.tracks["outbound"], "PCMU"),
    }
    sipp = await start_sipp(
        "siprec_call", sip_target(server), tmp_path, pause_ms=int((last - first) * FRAME_MS / SPEED + 1500),
        injection=[[uui, "0", "PCMU", CUSTOMER_AOR, AGENT_AOR]],
    )
    answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
    assert (await api.start(guid, "C9", "A9")).status_code == 200
    playback = RtpPlayback(
        {"1": ("127.0.0.1", int(answered.group(1))), "2": ("127.0.0.1", int(answered.group(2)))},
        payloads, 0, speed=SPEED,
    )
    await playback.play(first_frame=first, last_frame=last)
    # The agent's line ended: its utterance waits at the gate. Then the SBC hangs up.
    assert await sipp.finish() == 0
    call = server.runtime.registry.get(CallKey(TENANT, "siprec", guid))
    assert call is not None and call.closing
    for response in (await api.stop(guid), await api.start(guid, "C9", "A9")):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "409-203"
    gated.gate.set()
    deadline = time.monotonic() + 60
    while True:
        after = await api.messages(guid)
        if after.json()["complete"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    texts = [m["autotranscribeResponse"]["utterance"][0]["text"] for m in after.json()["messages"]]
    assert texts, "the utterance held during the BYE was still transcribed"
    stopped = await api.stop(guid)
    assert stopped.json()["error"]["code"] == "400-203"
    await api.close()
