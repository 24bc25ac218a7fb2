"""Test helpers for SIPREC: SBC-style INVITEs (Avaya, Cisco, Ribbon shapes, written from the
published RFC 7865/7866 structure and each vendor's documented headers), an RTP sender that
plays the sample call, encoders for PCMA and G.729 (libbcg729, a real encoder, via ctypes),
and a sipp runner."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from callscribe.audio import ulaw_to_pcm16
from callscribe.siprec.rtp import RtpPacket, build_rtp

SIPP_DIR = Path(__file__).parent / "sipp"
FRAME_MS = 20
FRAME_SAMPLES = 160

# Offers ---------------------------------------------------------------------------------------

RECORDING_1 = "urn:ietf:params:xml:ns:recording:1"
RECORDING_DRAFT = "urn:ietf:params:xml:ns:recording"


# The caller and the agent as the SBC scenarios' metadata name them.
CUSTOMER_AOR = "sip:+14155550123@carrier.example.com"
AGENT_AOR = "sip:4001@cc.example.com"


@dataclass
class OfferedStream:
    label: str
    port: int = 40000
    payload_types: tuple[int, ...] = (0,)
    rtpmaps: tuple[str, ...] = ("0 PCMU/8000",)
    extra: tuple[str, ...] = ()
    direction: str = "sendonly"


def sdp_offer(streams: list[OfferedStream], address: str = "192.0.2.10") -> str:
    lines = ["v=0", f"o=SBC 1000 1 IN IP4 {address}", "s=SIPREC", f"c=IN IP4 {address}", "t=0 0"]
    for stream in streams:
        lines.append(
            f"m=audio {stream.port} RTP/AVP {' '.join(str(p) for p in stream.payload_types)}"
        )
        lines += [f"a=rtpmap:{m}" for m in stream.rtpmaps]
        lines += list(stream.extra)
        lines.append(f"a=label:{stream.label}")
        lines.append(f"a={stream.direction}")
    return "\r\n".join(lines) + "\r\n"


def rfc7865_metadata(
    participants: list[tuple[str, str, str]],  # (aor, display name, label it sends)
    *,
    session_id: str = "hVpd7YQgRW2nD22h7q60JQ==",
    vendor_extension: str = "",
) -> str:
    """RFC 7865 (namespace recording:1) metadata: participants, streams, associations."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<recording xmlns="{RECORDING_1}">',
        "  <datamode>complete</datamode>",
        f'  <session session_id="{session_id}">',
        "    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba3</sipSessionID>",
        "  </session>",
    ]
    for index, (aor, name, label) in enumerate(participants):
        parts += [
            f'  <participant participant_id="p{index}">',
            f'    <nameID aor="{aor}"><name xml:lang="en">{name}</name></nameID>',
            "  </participant>",
            f'  <stream stream_id="s{index}" session_id="{session_id}"><label>{label}</label></stream>',
            f'  <participantstreamassoc participant_id="p{index}">',
            f"    <send>s{index}</send>",
            *[f"    <recv>s{other}</recv>" for other in range(len(participants)) if other != index],
            "  </participantstreamassoc>",
        ]
    parts += [vendor_extension, "</recording>"]
    return "\n".join(p for p in parts if p)


