"""SDP (RFC 8866) as a SIPREC recording server needs it: the SBC's offer, our answer.

The offer has one ``m=audio`` section per recorded stream, each with ``a=label:N`` (RFC 4574)
that the metadata refers to, usually ``a=sendonly``. The answer (RFC 3264) keeps the offer's
sections in order: each accepted stream gets one of our RTP ports, one codec we decode
(PCMU, PCMA or G.729, in the offer's order of preference) and ``a=recvonly``; a stream we
cannot take is answered with port 0. Sans-IO; every problem raises :class:`SdpParseError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 64


class SdpParseError(ValueError):
    pass


@dataclass(frozen=True)
class Codec:
    name: str  # as in a=rtpmap, upper case: PCMU, PCMA, G729
    clock_rate: int
    static_payload_type: int


PCMU = Codec("PCMU", 8000, 0)
PCMA = Codec("PCMA", 8000, 8)
G729 = Codec("G729", 8000, 18)
SUPPORTED_CODECS = {codec.name: codec for codec in (PCMU, PCMA, G729)}
_STATIC_PAYLOAD_TYPES = {codec.static_payload_type: codec for codec in (PCMU, PCMA, G729)}

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# What a recorder answers to each offered direction: it only ever receives.
_ANSWER_DIRECTION = {
    "sendonly": "recvonly",
    "sendrecv": "recvonly",
    "recvonly": "inactive",
    "inactive": "inactive",
}


@dataclass
class MediaSection:
    media: str  # "audio", "video", ...
    port: int
    protocol: str  # "RTP/AVP", "RTP/SAVP", ...
    formats: list[str]
    connection_address: str | None = None
    label: str | None = None
    direction: str | None = None  # None: the session's (default sendrecv)
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt -> (NAME, rate)
    fmtp: dict[int, str] = field(default_factory=dict)
    rtcp_mux: bool = False

    def codec_of(self, payload_type: int) -> Codec | None:
        mapped = self.rtpmap.get(payload_type)
        if mapped is not None:
            codec = SUPPORTED_CODECS.get(mapped[0])
            return codec if codec is not None and codec.clock_rate == mapped[1] else None
        return _STATIC_PAYLOAD_TYPES.get(payload_type)

    def choose_codec(self) -> tuple[int, Codec] | None:
        """The first format the offer lists that we decode (its order is its preference)."""
        for fmt in self.formats:
            if fmt.isdigit():
                codec = self.codec_of(int(fmt))
                if codec is not None:
                    return int(fmt), codec
        return None


@dataclass
class SessionDescription:
    origin_session_id: str
    origin_version: int
    origin_address: str
    connection_address: str | None
    direction: str | None
    media: list[MediaSection]

    def address_of(self, section: MediaSection) -> str | None:
        return section.connection_address or self.connection_address


_LINE = re.compile(r"^([a-z])=(.*)$")
_CONNECTION = re.compile(r"^IN IP[46] ([^\s/]+)(?:/\d+){0,2}$")
_MEDIA = re.compile(r"^([a-z]+) (\d{1,5})(?:/\d+)? ([A-Za-z0-9/_.\-]+)((?: [^\s]+)+)$")
_ORIGIN = re.compile(r"^(\S+) (\S+) (\d{1,20}) IN IP[46] (\S+)$")
_RTPMAP = re.compile(r"^(\d{1,3}) ([A-Za-z0-9_.\-]+)/(\d{1,6})(?:/\d+)?$")
_FMTP = re.compile(r"^(\d{1,3}) (.*)$")


def parse_sdp(data: bytes) -> SessionDescription:
    if len(data) > MAX_SDP_BYTES:
        raise SdpParseError(f"SDP longer than {MAX_SDP_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpParseError("SDP is not UTF-8") from None
    lines = [line for line in re.split(r"\r?\n", text.strip()) if line]
    if not lines or lines[0] != "v=0":
        raise SdpParseError("SDP does not start with v=0")
    origin: tuple[str, int, str] | None = None
    session_connection: str | None = None
    session_direction: str | None = None
    media: list[MediaSection] = []
    for line in lines[1:]:
        match = _LINE.match(line)
        if match is None:
            raise SdpParseError(f"malformed SDP line {line[:40]!r}")
        kind, value = match.groups()
        current = media[-1] if media else None
        if kind == "o":
            origin_match = _ORIGIN.match(value)
            if origin_match is None:
                raise SdpParseError(f"malformed o= line {value[:60]!r}")
            origin = (origin_match.group(2), int(origin_match.group(3)), origin_match.group(4))
        elif kind == "c":
            connection = _CONNECTION.match(value)
            if connection is None:
                raise SdpParseError(f"malformed c= line {value[:60]!r}")
            if current is None:
                session_connection = connection.group(1)
            else:
                current.connection_address = connection.group(1)
        elif kind == "m":
            if len(media) >= MAX_MEDIA_SECTIONS:
                raise SdpParseError(f"more than {MAX_MEDIA_SECTIONS} media sections")
            media_match = _MEDIA.match(value)
            if media_match is None:
                raise SdpParseError(f"malformed m= line {value[:60]!r}")
            port = int(media_match.group(2))
            if port > 65535:
                raise SdpParseError(f"m= port {port} out of range")
            media.append(
                MediaSection(
                    media=media_match.group(1),
                    port=port,
                    protocol=media_match.group(3),
                    formats=media_match.group(4).split(),
                )
            )
        elif kind == "a":
            _attribute(value, current)
            if current is None and value in DIRECTIONS:
                session_direction = value
    if origin is None:
        raise SdpParseError("SDP has no o= line")
    return SessionDescription(
        origin_session_id=origin[0],
        origin_version=origin[1],
        origin_address=origin[2],
        connection_address=session_connection,
        direction=session_direction,
        media=media,
    )


def _attribute(value: str, current: MediaSection | None) -> None:
    if current is None:
        return  # session-level attributes other than direction do not matter to a recorder
    name, _, rest = value.partition(":")
    if value in DIRECTIONS:
        current.direction = value
    elif name == "label":
        if not rest or len(rest) > 64 or not re.fullmatch(r"[\x21-\x7e]+", rest):
            raise SdpParseError(f"malformed a=label {rest[:40]!r}")
        current.label = rest
    elif name == "rtpmap":
        rtpmap = _RTPMAP.match(rest)
        if rtpmap is None:
            raise SdpParseError(f"malformed a=rtpmap {rest[:40]!r}")
        current.rtpmap[int(rtpmap.group(1))] = (rtpmap.group(2).upper(), int(rtpmap.group(3)))
    elif name == "fmtp":
        fmtp = _FMTP.match(rest)
        if fmtp is not None:
            current.fmtp[int(fmtp.group(1))] = fmtp.group(2)
    elif value == "rtcp-mux":
        current.rtcp_mux = True


# The answer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamAnswer:
    """Our side of one offered m= section. ``port`` 0 rejects the stream."""

    port: int
    payload_type: int | None = None
    codec: Codec | None = None


def build_answer(
    offer: SessionDescription,
    answers: list[StreamAnswer],
    *,
    address: str,
    session_id: str,
    version: int,
) -> bytes:
    """The SDP answer: one section per offered section, in the offer's order (RFC 3264 §6)."""
    if len(answers) != len(offer.media):
        raise ValueError("one answer per offered media section")
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=CallScribe {session_id} {version} IN {family} {address}",
        "s=CallScribe recording",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    for section, answer in zip(offer.media, answers, strict=True):
        if answer.port == 0 or answer.codec is None or answer.payload_type is None:
            # A rejected stream keeps the offer's formats (RFC 3264 §6: port zero, same list).
            lines.append(f"m={section.media} 0 {section.protocol} {' '.join(section.formats)}")
            if section.label is not None:
                lines.append(f"a=label:{section.label}")
            continue
        pt = answer.payload_type
        lines.append(f"m=audio {answer.port} RTP/AVP {pt}")
        lines.append(f"a=rtpmap:{pt} {answer.codec.name}/{answer.codec.clock_rate}")
        if answer.codec is G729:
            # We decode Annex B comfort-noise frames as silence, but ask for plain frames.
            lines.append(f"a=fmtp:{pt} annexb=no")
        if section.label is not None:
            lines.append(f"a=label:{section.label}")
        if section.rtcp_mux:
            lines.append("a=rtcp-mux")
        direction = section.direction or offer.direction or "sendrecv"
        lines.append(f"a={_ANSWER_DIRECTION[direction]}")
    return ("\r\n".join(lines) + "\r\n").encode()


def offered_direction(offer: SessionDescription, section: MediaSection) -> str:
    return section.direction or offer.direction or "sendrecv"


def accepts(section: MediaSection) -> bool:
    """Whether we can record this section at all: RTP audio without SRTP, a usable port."""
    return (
        section.media == "audio"
        and section.protocol.upper() == "RTP/AVP"
        and section.port != 0
        and section.choose_codec() is not None
    )
