"""RTP reception for one recorded stream (RFC 3550): parse, reorder, decode, place in time.

Sans-IO: the server hands each datagram and its arrival time to
:meth:`RtpStreamReceiver.receive` and gets 16-bit PCM at 8 kHz back, each chunk with the
sample position it belongs at on the call's timeline.

* A small jitter buffer per SSRC puts packets back in sequence-number order. It holds at most
  ``depth`` packets behind a missing one; after that the missing packets are counted as lost
  and skipped. :meth:`RtpStreamReceiver.release_stale` lets audio stuck behind a gap go after
  ``max_delay_s`` even if no more packets come.
* Duplicates and packets older than what was already played are counted and dropped.
* RTCP arriving on the RTP port (rtcp-mux, or a confused sender) is recognised by its packet
  type (RFC 5761 §4) and ignored; so are packets that are not RTP at all (counted).
* An SSRC change (the SBC re-anchored the media, a failover) starts a new timeline that
  continues where the previous one ended, or later if wall-clock time says so.
* Positions come from RTP timestamps, which keep silence and loss in the right place; the
  first packet of the call (over all its streams) is sample 0, and a stream that starts
  later starts at the wall-clock offset from it (see :class:`CallClock`).

An RTP port is reachable by anyone, so the server asks :class:`RtpSourceFilter` first whether
a datagram comes from the stream's sender at all.
"""

from __future__ import annotations

import abc
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callscribe.audio import TELEPHONE_RATE, alaw_to_pcm16, ulaw_to_pcm16
from callscribe.siprec.sdp import G729, PCMA, PCMU, Codec

RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
G729_FRAME_BYTES = 10  # 10 ms
G729_SID_BYTES = 2  # Annex B comfort-noise frame
G729_FRAME_SAMPLES = 80
# A timestamp jump beyond this is not audio placement any more but a broken or restarted
# sender: the new position is taken from the call clock instead.
MAX_TIMESTAMP_JUMP = TELEPHONE_RATE * 3600