def draft_metadata(participants: list[tuple[str, str, str]], session: str = "sess-1") -> str:
    """Pre-RFC draft metadata (namespace recording, ``id`` attributes, ``<send>`` inside the
    participant) as older Cisco CUBE and Acme Packet releases send it, with a vendor block."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<recording xmlns='{RECORDING_DRAFT}'>",
        "<datamode>complete</datamode>",
        f"<session id='{session}'><start-time>2024-03-01T10:00:00Z</start-time></session>",
    ]
    for index, (aor, name, label) in enumerate(participants):
        parts += [
            f"<participant id='part{index}' session='{session}'>",
            f"<nameID aor='{aor}'><name>{name}</name></nameID>",
            f"<send>strm{index}</send>",
            "</participant>",
            f"<stream id='strm{index}' session='{session}'><label>{label}</label>"
            "<mode>separate</mode></stream>",
        ]
    parts += [
        "<extensiondata xmlns:call='urn:x-cisco:params:xml:ns:callinfo'>",
        "<call:callData><call:gcid>3f2c9a00-1dd2-11b2-8c7e-a1b2c3d4e5f6</call:gcid>",
        "<call:callid>412</call:callid></call:callData></extensiondata>",
        "</recording>",
    ]
    return "\n".join(parts)


def multipart(parts: list[tuple[str, str, dict[str, str]]], boundary: str) -> str:
    out = []
    for content_type, body, headers in parts:
        out.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n")
        for name, value in headers.items():
            out.append(f"{name}: {value}\r\n")
        out.append("\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n"))
        if not body.endswith("\n"):
            out.append("\r\n")
    out.append(f"--{boundary}--\r\n")
    return "".join(out)


def sip_request(
    method: str,
    headers: list[tuple[str, str]],
    body: str = "",
    uri: str = "sip:srs@192.0.2.50:5070",
) -> bytes:
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers]
    encoded = body.encode()
    lines.append(f"Content-Length: {len(encoded)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded


def dialog_headers(
    method: str,
    *,
    call_id: str,
    cseq: int = 1,
    branch: str | None = None,
    from_tag: str = "sbc-tag-1",
    to_tag: str | None = None,
    via_host: str = "192.0.2.10:5060",
    transport: str = "UDP",
) -> list[tuple[str, str]]:
    to = "<sip:srs@192.0.2.50:5070>" + (f";tag={to_tag}" if to_tag else "")
    return [
        (
            "Via",
            f"SIP/2.0/{transport} {via_host};branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:12]};rport",
        ),
        ("Max-Forwards", "70"),
        ("From", f"<sip:sbc@192.0.2.10>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]


def avaya_invite(
    call_id: str = "avaya-1@192.0.2.10",
    ucid_hex: str = "00FA080002D3DF63111234",
    branch: str | None = None,
    codec: str = "PCMU",
) -> bytes:
    """Avaya SBCE forking a Communication Manager call: UCID in User-to-User (hex, shared UUI),
    RFC 7865 metadata, two PCMU streams labelled 1 and 2, telephone-event offered too."""
    pt = {"PCMU": 0, "PCMA": 8, "G729": 18}[codec]
    streams = [
        OfferedStream(
            "1",
            35000,
            (pt, 101),
            (f"{pt} {codec}/8000", "101 telephone-event/8000"),
            ("a=fmtp:101 0-15", "a=ptime:20"),
        ),
        OfferedStream(
            "2",
            35002,
            (pt, 101),
            (f"{pt} {codec}/8000", "101 telephone-event/8000"),
            ("a=fmtp:101 0-15", "a=ptime:20"),
        ),
    ]
    metadata = rfc7865_metadata(
        [
            ("sip:+14155550123@carrier.example.com", "Caller", "1"),
            ("sip:4001@cm.example.com", "Agent 4001", "2"),
        ],
        vendor_extension=(
            '  <extensiondata xmlns:avaya="urn:ietf:params:xml:ns:Avaya">'
            "<avaya:ucid>FA080002D3DF63111234</avaya:ucid></extensiondata>"
        ),
    )
    body = multipart(
        [
            ("application/sdp", sdp_offer(streams), {}),
            ("application/rs-metadata+xml", metadata, {"Content-Disposition": "recording-session"}),
        ],
        "unique-boundary-1",
    )
    headers = dialog_headers("INVITE", call_id=call_id, branch=branch) + [
        ("Contact", "<sip:sbce@192.0.2.10:5060;transport=udp>;+sip.src"),
        ("Require", "siprec"),
        ("Supported", "timer, replaces"),
        ("Session-Expires", "1800;refresher=uac"),
        ("User-to-User", f"{ucid_hex};encoding=hex"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"),
        ("User-Agent", "Avaya SBCE"),
        ("Content-Type", "multipart/mixed;boundary=unique-boundary-1"),
    ]
    return sip_request("INVITE", headers, body)


def cisco_invite(call_id: str = "C2B1@192.0.2.20") -> bytes:
    """Cisco CUBE: Cisco-Guid header, draft-namespace metadata as application/rs-metadata
    (no +xml), G.729 with annexb=no, compact header forms."""
    streams = [
        OfferedStream(
            "1",
            16384,
            (18, 101),
            ("18 G729/8000", "101 telephone-event/8000"),
            ("a=fmtp:18 annexb=no", "a=fmtp:101 0-16"),
        ),
        OfferedStream(
            "2",
            16386,
            (18, 101),
            ("18 G729/8000", "101 telephone-event/8000"),
            ("a=fmtp:18 annexb=no", "a=fmtp:101 0-16"),
        ),
    ]
    metadata = draft_metadata(
        [("sip:8005550199@192.0.2.21", "8005550199", "1"), ("sip:2001@192.0.2.30", "2001", "2")]
    )
    body = multipart(
        [
            ("application/sdp", sdp_offer(streams, "192.0.2.20"), {}),
            ("application/rs-metadata", metadata, {"Content-Disposition": "recording-session"}),
        ],
        "uniqueBoundary",
    )
    headers = [
        ("v", "SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK1A2B3C"),
        ("f", "<sip:192.0.2.20>;tag=CUBE-7F1"),
        ("t", "<sip:srs@192.0.2.50>"),
        ("Date", "Fri, 01 Mar 2024 10:00:00 GMT"),
        ("i", call_id),
        ("Supported", "timer,resource-priority,replaces,sdp-anat"),
        ("Min-SE", "1800"),
        ("Cisco-Guid", "0867617078-0032318833-2221801472-0002236962"),
        ("User-Agent", "Cisco-SIPGateway/IOS-17.6"),
        (
            "Allow",
            "INVITE, OPTIONS, BYE, CANCEL, ACK, PRACK, UPDATE, REFER, SUBSCRIBE, NOTIFY, INFO, REGISTER",
        ),
        ("CSeq", "101 INVITE"),
        ("Timestamp", "1709287200"),
        ("m", "<sip:192.0.2.20:5060>;+sip.src"),
        ("Expires", "180"),
        ("Require", "siprec"),
        ("Max-Forwards", "70"),
        ("c", 'multipart/mixed;boundary="uniqueBoundary"'),
        ("Mime-Version", "1.0"),
    ]
    return sip_request("INVITE", headers, body, uri="sip:srs@192.0.2.50:5060")


def ribbon_invite(call_id: str = "ribbon-9@192.0.2.40") -> bytes:
    """Ribbon SBC: call id in an X- header, PCMA, labels 10/11 with the agent first, metadata
    with a Ribbon extension inside a participant, folded header lines."""
    streams = [
        OfferedStream("10", 20000, (8,), ("8 PCMA/8000",), ("a=ptime:20",)),
        OfferedStream("11", 20002, (8,), ("8 PCMA/8000",), ("a=ptime:20",)),
    ]
    metadata = rfc7865_metadata(
        [
            ("sip:agent.jane@cc.example.com", "Jane (agent)", "10"),
            ("tel:+442079460000", "Customer", "11"),
        ],
        session_id="kJm3QhVxT0qk9Vv2sNQ6aA==",
        vendor_extension=(
            '  <extensiondata xmlns:rbbn="http://ribboncommunications.com/siprec">'
            "<rbbn:gcid>GCID-77812</rbbn:gcid><rbbn:direction>inbound</rbbn:direction>"
            "</extensiondata>"
        ),
    )
    body = multipart(
        [
            ("application/sdp", sdp_offer(streams, "192.0.2.40"), {"Content-ID": "<sdp@ribbon>"}),
            (
                "application/rs-metadata+xml",
                metadata,
                {
                    "Content-Disposition": "recording-session; handling=required",
                    "Content-ID": "<meta@ribbon>",
                },
            ),
        ],
        "----=_Part_0_1234.5678",
    )
    headers = dialog_headers("INVITE", call_id=call_id, via_host="192.0.2.40:5060") + [
        ("Contact", "<sip:sbc@192.0.2.40:5060>;+sip.src"),
        ("Require", "siprec"),
        ("X-UCID", "RBBN-20240301-000123"),
        ("Content-Type", 'multipart/mixed;\r\n boundary="----=_Part_0_1234.5678"'),
    ]
    return sip_request("INVITE", headers, body)


def plain_invite(
    call_id: str,
    streams: list[OfferedStream],
    *,
    media_address: str,
    via_host: str,
    transport: str = "UDP",
) -> bytes:
    """An INVITE recording ``streams`` with a plain SDP body and no metadata (the recorder then
    takes the Call-ID as the call's guid), sent from ``via_host``."""
    headers = dialog_headers(
        "INVITE",
        call_id=call_id,
        from_tag=f"tag-{uuid.uuid4().hex[:8]}",
        via_host=via_host,
        transport=transport,
    ) + [
        ("Contact", f"<sip:sbc@{via_host}>;+sip.src"),
        ("Require", "siprec"),
        ("Content-Type", "application/sdp"),
    ]
    return sip_request("INVITE", headers, sdp_offer(streams, media_address))


def numbered_streams(count: int, first_port: int = 40000) -> list[OfferedStream]:
    return [OfferedStream(str(n + 1), first_port + 2 * n) for n in range(count)]


class SipUdpPeer:
    """A bare SIP peer on a UDP socket of a chosen loopback address: an SBC, or somebody
    posing as one, where a test needs exact control of what is offered."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.via_host = f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        self.sock.close()

    async def request(self, data: bytes, target: tuple[str, int], timeout_s: float = 20.0) -> Any:
        """Send a request; its final response (provisional ones, and responses to other
        requests, are skipped). An INVITE's final response is acknowledged."""
        from callscribe.siprec.message import parse_message, transaction_branch

        sent = parse_message(data)
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, target)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no final response"
            packet, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), remaining)
            message = parse_message(packet)
            if (
                getattr(message, "code", 0) < 200
                or message.call_id != sent.call_id
                or str(message.cseq) != str(sent.cseq)
            ):
                continue
            if sent.method == "INVITE":
                # A 2xx is acknowledged in a transaction of its own, a failure in the INVITE's.
                branch = None if message.code < 300 else transaction_branch(sent)
                ack = dialog_headers(
                    "ACK",
                    call_id=sent.call_id,
                    cseq=sent.cseq.sequence,
                    branch=branch,
                    to_tag=message.to_address.parameters["tag"],
                    from_tag=sent.from_address.parameters["tag"],
                    via_host=self.via_host,
                )
                await loop.sock_sendto(self.sock, sip_request("ACK", ack), target)
            return message

    async def invite(
        self,
        target: tuple[str, int],
        streams: list[OfferedStream],
        *,
        call_id: str | None = None,
        media_address: str | None = None,
    ) -> Any:
        """A recording session offered: the final response."""
        invite = plain_invite(
            call_id or f"call-{uuid.uuid4().hex}",
            streams,
            media_address=media_address or self.address[0],
            via_host=self.via_host,
        )
        return await self.request(invite, target)

    async def in_dialog(
        self, method: str, target: tuple[str, int], ok: Any, cseq: int, body: str = ""
    ) -> Any:
        """A re-INVITE (SDP ``body``) or BYE in the dialog that ``ok`` (the 200) set up."""
        headers = dialog_headers(
            method,
            call_id=ok.call_id,
            cseq=cseq,
            to_tag=ok.to_address.parameters["tag"],
            from_tag=ok.from_address.parameters["tag"],
            via_host=self.via_host,
        )
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return await self.request(sip_request(method, headers, body), target)


