"""Attacks on the SIPREC recorder by anyone who reaches its ports, replayed on loopback against a
real server: offers that would take every RTP port, audio injected into somebody else's call,
and SIP-over-TCP connections that are opened and then never used (or used a byte at a time).
Each attack is bounded (a few sessions, a few connections, a small RTP range of its own)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from callscribe.config import SiprecSettings
from callscribe.siprec.gateway import SiprecGateway
from callscribe.siprec.rtp import RtpPacket, build_rtp
from callscribe.testing.simulate import WebhookReceiver
from tests.conftest import RunningServer
from tests.siprec_support import (
    OfferedStream,
    SipUdpPeer,
    answered_ports,
    dialog_headers,
    numbered_streams,
    sdp_offer,
    sip_request,
    start_sipp,
)

ServerFactory = Callable[..., Awaitable[RunningServer]]
GATEWAY_LOG = "callscribe.siprec.gateway"


async def recorder(
    server_factory: ServerFactory, receiver: WebhookReceiver, **settings: object
) -> tuple[SiprecGateway, tuple[str, int]]:
    server = await server_factory(receiver.url, siprec=SiprecSettings(port=0, **settings))
    gateway = server.runtime.siprec
    assert gateway is not None
    return gateway, ("127.0.0.1", gateway.port)


def free_rtp_range(pairs: int) -> str:
    """An RTP range of ``pairs`` even/odd port pairs, all free right now (this test's own, so
    filling it disturbs no other server on the machine)."""
    rng = random.Random()
    while True:
        first = rng.randrange(30000, 60000, 2)
        held = []
        try:
            for port in range(first, first + 2 * pairs):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return f"{first}-{first + 2 * pairs - 1}"


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


# RTP ports ------------------------------------------------------------------------------------


async def test_offer_of_more_streams_than_a_session_records_is_refused_488(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    """One INVITE offering 64 audio streams used to take 64 RTP port pairs (eight such offers
    filled the default range)."""
    gateway, target = await recorder(
        server_factory, receiver, rtp_ports=free_rtp_range(80), max_streams_per_session=4
    )
    peer = SipUdpPeer("127.0.0.1")
    try:
        greedy = await peer.invite(target, numbered_streams(64))
        assert greedy.code == 488, (greedy.code, greedy.phrase)
        assert "64 media streams" in greedy.phrase and "at most 4" in greedy.phrase
        assert gateway.ports.in_use == set() and gateway.live_sessions == 0
        # Up to the cap is fine; streams that take no port (video) do not count towards it.
        video = OfferedStream("v", 41000, (96,), ("96 H264/90000",))
        fine = await peer.invite(target, [*numbered_streams(4), video])
        assert fine.code == 200 and answered_ports(fine)[:4] and 0 not in answered_ports(fine)[:4]
        assert len(gateway.ports.in_use) == 4
        # A re-INVITE cannot add streams beyond the cap either; the session carries on.
        more = sdp_offer(numbered_streams(6), "127.0.0.1")
        refused = await peer.in_dialog("INVITE", target, fine, 2, more)
        assert refused.code == 488 and "at most 4" in refused.phrase
        assert len(gateway.ports.in_use) == 4 and gateway.live_sessions == 1
    finally:
        peer.close()


async def test_one_source_cannot_hold_more_sessions_than_its_share(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    gateway, target = await recorder(
        server_factory, receiver, rtp_ports=free_rtp_range(40), max_sessions_per_source=2
    )
    attacker, sbc = SipUdpPeer("127.0.0.3"), SipUdpPeer("127.0.0.1")
    try:
        for _ in range(2):
            assert (await attacker.invite(target, numbered_streams(2))).code == 200
        refused = await attacker.invite(target, numbered_streams(2))
        assert refused.code == 503, (refused.code, refused.phrase)
        assert int(refused.headers["Retry-After"]) > 0
        assert gateway.live_sessions == 2
        # Another source still gets in.
        assert (await sbc.invite(target, numbered_streams(2))).code == 200
    finally:
        attacker.close()
        sbc.close()


async def test_full_rtp_range_answers_503_with_retry_after_not_500(
    server_factory: ServerFactory, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The range taken (here by a first session), the next INVITE used to get 500 and leave
    a traceback in the log; it gets 503 with Retry-After and one log line."""
    gateway, target = await recorder(server_factory, receiver, rtp_ports=free_rtp_range(2))
    first, second = SipUdpPeer("127.0.0.3"), SipUdpPeer("127.0.0.1")
    try:
        ok = await first.invite(target, numbered_streams(2))
        assert ok.code == 200
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=GATEWAY_LOG):
            refused = await second.invite(target, numbered_streams(2))
            assert refused.code == 503, (refused.code, refused.phrase)
            assert int(refused.headers["Retry-After"]) > 0
            await asyncio.sleep(0.3)  # anything the refusal still logs
        records = [r for r in caplog.records if r.name == GATEWAY_LOG]
        assert not [r for r in records if r.exc_info], "a refusal is not an error"
        assert len(records) == 1 and "503" in records[0].getMessage()
        assert len(gateway.ports.in_use) == 2 and gateway.live_sessions == 1
        # Ports come back when the session ends, and the next INVITE is answered.
        assert (await first.in_dialog("BYE", target, ok, 2)).code == 200
        await eventually(lambda: not gateway.ports.in_use)
        assert (await second.invite(target, numbered_streams(2))).code == 200
    finally:
        first.close()
        second.close()


