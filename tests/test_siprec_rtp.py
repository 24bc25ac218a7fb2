"""RTP reception, sans-IO: parsing, the jitter buffer (reordering, loss, duplicates, wrap),
SSRC changes, RTCP and garbage, and decoding PCMU, PCMA and real G.729 (bcg729-encoded)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from callscribe.audio import alaw_to_pcm16, pcm16_to_ulaw, ulaw_to_pcm16
from callscribe.siprec.rtp import (
    CallClock,
    G729Decoder,
    RtpPacket,
    RtpParseError,
    RtpSourceFilter,
    RtpStreamReceiver,
    build_rtp,
    parse_rtp,
)
from callscribe.siprec.sdp import G729, PCMA, PCMU
from tests.siprec_support import G729Encoder, pcm16_to_alaw


def packet(
    seq: int,
    *,
    ts: int | None = None,
    ssrc: int = 0x1234,
    pt: int = 0,
    payload: bytes | None = None,
) -> bytes:
    return build_rtp(
        RtpPacket(
            pt,
            False,
            seq & 0xFFFF,
            (ts if ts is not None else seq * 160) & 0xFFFFFFFF,
            ssrc,
            payload if payload is not None else bytes([seq & 0xFF]) * 160,
        )
    )


def receiver(depth: int = 3) -> RtpStreamReceiver:
    return RtpStreamReceiver({0: PCMU}, CallClock(), depth=depth, max_delay_s=0.2)


def test_parse_rtp_with_csrcs_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0xB2, 0x80 | 8, 7, 1600, 99)  # V=2, P, X, CC=2; marker, PCMA
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
    data = header + csrcs + extension + b"\xd5" * 160 + b"\x00\x00\x03"
    parsed = parse_rtp(data)
    assert (parsed.payload_type, parsed.marker, parsed.sequence, parsed.timestamp, parsed.ssrc) == (
        8,
        True,
        7,
        1600,
        99,
    )
    assert parsed.payload == b"\xd5" * 160
    for broken in (b"\x80", b"\x40" + b"\x00" * 20, header[:1] + b"\x00" * 11 + b"\x00\x00\xff"):
        with pytest.raises(RtpParseError):
            parse_rtp(broken)


def test_reordered_packets_come_out_in_order_and_contiguous() -> None:
    rx = receiver()
    out = []
    for seq in (100, 102, 101, 103, 105, 104, 106):
        out += rx.receive(packet(seq), now=0.0)
    out += rx.drain()
    firsts = [int(chunk.pcm16[0]) for chunk in out]
    assert len(out) == 7
    assert [chunk.at_sample for chunk in out] == [i * 160 for i in range(7)]
    # Each packet's payload byte is its sequence number: the audio is in sequence order.
    assert firsts == [int(ulaw_to_pcm16(bytes([s]))[0]) for s in range(100, 107)]
    assert rx.stats.lost == 0 and rx.stats.packets == 7


def test_loss_is_counted_and_timeline_keeps_the_gap() -> None:
    rx = receiver(depth=3)
    out = []
    for seq in [1, 2, 3, *range(6, 12)]:  # 4 and 5 never come
        out += rx.receive(packet(seq), now=0.0)
    out += rx.drain()
    assert rx.stats.lost == 2
    positions = [chunk.at_sample for chunk in out]
    assert positions[:3] == [0, 160, 320]
    assert positions[3] == 5 * 160  # sequence 6 sits where its timestamp says
    # A late copy of a lost packet, and a duplicate, are dropped and counted.
    assert rx.receive(packet(4), now=0.0) == [] and rx.receive(packet(11), now=0.0) == []
    assert rx.stats.late_or_duplicate == 2


def test_audio_stuck_behind_a_gap_is_released_after_max_delay() -> None:
    rx = receiver(depth=10)
    assert len(rx.receive(packet(1), now=0.0)) == 1
    assert rx.receive(packet(3), now=0.01) == []
    assert rx.release_stale(0.1) == []
    released = rx.release_stale(0.25)
    assert [c.at_sample for c in released] == [320] and rx.stats.lost == 1


def test_sequence_and_timestamp_wrap_around() -> None:
    rx = receiver()
    out = []
    for i in range(6):
        seq = 65533 + i
        out += rx.receive(packet(seq, ts=2**32 - 320 + i * 160), now=0.0)
    out += rx.drain()
    assert [c.at_sample for c in out] == [i * 160 for i in range(6)]
    assert rx.stats.lost == 0


def test_ssrc_change_continues_the_timeline() -> None:
    rx = receiver()
    out = []
    for seq in range(10, 15):
        out += rx.receive(packet(seq, ssrc=1), now=0.0)
    for seq in range(500, 505):  # a new sender with its own random sequence and timestamps
        out += rx.receive(packet(seq, ts=777_000 + (seq - 500) * 160, ssrc=2), now=0.0)
    out += rx.drain()
    assert rx.stats.ssrc_changes == 1 and rx.stats.lost == 0
    assert [c.at_sample for c in out] == [i * 160 for i in range(10)]


def test_rtcp_garbage_and_other_payloads_are_counted_not_played() -> None:
    rx = receiver()
    sender_report = struct.pack("!BBHI", 0x80, 200, 6, 0x1234) + b"\x00" * 20
    assert rx.receive(sender_report, now=0.0) == []
    assert rx.receive(b"\xde\xad\xbe\xef", now=0.0) == []
    assert rx.receive(packet(1, pt=101, payload=b"\x01\x0a\x00\xa0"), now=0.0) == []  # DTMF event
    assert (rx.stats.rtcp, rx.stats.malformed, rx.stats.other_payload, rx.stats.packets) == (
        1,
        1,
        1,
        0,
    )


def test_late_stream_starts_at_its_wall_clock_offset() -> None:
    clock = CallClock()
    first = RtpStreamReceiver({0: PCMU}, clock, depth=1)
    second = RtpStreamReceiver({0: PCMU}, clock, depth=1)
    assert first.receive(packet(1), now=100.0)[0].at_sample == 0
    assert second.receive(packet(9000, ts=55_555), now=102.5)[0].at_sample == 20_000


def test_pcma_decoding_matches_the_encoder() -> None:
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(1600) * 3000).astype(np.int16)
    decoded = alaw_to_pcm16(pcm16_to_alaw(pcm))
    # A-law keeps ~12 bits: the error is small relative to the signal.
    assert np.max(np.abs(decoded.astype(np.int32) - pcm)) <= max(64, int(np.max(np.abs(pcm)) / 30))
    rx = RtpStreamReceiver({8: PCMA}, CallClock(), depth=1)
    (chunk,) = rx.receive(packet(1, pt=8, payload=pcm16_to_alaw(pcm[:160])), now=0.0)
    assert np.array_equal(chunk.pcm16, decoded[:160])


def test_g729_round_trip_with_a_real_encoder_and_sid_frames() -> None:
    t = np.arange(8000) / 8000
    tone = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    encoder = G729Encoder()
    try:
        bitstream = encoder.encode(tone)
    finally:
        encoder.close()
    assert len(bitstream) == 1000  # 100 frames of 10 bytes
    decoder = G729Decoder()
    decoded = np.concatenate([decoder.decode(bitstream[i : i + 20]) for i in range(0, 1000, 20)])
    assert len(decoded) == 8000
    # The decoded tone has the input's pitch: the strongest frequency is 440 Hz.
    spectrum = np.abs(np.fft.rfft(decoded[2000:6000].astype(np.float64)))
    assert abs(np.argmax(spectrum) * 8000 / 4000 - 440) <= 4
    # Annex B SID frame (2 bytes) after one speech frame: 10 ms decoded + 10 ms of silence.
    with_sid = decoder.decode(bitstream[:10] + b"\x12\x34")
    assert len(with_sid) == 160 and not with_sid[80:].any()
    with pytest.raises(RtpParseError):
        decoder.decode(b"\x00" * 7)
    rx = RtpStreamReceiver({18: G729}, CallClock(), depth=1)
    assert rx.receive(packet(1, pt=18, payload=b"\x00" * 7), now=0.0) == []
    assert rx.stats.malformed == 1


def test_ulaw_helper_round_trip_sanity() -> None:
    pcm = np.array([0, 1000, -1000, 30000, -30000], dtype=np.int16)
    rx = receiver(depth=1)
    (chunk,) = rx.receive(packet(1, payload=pcm16_to_ulaw(pcm)), now=0.0)
    assert np.all(np.abs(chunk.pcm16.astype(np.int32) - pcm) <= np.abs(pcm) // 16 + 8)


def test_source_filter_takes_the_offered_source_only() -> None:
    offered = RtpSourceFilter(("192.0.2.10", 35000))
    assert offered.admits(("192.0.2.10", 35000))
    assert offered.admits(("::ffff:192.0.2.10", 35000))  # a dual-stack socket's spelling
    assert not offered.admits(("192.0.2.10", 35002))  # another port of the SBC
    assert not offered.admits(("198.51.100.9", 35000))
    assert offered.admits_rtcp(("192.0.2.10", 35001))
    assert not offered.admits_rtcp(("198.51.100.9", 35001))
    any_port = RtpSourceFilter(("192.0.2.10", 35000), match_port=False)
    assert any_port.admits(("192.0.2.10", 41234)) and not any_port.admits(("192.0.2.11", 35000))


def test_source_filter_latches_and_follows_a_re_offer() -> None:
    latching = RtpSourceFilter(None)
    assert not latching.admits_rtcp(("203.0.113.5", 5001))  # RTCP latches nothing
    assert latching.admits(("203.0.113.5", 5000))
    assert not latching.admits(("203.0.113.6", 5000)) and not latching.admits(("203.0.113.5", 5002))
    latching.expect(None)  # a re-offer still naming no address keeps what was latched
    assert not latching.admits(("203.0.113.6", 5000)) and latching.admits(("203.0.113.5", 5000))
    latching.expect(("192.0.2.20", 6000))  # the SBC moved the media
    assert latching.admits(("192.0.2.20", 6000)) and not latching.admits(("203.0.113.5", 5000))