def answered_ports(response: Any) -> list[int]:
    """The RTP ports of an SDP answer, in stream order (0: a stream refused)."""
    return [int(port) for port in re.findall(rb"m=audio (\d+)", response.body)]


# Codecs -----------------------------------------------------------------------------------


def pcm16_to_alaw(samples: np.ndarray) -> bytes:
    """ITU-T G.711 A-law encoding."""
    pcm = samples.astype(np.int32)
    sign = np.where(pcm >= 0, 0x80, 0)
    magnitude = np.minimum(np.where(pcm >= 0, pcm, -pcm - 1), 32767) >> 3
    exponent = np.zeros_like(magnitude)
    for bit in range(1, 8):
        exponent = np.where(magnitude >= (16 << bit), bit, exponent)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


class G729Encoder:
    """G.729 Annex A encoding with Belledonne's bcg729 (Debian libbcg729-0), through ctypes."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("bcg729") or "libbcg729.so.0"
        self._lib = ctypes.CDLL(path)  # absent library: OSError, the test fails (never skips)
        self._lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
        self._lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
        self._lib.bcg729Encoder.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int16),
            ctypes.POINTER(ctypes.c_uint8),
            ctypes.POINTER(ctypes.c_uint8),
        ]
        self._lib.closeBcg729EncoderChannel.argtypes = [ctypes.c_void_p]
        self._channel = self._lib.initBcg729EncoderChannel(0)  # no VAD: every frame 10 bytes

    def encode(self, pcm16: np.ndarray) -> bytes:
        out = bytearray()
        length = ctypes.c_uint8(0)
        for start in range(0, len(pcm16) - 79, 80):
            frame = np.ascontiguousarray(pcm16[start : start + 80], dtype=np.int16)
            bits = (ctypes.c_uint8 * 10)()
            self._lib.bcg729Encoder(
                self._channel,
                frame.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
                bits,
                ctypes.byref(length),
            )
            out += bytes(bits)[: length.value]
        return bytes(out)

    def close(self) -> None:
        if self._channel:
            self._lib.closeBcg729EncoderChannel(self._channel)
            self._channel = None


PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8, "G729": 18}


def encode_track(ulaw: bytes, codec: str) -> list[bytes]:
    """A μ-law track as 20 ms RTP payloads in ``codec``."""
    frames = len(ulaw) // FRAME_SAMPLES
    if codec == "PCMU":
        return [ulaw[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(frames)]
    pcm = ulaw_to_pcm16(ulaw[: frames * FRAME_SAMPLES])
    if codec == "PCMA":
        encoded = pcm16_to_alaw(pcm)
        return [encoded[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(frames)]
    encoder = G729Encoder()
    try:
        encoded = encoder.encode(pcm)
    finally:
        encoder.close()
    return [encoded[i * 20 : (i + 1) * 20] for i in range(frames)]


# RTP sender -----------------------------------------------------------------------------------


class _Sink(asyncio.DatagramProtocol):
    pass


def bind_rtp_sockets(labels: list[str], host: str = "127.0.0.1") -> dict[str, socket.socket]:
    """A UDP socket per stream, bound where the SDP offer says the stream comes from: like an
    SBC (symmetric RTP, RFC 4961), a test sends each stream from the address and port it
    offered, the only source the recorder takes it from. SO_REUSEPORT lets a test send other
    packets from the very same source too."""
    sockets = {}
    for label in labels:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        sock.setblocking(False)
        sockets[label] = sock
    return sockets


def source_ports(sources: dict[str, socket.socket]) -> list[str]:
    """The sockets' ports in stream order, for the offer (siprec_call.xml's field5, field6)."""
    return [str(sock.getsockname()[1]) for sock in sources.values()]


@dataclass
class RtpPlayback:
    """Paced playback of several streams' payloads to RTP ports, in real time × speed, each
    stream sent from its socket in ``sources`` (see :func:`bind_rtp_sockets`)."""

    destinations: dict[str, tuple[str, int]]  # label -> (host, port)
    payloads: dict[str, list[bytes]]  # label -> 20 ms payloads
    payload_type: int
    sources: dict[str, socket.socket]  # label -> the bound socket it is sent from
    speed: float = 1.0
    started_at: float = 0.0
    packets_sent: dict[str, int] = field(default_factory=dict)
    ssrcs: dict[str, int] = field(default_factory=dict)

    async def play(
        self, *, first_frame: int = 0, last_frame: int | None = None, on_frame: Any = None
    ) -> None:
        loop = asyncio.get_running_loop()
        transports = {
            label: (await loop.create_datagram_endpoint(_Sink, sock=sock))[0]
            for label, sock in self.sources.items()
        }
        try:
            frames = min(len(p) for p in self.payloads.values())
            last = frames if last_frame is None else min(frames, last_frame)
            for label in self.payloads:
                self.ssrcs.setdefault(label, int.from_bytes(os.urandom(4), "big"))
                self.packets_sent.setdefault(label, 0)
            self.started_at = time.time()
            base_ts = 1000
            for frame in range(first_frame, last):
                if on_frame is not None:
                    on_frame(frame)
                for label, payloads in self.payloads.items():
                    packet = RtpPacket(
                        payload_type=self.payload_type,
                        marker=frame == first_frame,
                        sequence=(frame + 7) & 0xFFFF,
                        timestamp=base_ts + frame * FRAME_SAMPLES,
                        ssrc=self.ssrcs[label],
                        payload=payloads[frame],
                    )
                    transports[label].sendto(build_rtp(packet), self.destinations[label])
                    self.packets_sent[label] += 1
                due = self.started_at + (frame - first_frame + 1) * FRAME_MS / 1000 / self.speed
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            for transport in transports.values():
                transport.close()


# API --------------------------------------------------------------------------------------


class SiprecApi:
    """start/stop/messages for namespace siprec (the simulate.ApiClient speaks Twilio's)."""

    def __init__(self, base_url: str, api_id: str, api_secret: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"asapp-api-id": api_id, "asapp-api-secret": api_secret},
            timeout=120,
        )

    async def start(
        self, guid: str, customer_id: str = "CUST-1", agent_id: str = "AGENT-1", **params: Any
    ) -> httpx.Response:
        return await self.http.post(
            "/mg-autotranscribe/v1/start-streaming",
            json={
                "namespace": "siprec",
                "guid": guid,
                "customerId": customer_id,
                "agentId": agent_id,
                "autotranscribeParams": {"language": "en-US", **params},
            },
        )

    async def stop(self, guid: str) -> httpx.Response:
        return await self.http.post(
            "/mg-autotranscribe/v1/stop-streaming", json={"namespace": "siprec", "guid": guid}
        )

    async def messages(self, guid: str) -> httpx.Response:
        return await self.http.get(
            "/conversation/v1/conversation/messages",
            params={"externalConversationId": guid, "namespace": "siprec"},
        )

    async def close(self) -> None:
        await self.http.aclose()