# RTP sources ----------------------------------------------------------------------------------


def rtp(sequence: int, ssrc: int) -> bytes:
    return build_rtp(RtpPacket(0, False, sequence, sequence * 160, ssrc, b"\xff" * 160))


def bound_udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


async def test_rtp_from_a_source_the_offer_did_not_name_is_dropped_and_counted(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    """Anyone who learns (or guesses) a call's RTP port used to be able to play audio into it."""
    gateway, target = await recorder(server_factory, receiver, rtp_ports=free_rtp_range(8))
    sbc = SipUdpPeer("127.0.0.1")
    media = bound_udp("127.0.0.1")
    same_host = bound_udp("127.0.0.1")  # the SBC's address, another port
    other_host = bound_udp("127.0.0.4")
    call_id = f"inject-{uuid.uuid4().hex[:12]}"
    try:
        offer = [OfferedStream("1", media.getsockname()[1])]
        ok = await sbc.invite(target, offer, call_id=call_id)
        assert ok.code == 200
        (port,) = answered_ports(ok)
        for sequence in range(30):
            media.sendto(rtp(sequence, 0x5BC), ("127.0.0.1", port))
            same_host.sendto(rtp(sequence, 0xBAD), ("127.0.0.1", port))
            other_host.sendto(rtp(sequence, 0xBAD), ("127.0.0.1", port))
        recording = gateway.recording_of(call_id)
        assert recording is not None
        stats = recording.streams["1"].receiver.stats
        await eventually(lambda: stats.packets + getattr(stats, "wrong_source", 0) >= 90)
        assert stats.packets == 30 and stats.ssrc_changes == 0
        assert stats.wrong_source == 60
        assert gateway.snapshot()["rtp"]["wrong_source"] == 60
    finally:
        for sock in (media, same_host, other_host):
            sock.close()
        sbc.close()


async def test_offer_without_a_usable_address_latches_to_the_first_source(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    gateway, target = await recorder(server_factory, receiver, rtp_ports=free_rtp_range(8))
    sbc = SipUdpPeer("127.0.0.1")
    first = bound_udp("127.0.0.1")
    later = bound_udp("127.0.0.5")
    call_id = f"latch-{uuid.uuid4().hex[:12]}"
    try:
        ok = await sbc.invite(
            target, [OfferedStream("1", 9)], call_id=call_id, media_address="0.0.0.0"
        )
        assert ok.code == 200
        (port,) = answered_ports(ok)
        recording = gateway.recording_of(call_id)
        assert recording is not None
        stats = recording.streams["1"].receiver.stats
        first.sendto(rtp(0, 0x5BC), ("127.0.0.1", port))
        await eventually(lambda: stats.packets == 1)
        for sequence in range(1, 21):
            first.sendto(rtp(sequence, 0x5BC), ("127.0.0.1", port))
            later.sendto(rtp(sequence, 0xBAD), ("127.0.0.1", port))
        await eventually(lambda: stats.packets + getattr(stats, "wrong_source", 0) >= 41)
        assert stats.packets == 21 and stats.wrong_source == 20
    finally:
        for sock in (first, later):
            sock.close()
        sbc.close()


# SIP over TCP ---------------------------------------------------------------------------------


def options(call_id: str, via_host: str) -> bytes:
    return sip_request(
        "OPTIONS", dialog_headers("OPTIONS", call_id=call_id, via_host=via_host, transport="TCP")
    )


async def connect(
    target: tuple[str, int], host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*target, local_addr=(host, 0))


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    """Whether the server closes the connection within ``within_s`` (whatever it says first)."""
    deadline = time.monotonic() + within_s
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), remaining):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


