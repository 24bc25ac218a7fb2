"""SIPREC end to end on loopback: sipp plays the SBC (SIP over UDP/TCP, tests/sipp/*.xml), a
small RTP sender plays the generated two-party sample call as PCMU, PCMA or G.729 (encoded by
libbcg729), a real server transcribes it with the real Whisper model, and a real webhook
receives the transcripts."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jiwer
import pytest

from callscribe.asr.base import AsrEngine
from callscribe.config import SiprecSettings
from callscribe.redaction import redact
from callscribe.siprec.callid import ucid_from_user_to_user
from callscribe.siprec.rtp import RtpPacket, build_rtp
from callscribe.store.base import CallKey
from callscribe.testing.simulate import SampleCall, WebhookReceiver, load_sample_call
from tests.conftest import GatedAsr, RunningServer
from tests.siprec_support import (
    AGENT_AOR,
    CUSTOMER_AOR,
    FRAME_MS,
    PAYLOAD_TYPES,
    RtpPlayback,
    SiprecApi,
    avaya_invite,
    bind_rtp_sockets,
    encode_track,
    source_ports,
    start_sipp,
)
from tests.test_e2e_twilio import normalise, transcribed_windows, wait_for_quiet
from tests.test_siprec_uas import with_length

pytestmark = pytest.mark.e2e

SPEED = 4.0
TENANT = "acme"


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

    sources = bind_rtp_sockets(["1", "2"])
    sipp = await start_sipp(
        "siprec_call",
        sip_target(siprec_server),
        tmp_path / "sipp",
        pause_ms=int((play_s + 4) * 1000),
        injection=[
            [uui, str(PAYLOAD_TYPES[codec]), codec, CUSTOMER_AOR, AGENT_AOR, *source_ports(sources)]
        ],
    )
    answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
    ports = {"1": int(answered.group(1)), "2": int(answered.group(2))}
    playback = RtpPlayback(
        {label: ("127.0.0.1", port) for label, port in ports.items()},
        payloads,
        PAYLOAD_TYPES[codec],
        sources=sources,
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
            pending.append(
                asyncio.get_running_loop().create_task(
                    control(controls[next_control].action, previous)
                )
            )
            next_control += 1

    await playback.play(on_frame=on_frame)
    for remaining in controls[next_control:]:
        previous = pending[-1] if pending else None
        pending.append(asyncio.get_running_loop().create_task(control(remaining.action, previous)))
    await asyncio.gather(*pending)

    assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-3000:]
    assert any(line.startswith(f"bye-answered {uui}") for line in sipp.logged())
    await wait_for_quiet(receiver)

    assert [(a, s) for a, s, _ in responses] == [
        ("start", 200),
        ("stop", 200),
        ("start", 200),
        ("stop", 200),
    ], responses
    messages = [m.body for m in receiver.messages]
    assert len(messages) >= 8
    windows = transcribed_windows(sample_call)
    for body in messages:
        assert body["externalConversationId"] == guid
        r = body["autotranscribeResponse"]
        assert any(lo - 100 <= r["start"] and r["end"] <= hi + 500 for lo, hi in windows), r
    # Roles: stream 1 is the caller (customer) by SDP order, and the agent pattern agrees.
    # Accuracy as in the Twilio test, over the whole call; per role the bound is looser, as one
    # Whisper repetition loop in the customer's 40 words costs more than a quarter of them
    # (a swapped or missing stream still fails it by far).
    errors, references, hypotheses = {}, [], []
    for track, role in (("inbound", "customer"), ("outbound", "agent")):
        reference = " ".join(
            redact(s.text) for s in sample_call.segments if s.track == track and s.transcribed
        )
        hypothesis = " ".join(
            " ".join(u["text"] for u in b["autotranscribeResponse"]["utterance"])
            for b in messages
            if b["sender"]["role"] == role
        )
        references.append(normalise(reference))
        hypotheses.append(normalise(hypothesis))
        errors[role] = jiwer.wer(normalise(reference), normalise(hypothesis))
        assert errors[role] <= 0.35, (codec, role, errors[role], reference, hypothesis)
        expected_id = sample_call.customer_id if role == "customer" else sample_call.agent_id
        assert {b["sender"]["externalId"] for b in messages if b["sender"]["role"] == role} == {
            expected_id
        }
    overall = jiwer.wer(" ".join(references), " ".join(hypotheses))
    assert overall <= 0.25, (codec, overall, hypotheses)
    rtp = siprec_server.runtime.siprec.snapshot()["rtp"]
    print(
        f"\nSIPREC {codec}: WER {overall:.3f} (customer {errors['customer']:.3f}, agent "
        f"{errors['agent']:.3f}), "
        f"{len(messages)} messages, RTP {rtp}"
    )

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
async def test_options_ping_answered(
    siprec_server: RunningServer, tmp_path: Path, transport: str
) -> None:
    sipp = await start_sipp(
        "siprec_options", sip_target(siprec_server), tmp_path, transport=transport, calls=3
    )
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
        sipp = await start_sipp(
            "siprec_cancel", sip_target(siprec_server), tmp_path, injection=[[uui]]
        )
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
        (
            "This-Line-Has-No-Colon",
            '<recording xmlns="urn:ietf:params:xml:ns:recording:1"/>',
            "malformed header line",
        ),
        (
            "X-Fine: yes",
            '<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>',
            "bad recording metadata",
        ),
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
    sources = bind_rtp_sockets(["1", "2"])
    sipp = await start_sipp(
        "siprec_call",
        sip_target(server),
        tmp_path,
        pause_ms=int((last - first) * FRAME_MS / SPEED + 1500),
        injection=[[uui, "0", "PCMU", CUSTOMER_AOR, AGENT_AOR, *source_ports(sources)]],
    )
    answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
    assert (await api.start(guid, "C9", "A9")).status_code == 200
    playback = RtpPlayback(
        {"1": ("127.0.0.1", int(answered.group(1))), "2": ("127.0.0.1", int(answered.group(2)))},
        payloads,
        0,
        sources=sources,
        speed=SPEED,
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


def _udp_exchange(
    target: tuple[str, int], data: bytes, wait_s: float, count: int = 1
) -> bytes | None:
    """Send one datagram; the answers (up to ``count``, joined), or None if none came."""
    answers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(wait_s)
        sock.sendto(data, target)
        try:
            while len(answers) < count:
                answers.append(sock.recv(65536))
        except TimeoutError:
            pass
    return b"".join(answers) or None


def _tcp_junk(target: tuple[str, int]) -> bytes:
    """40 KB without an end of headers: the server must close the connection."""
    with socket.create_connection(target, timeout=30) as sock:
        try:
            sock.sendall(b"X" * 40_000)
            return sock.recv(100)  # b"" once the server closes
        except ConnectionResetError:
            return b""


async def test_many_concurrent_calls_and_bad_peers_do_not_disturb_them(
    siprec_server: RunningServer,
    receiver: WebhookReceiver,
    sample_call: SampleCall,
    tmp_path: Path,
) -> None:
    """Ten recordings at once, eight over UDP and two over TCP, while other peers send garbage
    SIP (UDP and TCP), a malformed INVITE, one offering no usable codec, a duplicate of a live
    call, junk RTP/RTCP into one call's ports, and RTP from a source its offer did not name.
    Every good call is answered, recorded and completed; the transcribed ones are right."""
    api = api_for(siprec_server)
    target = sip_target(siprec_server)
    line = next(s for s in sample_call.segments if s.transcribed and s.track == "outbound")
    first, last = (line.start_ms - 300) // FRAME_MS, (line.end_ms + 1000) // FRAME_MS
    speed = 2.0
    play_ms = (last - first) * FRAME_MS / speed
    payloads = {
        "1": encode_track(sample_call.tracks["inbound"], "PCMU"),
        "2": encode_track(sample_call.tracks["outbound"], "PCMU"),
    }
    sources = [bind_rtp_sockets(["1", "2"]) for _ in range(10)]
    rows = [
        [
            ucid_hex(7, n, 1700000100),
            "0",
            "PCMU",
            CUSTOMER_AOR,
            AGENT_AOR,
            *source_ports(sources[n]),
        ]
        for n in range(10)
    ]
    guids = [ucid_from_user_to_user(row[0]) for row in rows]
    udp_run = await start_sipp(
        "siprec_call",
        target,
        tmp_path / "udp",
        calls=8,
        rate=50,
        injection=rows[:8],
        pause_ms=int(play_ms + 6000),
    )
    tcp_run = await start_sipp(
        "siprec_call",
        target,
        tmp_path / "tcp",
        transport="t1",
        calls=2,
        rate=50,
        injection=rows[8:],
        pause_ms=int(play_ms + 6000),
    )
    ports: dict[str, dict[str, int]] = {}
    for run, indices in ((udp_run, range(8)), (tcp_run, range(8, 10))):
        for n in indices:
            match = await run.wait_logged(rf"answered {rows[n][0]} (\d+) (\d+)")
            ports[guids[n]] = {"1": int(match.group(1)), "2": int(match.group(2))}
    transcribed = guids[:3] + guids[8:9]
    for guid in transcribed:
        assert (await api.start(guid, f"C-{guid}", f"A-{guid}")).status_code == 200

    async def junk_rtp(port: int, source: socket.socket) -> None:
        """Junk from the stream's own source (counted as malformed or RTCP), and an RTP
        stream from a source the offer did not name (dropped and counted, never played)."""
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder,
        ):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(source.getsockname())
            for n in range(40):
                sock.sendto(bytes([n % 256]) * (n % 30), ("127.0.0.1", port))  # not RTP
                sock.sendto(b"\x80\xc8\x00\x06" + b"\x00" * 24, ("127.0.0.1", port))  # RTCP SR
                sock.sendto(b"\x80\xc8\x00\x06" + b"\x00" * 24, ("127.0.0.1", port + 1))
                injected = RtpPacket(0, False, n, n * 160, 0xBAD, b"\xff" * 160)
                intruder.sendto(build_rtp(injected), ("127.0.0.1", port))
                await asyncio.sleep(0.01)

    bad_invite = avaya_invite(call_id="bad-1@192.0.2.99").replace(
        b"CSeq: 1 INVITE", b"CSeq: one INVITE"
    )
    opus_only = with_length(
        avaya_invite(call_id="opus@192.0.2.99", ucid_hex=ucid_hex(9, 9, 1700000999))
        .replace(b"RTP/AVP 0 101", b"RTP/AVP 96")
        .replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:96 opus/48000/2")
    )
    duplicate = avaya_invite(call_id="dup@192.0.2.99", ucid_hex=rows[0][0])
    playbacks = [
        RtpPlayback(
            {label: ("127.0.0.1", port) for label, port in ports[guid].items()},
            payloads,
            0,
            sources=sources[n],
            speed=speed,
        )
        for n, guid in enumerate(guids)
    ]
    results = await asyncio.gather(
        *(p.play(first_frame=first, last_frame=last) for p in playbacks),
        junk_rtp(ports[guids[1]]["1"], sources[1]["1"]),
        *(
            asyncio.to_thread(_udp_exchange, target, bytes([n]) * (n * 7 + 1), 0.2)
            for n in range(30)
        ),
        asyncio.to_thread(_udp_exchange, target, bad_invite, 10),
        asyncio.to_thread(_udp_exchange, target, opus_only, 10),
        asyncio.to_thread(_udp_exchange, target, duplicate, 10, 2),
        asyncio.to_thread(_tcp_junk, target),
    )
    garbage_answers = results[len(playbacks) + 1 : len(playbacks) + 31]
    bad, opus, dup, tcp_closed = results[len(playbacks) + 31 :]
    assert garbage_answers == [None] * 30  # too broken to answer: dropped
    assert bad is not None and bad.startswith(b"SIP/2.0 400 malformed CSeq header")
    assert (
        opus is not None and b"SIP/2.0 100 Trying" not in opus and opus.startswith(b"SIP/2.0 488")
    )
    assert dup is not None and dup.startswith(b"SIP/2.0 100 Trying")
    assert (
        b"SIP/2.0 486 Busy Here: call " + guids[0].encode() + b" is already being recorded" in dup
    )
    assert tcp_closed == b""

    stops = {guid: await api.stop(guid) for guid in transcribed}
    assert await udp_run.finish() == 0, udp_run.stderr.decode(errors="replace")[-2000:]
    assert await tcp_run.finish() == 0, tcp_run.stderr.decode(errors="replace")[-2000:]
    await wait_for_quiet(receiver)

    gateway = siprec_server.runtime.siprec
    snapshot = gateway.snapshot()
    assert snapshot["sessionsAnswered"] == 10 and snapshot["liveSessions"] == 0
    assert snapshot["sessionsRejected"] == 1  # the duplicate (486); the rest never got that far
    assert snapshot["rtp"]["malformed"] >= 40 and snapshot["rtp"]["rtcp"] >= 40
    assert snapshot["rtp"]["wrong_source"] == 40
    assert snapshot["rtp"]["lost"] == 0
    expected_bytes = (last - first) * FRAME_MS * 16
    for guid, response in stops.items():
        assert response.status_code == 200
        summary = response.json()["autotranscribeResponse"]
        for role in ("customer", "agent"):
            total = summary[role]["summary"]["totalAudioBytes"]
            assert abs(total - expected_bytes) <= 0.03 * expected_bytes, (guid, role, total)
    reference = normalise(redact(line.text))
    for guid in guids:
        after = (await api.messages(guid)).json()
        assert after["complete"] is True
        texts = [
            m["autotranscribeResponse"]["utterance"][0]["text"]
            for m in after["messages"]
            if m["sender"]["role"] == "agent"
        ]
        if guid in transcribed:
            assert jiwer.wer(reference, normalise(" ".join(texts))) <= 0.25, (guid, texts)
        else:
            assert after["messages"] == []
    await api.close()