class RtpParseError(ValueError):
    pass


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def is_rtcp(data: bytes) -> bool:
    # RFC 5761 §4: RTCP packet types 192-223 occupy the byte where RTP has marker + PT.
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    if len(data) < RTP_HEADER.size:
        raise RtpParseError(f"{len(data)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {first >> 6}")
    offset = RTP_HEADER.size + 4 * (first & 0x0F)  # CSRC list
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            raise RtpParseError("truncated header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding: the last byte says how much
        padding = data[-1]
        if padding == 0 or offset + padding > end:
            raise RtpParseError("bad padding")
        end -= padding
    if offset > end:
        raise RtpParseError("header longer than the packet")
    return RtpPacket(
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
    )


def build_rtp(packet: RtpPacket) -> bytes:
    """An RTP packet without CSRCs or extensions (for senders in tests and tools)."""
    second = (0x80 if packet.marker else 0) | (packet.payload_type & 0x7F)
    header = RTP_HEADER.pack(
        RTP_VERSION << 6,
        second,
        packet.sequence & 0xFFFF,
        packet.timestamp & 0xFFFFFFFF,
        packet.ssrc,
    )
    return header + packet.payload


# Decoders -------------------------------------------------------------------------------------


class AudioDecoder(abc.ABC):
    """Payload bytes -> 16-bit PCM at 8 kHz. One per SSRC (G.729 keeps state)."""

    @abc.abstractmethod
    def decode(self, payload: bytes) -> np.ndarray: ...


class UlawDecoder(AudioDecoder):
    def decode(self, payload: bytes) -> np.ndarray:
        return ulaw_to_pcm16(payload)


class AlawDecoder(AudioDecoder):
    def decode(self, payload: bytes) -> np.ndarray:
        return alaw_to_pcm16(payload)


class G729Decoder(AudioDecoder):
    """G.729 / Annex A through FFmpeg's decoder (PyAV). Annex B comfort-noise (SID) frames,
    which it does not take, become 10 ms of silence each."""

    def __init__(self) -> None:
        import av  # heavy import: only sessions that negotiate G.729 pay for it

        self._av = av
        # An audio decoder's context (PyAV's stubs type create() as the generic base).
        context: Any = av.CodecContext.create("g729", "r")
        context.sample_rate = TELEPHONE_RATE
        context.layout = "mono"
        self._context = context

    def decode(self, payload: bytes) -> np.ndarray:
        frames = len(payload) // G729_FRAME_BYTES
        rest = len(payload) - frames * G729_FRAME_BYTES
        if rest not in (0, G729_SID_BYTES):
            raise RtpParseError(f"G.729 payload of {len(payload)} bytes")
        chunks: list[np.ndarray] = []
        if frames:
            try:
                packet = self._av.Packet(payload[: frames * G729_FRAME_BYTES])
                for frame in self._context.decode(packet):
                    chunks.append(frame.to_ndarray().reshape(-1).astype(np.int16, copy=False))
            except self._av.FFmpegError as exc:
                raise RtpParseError(f"G.729 frame not decodable: {exc}") from None
        if rest:
            chunks.append(np.zeros(G729_FRAME_SAMPLES, dtype=np.int16))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def decoder_for(codec: Codec) -> AudioDecoder:
    if codec is PCMU:
        return UlawDecoder()
    if codec is PCMA:
        return AlawDecoder()
    if codec is G729:
        return G729Decoder()
    raise ValueError(f"no decoder for {codec.name}")


# Timeline ---------------------------------------------------------------------------------


class CallClock:
    """The call's sample clock: sample 0 is when the first RTP packet of any stream arrived,
    so that streams which start together line up, and a stream that starts later is placed
    by its wall-clock delay."""

    def __init__(self) -> None:
        self.started_at: float | None = None

    def sample_at(self, now: float) -> int:
        if self.started_at is None:
            self.started_at = now
        return max(0, int((now - self.started_at) * TELEPHONE_RATE))


@dataclass
class RtpStats:
    packets: int = 0
    lost: int = 0
    late_or_duplicate: int = 0
    malformed: int = 0
    rtcp: int = 0
    other_payload: int = 0  # DTMF events, comfort noise, formats not negotiated
    ssrc_changes: int = 0
    wrong_source: int = 0  # not from the stream's sender: dropped before anything else

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RtpSourceFilter:
    """The one source a stream is taken from, so that nobody else can play audio into a call.

    ``expected`` is what the SDP offer named; ``match_port`` False takes any port of that
    address. ``expected`` None (an offer without a usable address) latches onto the source of
    the first packet, as SBC-facing media servers do. A re-offer naming another source (the
    SBC moved the media) replaces it; one naming the same keeps what was latched."""

    def __init__(self, expected: tuple[str, int] | None, *, match_port: bool = True) -> None:
        self._offered: tuple[tuple[str, int] | None, bool] | None = None
        self._host: str | None = None
        self._port = 0
        self._match_port = match_port
        self.expect(expected, match_port=match_port)

    def expect(self, expected: tuple[str, int] | None, *, match_port: bool = True) -> None:
        if self._offered == (expected, match_port):
            return
        self._offered = (expected, match_port)
        self._match_port = match_port
        if expected is None:
            self._host, self._port = None, 0
        else:
            self._host = _normalised_host(expected[0])
            self._port = expected[1] if match_port else 0

    def admits(self, source: tuple[str, int]) -> bool:
        """Whether an RTP packet from ``source`` is the stream's (the first one latches)."""
        host = _normalised_host(source[0])
        if self._host is None:
            self._host, self._port = host, source[1] if self._match_port else 0
            return True
        return host == self._host and (not self._port or source[1] == self._port)

    def admits_rtcp(self, source: tuple[str, int]) -> bool:
        """RTCP comes from another port of the sender (the one above, or a=rtcp): only the
        address is checked, and nothing is latched by it."""
        return self._host is not None and _normalised_host(source[0]) == self._host


def _normalised_host(host: str) -> str:
    """One spelling per address: a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


@dataclass
class DecodedAudio:
    pcm16: np.ndarray
    at_sample: int


@dataclass
class _Source:
    """One SSRC's jitter buffer and timeline."""

    ssrc: int
    base_timestamp: int
    base_sample: int
    next_sequence: int  # extended (never wraps)
    highest_sequence: int
    pending: dict[int, tuple[RtpPacket, float]] = field(default_factory=dict)
    last_timestamp: int = 0  # extended
    end_sample: int = 0
    decoders: dict[int, AudioDecoder] = field(default_factory=dict)  # by payload type

    def decoder(self, payload_type: int, codec: Codec) -> AudioDecoder:
        decoder = self.decoders.get(payload_type)
        if decoder is None:
            decoder = self.decoders[payload_type] = decoder_for(codec)
        return decoder

    def extend_sequence(self, sequence: int) -> int:
        delta = (sequence - self.highest_sequence) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        return self.highest_sequence + delta

    def extend_timestamp(self, timestamp: int) -> int:
        delta = (timestamp - self.last_timestamp) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return self.last_timestamp + delta


class RtpStreamReceiver:
    def __init__(
        self,
        payload_types: dict[int, Codec],
        clock: CallClock,
        *,
        depth: int = 4,
        max_delay_s: float = 0.2,
    ) -> None:
        self.payload_types = dict(payload_types)
        self.clock = clock
        self.depth = depth
        self.max_delay_s = max_delay_s
        self.stats = RtpStats()
        self.last_packet_at: float | None = None
        self._source: _Source | None = None

    def set_payload_types(self, payload_types: dict[int, Codec]) -> None:
        """A re-INVITE may change the codec: later packets decode with the new mapping."""
        self.payload_types = dict(payload_types)

    def receive(self, data: bytes, now: float) -> list[DecodedAudio]:
        if is_rtcp(data):
            self.stats.rtcp += 1
            return []
        try:
            packet = parse_rtp(data)
        except RtpParseError:
            self.stats.malformed += 1
            return []
        codec = self.payload_types.get(packet.payload_type)
        if codec is None:
            self.stats.other_payload += 1
            return []
        self.stats.packets += 1
        self.last_packet_at = now
        out: list[DecodedAudio] = []
        source = self._source
        if source is None or source.ssrc != packet.ssrc:
            if source is not None:
                self.stats.ssrc_changes += 1
                out += self._drain(source)
            source = self._start_source(packet, now, source)
        extended = source.extend_sequence(packet.sequence)
        if extended < source.next_sequence or extended in source.pending:
            self.stats.late_or_duplicate += 1
            return out
        if extended - source.next_sequence > 0x7FFF:
            # A jump this large is a sender restart without an SSRC change: follow it.
            self.stats.lost += len(source.pending)
            out += self._drain(source)
            source.next_sequence = extended
        source.highest_sequence = max(source.highest_sequence, extended)
        source.pending[extended] = (packet, now)
        out += self._release(source, force_depth=True, now=now)
        return out

    def release_stale(self, now: float) -> list[DecodedAudio]:
        """Audio waiting behind a gap for longer than ``max_delay_s`` goes now."""
        if self._source is None:
            return []
        return self._release(self._source, force_depth=False, now=now)

    def drain(self) -> list[DecodedAudio]:
        """Everything still buffered (the session is ending)."""
        return self._drain(self._source) if self._source is not None else []

    def _start_source(self, packet: RtpPacket, now: float, previous: _Source | None) -> _Source:
        base_sample = self.clock.sample_at(now)
        if previous is not None:
            base_sample = max(base_sample, previous.end_sample)
        source = _Source(
            ssrc=packet.ssrc,
            base_timestamp=packet.timestamp,
            base_sample=base_sample,
            next_sequence=packet.sequence,
            highest_sequence=packet.sequence,
            last_timestamp=packet.timestamp,
            end_sample=base_sample,
        )
        self._source = source
        return source

    def _release(self, source: _Source, *, force_depth: bool, now: float) -> list[DecodedAudio]:
        out: list[DecodedAudio] = []
        while source.pending:
            if source.next_sequence in source.pending:
                packet, _ = source.pending.pop(source.next_sequence)
                source.next_sequence += 1
                out += self._play(source, packet)
                continue
            oldest = min(source.pending)
            waited = now - source.pending[oldest][1]
            if (force_depth and len(source.pending) > self.depth) or waited >= self.max_delay_s:
                self.stats.lost += oldest - source.next_sequence
                source.next_sequence = oldest
                continue
            break
        return out

    def _drain(self, source: _Source) -> list[DecodedAudio]:
        out: list[DecodedAudio] = []
        for extended in sorted(source.pending):
            packet, _ = source.pending.pop(extended)
            self.stats.lost += max(0, extended - source.next_sequence)
            source.next_sequence = extended + 1
            out += self._play(source, packet)
        return out

    def _play(self, source: _Source, packet: RtpPacket) -> list[DecodedAudio]:
        codec = self.payload_types.get(packet.payload_type)
        if codec is None:
            return []
        try:
            pcm16 = source.decoder(packet.payload_type, codec).decode(packet.payload)
        except RtpParseError:
            self.stats.malformed += 1
            return []
        if not len(pcm16):
            return []
        timestamp = source.extend_timestamp(packet.timestamp)
        offset = timestamp - source.base_timestamp
        if abs(timestamp - source.last_timestamp) > MAX_TIMESTAMP_JUMP or offset < 0:
            # The sender's clock jumped: re-anchor at the end of what was played.
            source.base_timestamp = timestamp
            source.base_sample = source.end_sample
            offset = 0
        source.last_timestamp = timestamp
        at_sample = source.base_sample + offset
        source.end_sample = max(source.end_sample, at_sample + len(pcm16))
        return [DecodedAudio(pcm16, at_sample)]