# sipp -------------------------------------------------------------------------------------


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on loopback right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def sipp_binary() -> str:
    path = shutil.which("sipp")
    assert path is not None, "sipp is not installed: scripts/test.sh installs sip-tester"
    return path


@dataclass
class SippRun:
    process: asyncio.subprocess.Process
    workdir: Path
    scenario: str
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def log_path(self) -> Path:
        return self.workdir / "sipp.log"

    def logged(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    async def wait_logged(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.logged():
                match = regex.search(line)
                if match:
                    return match
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"sipp never logged {pattern!r}; log: {self.logged()!r}; "
            f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"
        )

    async def finish(self, timeout_s: float = 120.0) -> int:
        self.stdout, self.stderr = await asyncio.wait_for(self.process.communicate(), timeout_s)
        assert self.process.returncode is not None
        return self.process.returncode

    def messages(self) -> str:
        logs = list(self.workdir.glob("*_messages.log"))
        return logs[0].read_text(errors="replace") if logs else ""


async def start_sipp(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    variables: dict[str, str] | None = None,
    transport: str = "u1",
    calls: int = 1,
    rate: float = 10.0,
    pause_ms: int = 1000,
    injection: list[list[str]] | None = None,
    timeout_s: int = 300,
) -> SippRun:
    """sipp as the SBC: runs ``tests/sipp/<scenario>.xml`` against the recorder."""
    workdir.mkdir(parents=True, exist_ok=True)
    # sipp binds 5060 and 6000 unless told otherwise: give it free ports, so that runs side by
    # side (and a real SIP stack on this machine) do not collide.
    args = [
        sipp_binary(),
        f"{target[0]}:{target[1]}",
        "-sf",
        str(SIPP_DIR / f"{scenario}.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_tcp_port()),
        "-mp",
        str(free_udp_tcp_port()),
        "-t",
        transport,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(max(calls, 1)),
        "-d",
        str(pause_ms),
        "-trace_msg",
        "-message_file",
        str(workdir / "sipp_messages.log"),
        "-trace_logs",
        "-log_file",
        str(workdir / "sipp.log"),
        "-trace_err",
        "-error_file",
        str(workdir / "sipp_errors.log"),
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-nostdin",
    ]
    for name, value in (variables or {}).items():
        args += ["-set", name, value]
    if injection is not None:
        csv = workdir / "calls.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(";".join(row) + ";\n" for row in injection))
        args += ["-inf", str(csv)]
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    return SippRun(process, workdir, scenario)


def summary_json(response: httpx.Response) -> dict[str, Any]:
    return json.loads(response.text)