async def answers_options(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    host, port = writer.get_extra_info("sockname")[:2]
    writer.write(options(f"ping-{uuid.uuid4().hex[:8]}", f"{host}:{port}"))
    await writer.drain()
    try:
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return False
    return status.startswith(b"SIP/2.0 200 OK")


async def test_silent_tcp_connection_is_closed_after_the_idle_deadline(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    _, target = await recorder(server_factory, receiver, tcp_idle_timeout_s=0.5)
    reader, writer = await connect(target)
    try:
        assert await closed_by_server(reader, within_s=15)
    finally:
        writer.close()


async def test_message_trickled_a_byte_at_a_time_is_cut_off(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    """Each byte is activity, but no message is ever finished: the deadline for completing a
    started message closes it, long before the (here generous) idle deadline."""
    _, target = await recorder(
        server_factory, receiver, tcp_idle_timeout_s=120, tcp_message_timeout_s=0.5
    )
    reader, writer = await connect(target)
    host, port = writer.get_extra_info("sockname")[:2]
    message = options("trickle", f"{host}:{port}")

    async def trickle() -> None:
        for byte in message:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.get_running_loop().create_task(trickle())
    try:
        assert await closed_by_server(reader, within_s=15)
    finally:
        sender.cancel()
        writer.close()


async def test_keepalive_pings_keep_a_persistent_connection_open(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    """An SBC's persistent connection that sends OPTIONS (or CRLF) pings is not idle."""
    _, target = await recorder(server_factory, receiver, tcp_idle_timeout_s=0.5)
    reader, writer = await connect(target)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            assert await answers_options(reader, writer)
            await asyncio.sleep(0.1)
            writer.write(b"\r\n\r\n")  # RFC 5626 ping: answered with a pong
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"\r\n"
            await asyncio.sleep(0.1)
        assert await answers_options(reader, writer)
    finally:
        writer.close()


async def test_tcp_connections_are_capped_per_source_and_in_all_with_few_log_lines(
    server_factory: ServerFactory, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, target = await recorder(
        server_factory, receiver, max_tcp_connections=5, max_tcp_connections_per_source=3
    )
    opened: list[asyncio.StreamWriter] = []

    async def open_from(host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await connect(target, host)
        opened.append(writer)
        return reader, writer

    try:
        with caplog.at_level(logging.INFO, logger=GATEWAY_LOG):
            kept = [await open_from("127.0.0.1") for _ in range(3)]
            for reader, writer in kept:
                assert await answers_options(reader, writer)
            # A flood from the same source: every one refused, a line or two logged.
            flood = [await open_from("127.0.0.1") for _ in range(20)]
            for reader, _ in flood:
                assert await closed_by_server(reader, within_s=10)
            # Others still get in, up to the cap on all connections.
            kept += [await open_from("127.0.0.2") for _ in range(2)]
            for reader, writer in kept[3:]:
                assert await answers_options(reader, writer)
            late_reader, _ = await open_from("127.0.0.6")
            assert await closed_by_server(late_reader, within_s=10)
            # The ones let in are unharmed.
            for reader, writer in kept:
                assert await answers_options(reader, writer)
        refusals = [
            r for r in caplog.records if r.name == GATEWAY_LOG and "refused" in r.getMessage()
        ]
        assert 1 <= len(refusals) <= 3, [r.getMessage() for r in refusals]
        assert gateway.snapshot()["tcpConnectionsRefused"] == 21
        # A closed connection frees its place.
        kept[0][1].close()
        await eventually(lambda: gateway.snapshot()["tcpConnectionsOpen"] == 4)
        reader, writer = await open_from("127.0.0.1")
        assert await answers_options(reader, writer)
    finally:
        for writer in opened:
            writer.close()


async def test_connection_carrying_a_live_session_outlives_the_idle_deadline(
    server_factory: ServerFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """An SBC that sends nothing between its INVITE and its BYE (no pings) keeps the connection
    its session was set up on: the recorder's own BYE (a media timeout) would go over it."""
    _, target = await recorder(server_factory, receiver, tcp_idle_timeout_s=0.5)
    ucid = "00FA080009000165A1B2C4"
    sipp = await start_sipp(
        "siprec_call",
        target,
        tmp_path,
        transport="t1",
        pause_ms=2500,
        injection=[[ucid, "0", "PCMU", "sip:+15550001@pstn", "sip:4002@pbx", "40000", "40002"]],
    )
    assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-2000:]
    assert any(line.startswith(f"bye-answered {ucid}") for line in sipp.logged())
