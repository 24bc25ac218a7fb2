"""The SIPREC recording server: SIP over UDP and TCP on one port, RTP on a port range, each
recording session a ``CallSession`` keyed by (tenant, "siprec", guid).

It wraps the sans-IO :class:`~callscribe.siprec.uas.RecordingServerUas` (signalling) and one
:class:`~callscribe.siprec.rtp.RtpStreamReceiver` per recorded stream (media), drives their
timers, and maps SIPREC onto the call model:

* the call's guid comes from the configured call-id sources (Avaya UCID, Cisco-Guid, …), its
  tenant from the SBC's address (SIPREC carries no credentials);
* each recorded stream is a channel named by its SDP label, its role decided by
  :mod:`~callscribe.siprec.roles`;
* BYE (or CANCEL, a session timer, a media timeout) finishes the open utterances and completes
  the call. While that runs, start/stop answer 409-203.

A session that fails to set up is answered with an error and leaves the others untouched;
nothing one SBC sends can stop the listeners. SIPREC carries no credentials and anyone may
reach the ports, so what a peer can hold is bounded: RTP ports per session and sessions per
source address (beyond them 488, or 503 with Retry-After, as when the port range is full),
SIP-over-TCP connections in all and per source, each closed when idle or when a message it
started does not finish in time; and a stream's RTP is taken only from the source its offer
named (see :class:`~callscribe.siprec.rtp.RtpSourceFilter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from callscribe.api.schemas import Namespace
from callscribe.calls import CallRegistry, CallSession
from callscribe.config import EndpointingSettings, SiprecSettings
from callscribe.siprec.callid import CallIdSource, parse_sources, resolve_call_guid
from callscribe.siprec.message import KeepAlive, SipFramingError, SipStreamFramer, safe_text
from callscribe.siprec.metadata import RecordingMetadata
from callscribe.siprec.offer import RecordingOffer
from callscribe.siprec.roles import RoleRules, assign_roles
from callscribe.siprec.rtp import CallClock, RtpSourceFilter, RtpStats, RtpStreamReceiver
from callscribe.siprec.sdp import (
    Codec,
    MediaSection,
    SessionDescription,
    StreamAnswer,
    accepts,
    build_answer,
    offered_direction,
)
from callscribe.siprec.uas import (
    MessageDropped,
    Output,
    Peer,
    RecordingChanged,
    RecordingEnded,
    RecordingOffered,
    RecordingServerUas,
    RequestRejected,
    Send,
)
from callscribe.store.base import CallKey, Store
from callscribe.transcription import TranscriptionPipeline

log = logging.getLogger(__name__)

TICK_S = 0.05
MEDIA_CHECK_S = 1.0
BIND_ATTEMPTS = 50
# RTP is not flow-controlled: while the event loop is busy (VAD runs in it) packets wait in
# the socket. 1 MiB holds several seconds of a stream (the kernel may cap it at rmem_max).
RTP_RECEIVE_BUFFER_BYTES = 1 << 20
# Ports come free as calls end, minutes rather than seconds: an SBC told to come back sooner
# would only be refused again (and SBCs fail over to another recorder meanwhile).
RETRY_AFTER_S = 30
# A flood of connections must not become a flood of log lines: one line per kind of event in
# this many seconds, which says how many more there were.
LOG_INTERVAL_S = 10.0


class SiprecConfigError(ValueError):
    pass


class RtpPortsExhausted(OSError):
    """Every port pair of the RTP range is taken, by our streams or by other programs."""


@dataclass(frozen=True)
class _Refusal:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def _service_unavailable(reason: str) -> _Refusal:
    return _Refusal(
        503, f"Service Unavailable: {reason}", (("Retry-After", str(RETRY_AFTER_S)),)
    )


class _RateLimitedLog:
    """At most one warning per kind of event per interval; the next one counts those held."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] += 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held and last is not None:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, held, now - last)
        log.warning(message, *args)


@dataclass
class SiprecServices:
    store: Store
    pipeline: TranscriptionPipeline
    registry: CallRegistry
    endpointing: EndpointingSettings
    settings: SiprecSettings
    host: str = "127.0.0.1"
    owner: str = "local"


# Configuration ------------------------------------------------------------------------------


def parse_port_range(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    first, last = int(low), int(high)
    if not (1024 <= first < last <= 65535):
        raise SiprecConfigError(f"RTP port range {spec!r}: need 1024 <= first < last <= 65535")
    return first, last


def parse_tenant_map(
    spec: str,
) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    mapping = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        network, _, tenant = item.partition("=")
        try:
            parsed = ipaddress.ip_network(network.strip(), strict=False)
        except ValueError:
            raise SiprecConfigError(f"bad SBC address {network!r} in tenant map") from None
        if not tenant.strip():
            raise SiprecConfigError(f"no tenant for {network!r} in tenant map")
        mapping.append((parsed, tenant.strip()))
    # The most specific network wins.
    return sorted(mapping, key=lambda entry: -entry[0].prefixlen)


# RTP ports ----------------------------------------------------------------------------------


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)


class RtpPortAllocator:
    """Even RTP ports from a range, each with the odd port above it for RTCP (RFC 3550 §11).
    Ports are handed out round-robin so a port just released is not reused at once (late
    packets of the old stream would land in the new one); ports taken by other programs are
    skipped."""

    def __init__(self, first: int, last: int) -> None:
        self.first = first + (first % 2)
        self.last = last
        self._next = self.first
        self.in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        """Port pairs in the range (each even port needs the odd one above it)."""
        return max(0, (self.last - 1 - self.first) // 2 + 1)

    @property
    def available(self) -> int:
        """Pairs not used by our streams (other programs may still hold some)."""
        return self.capacity - len(self.in_use)

    async def open(
        self, host: str, on_rtp: Any, on_rtcp: Any
    ) -> tuple[int, asyncio.DatagramTransport, asyncio.DatagramTransport]:
        loop = asyncio.get_running_loop()
        for _ in range(self.capacity):
            port = self._next
            self._next = self._next + 2 if self._next + 3 <= self.last else self.first
            if port in self.in_use:
                continue
            try:
                rtp, _ = await loop.create_datagram_endpoint(
                    lambda: _RtpProtocol(on_rtp), local_addr=(host, port)
                )
            except OSError:
                continue
            with contextlib.suppress(OSError):
                rtp.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, RTP_RECEIVE_BUFFER_BYTES
                )
            try:
                rtcp, _ = await loop.create_datagram_endpoint(
                    lambda: _RtpProtocol(on_rtcp), local_addr=(host, port + 1)
                )
            except OSError:
                rtp.close()
                continue
            self.in_use.add(port)
            return port, rtp, rtcp  # type: ignore[return-value]
        raise RtpPortsExhausted(f"no free RTP port in {self.first}-{self.last}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)


# Recording sessions -------------------------------------------------------------------------


@dataclass
class _MediaStream:
    label: str
    port: int
    receiver: RtpStreamReceiver
    source: RtpSourceFilter
    rtp: asyncio.DatagramTransport
    rtcp: asyncio.DatagramTransport
    payload_type: int
    codec: Codec
    direction: str = "sendonly"
    rtcp_packets: int = 0

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


@dataclass
class _Recording:
    session_id: str
    key: CallKey
    peer: Peer
    call: CallSession | None = None
    streams: dict[str, _MediaStream] = field(default_factory=dict)
    metadata: RecordingMetadata | None = None
    sdp: SessionDescription | None = None
    clock: CallClock = field(default_factory=CallClock)
    answer_version: int = 0
    ended: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    contact: tuple[str, int] = ("127.0.0.1", 0)
    guid_source: str = ""


@dataclass
class _TcpConnection:
    transport: asyncio.Transport
    host: str
    last_message_at: float  # the last complete message or ping (or the connection's opening)
    message_started_at: float | None = None  # while a message is arriving


@dataclass
class SiprecStats:
    sessions_offered: int = 0
    sessions_answered: int = 0
    sessions_rejected: int = 0
    sessions_ended: int = 0
    messages_dropped: int = 0
    tcp_connections: int = 0
    tcp_connections_refused: int = 0
    tcp_connections_timed_out: int = 0
    # RTP counters of finished sessions (live ones are added in snapshot()).
    rtp: RtpStats = field(default_factory=RtpStats)


class SiprecGateway:
    def __init__(self, services: SiprecServices) -> None:
        self.services = services
        settings = services.settings
        self.call_id_sources: tuple[CallIdSource, ...] = parse_sources(settings.call_id_sources)
        self.role_rules = RoleRules.from_settings(
            settings.agent_pattern,
            settings.customer_pattern,
            settings.label_roles,
            settings.first_stream_role,
        )
        self.tenant_map = parse_tenant_map(settings.tenant_by_source)
        self.ports = RtpPortAllocator(*parse_port_range(settings.rtp_ports))
        self.stats = SiprecStats()
        self.port = 0
        self.uas: RecordingServerUas | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: dict[int, _TcpConnection] = {}
        self._connections_by_host: Counter[str] = Counter()
        self._connection_ids = itertools.count(1)
        self._rate_limited = _RateLimitedLog()
        self._recordings: dict[str, _Recording] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.services.host
        wanted = self.services.settings.port
        for _ in range(BIND_ATTEMPTS if wanted == 0 else 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _SipUdpProtocol(self), local_addr=(host, wanted)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await loop.create_server(
                    lambda: _SipTcpProtocol(self), host, port, reuse_address=True
                )
            except OSError:
                udp.close()
                if wanted:
                    raise
                continue  # the free UDP port is taken for TCP: try another
            self._udp, self._tcp, self.port = udp, tcp, port  # type: ignore[assignment]
            break
        else:
            raise OSError("no port free for both SIP over UDP and TCP")
        self.uas = RecordingServerUas(local_port=self.port)
        self._ticker = loop.create_task(self._tick_forever())
        log.info("SIPREC recorder on %s:%d (UDP and TCP)", host, self.port)

    async def stop(self) -> None:
        """Stop listening; flush each session's buffered audio into its call. The calls are
        completed by the runtime's shutdown (no BYE is sent: the SBC sees the server go)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self._connections.values()):
                connection.transport.close()
            await self._tcp.wait_closed()
        for recording in list(self._recordings.values()):
            self._flush_media(recording)
            self._close_media(recording)

    @property
    def live_sessions(self) -> int:
        return sum(1 for r in self._recordings.values() if not r.ended)

    def recording_of(self, guid: str) -> _Recording | None:
        for recording in self._recordings.values():
            if recording.key.guid == guid:
                return recording
        return None

    # Input from the sockets ---------------------------------------------------------------------

    def sip_received(self, data: bytes, peer: Peer) -> None:
        assert self.uas is not None
        self._dispatch(self.uas.receive(data, peer, time.monotonic()))

    def _dispatch(self, outputs: list[Output]) -> None:
        for output in outputs:
            try:
                if isinstance(output, Send):
                    self._send(output)
                elif isinstance(output, RecordingOffered):
                    self._offered(output)
                elif isinstance(output, RecordingChanged):
                    self._changed(output)
                elif isinstance(output, RecordingEnded):
                    self._ended(output)
                elif isinstance(output, RequestRejected):
                    log.log(
                        logging.WARNING if output.status >= 500 else logging.INFO,
                        "SIP %s from %s answered %d %s",
                        output.method,
                        _where(output.peer),
                        output.status,
                        safe_text(output.reason),
                    )
                elif isinstance(output, MessageDropped):
                    self.stats.messages_dropped += 1
                    log.warning(
                        "SIP message from %s dropped: %s", _where(output.peer), output.reason
                    )
            except Exception:
                log.exception("SIPREC: handling %s failed", type(output).__name__)

    def _send(self, send: Send) -> None:
        if send.peer.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(send.data, send.peer.address)
            return
        connection = self._connections.get(send.peer.connection or -1)
        if connection is None or connection.transport.is_closing():
            log.info("SIP over TCP to %s: connection gone, message lost", _where(send.peer))
            return
        connection.transport.write(send.data)

    # Session set-up -------------------------------------------------------------------------

    def _offered(self, offered: RecordingOffered) -> None:
        self.stats.sessions_offered += 1
        admitted = self._admit(offered)
        if isinstance(admitted, _Refusal):
            self._reject(offered.offer_id, admitted)
            return
        recording = admitted
        self._recordings[offered.session_id] = recording
        self._spawn(self._set_up(recording, offered))

    def _admit(self, offered: RecordingOffered) -> _Recording | _Refusal:
        """The new recording, or how to refuse it."""
        settings = self.services.settings
        source_host = offered.peer.address[0]
        tenant = self._tenant_of(source_host)
        if tenant is None:
            return _Refusal(403, "Forbidden: this SBC is not mapped to a tenant")
        request = offered.request
        headers = {name.lower(): request.headers[name] for name in request.headers.keys()}
        resolved = resolve_call_guid(self.call_id_sources, headers, offered.offer.metadata)
        if resolved is None:
            sources = ", ".join(str(s) for s in self.call_id_sources)
            return _Refusal(400, f"no call identifier found (looked at {sources})")
        guid, source = resolved
        assert offered.offer.sdp is not None  # the UAS refuses an INVITE without an SDP offer
        streams = len(_recorded_channels(offered.offer.sdp))
        if streams > settings.max_streams_per_session:
            return _too_many_streams(streams, settings.max_streams_per_session)
        key = CallKey(tenant, Namespace.SIPREC.value, guid)
        live = self.services.registry.get(key) is not None or any(
            r.key == key and not r.ended for r in self._recordings.values()
        )
        if live:
            return _Refusal(486, f"Busy Here: call {guid} is already being recorded")
        from_source = sum(
            1
            for r in self._recordings.values()
            if not r.ended and r.peer.address[0] == source_host
        )
        if from_source >= settings.max_sessions_per_source:
            return _service_unavailable(
                f"{from_source} sessions from {source_host}, the most one source may hold"
            )
        if streams > self.ports.available:
            return _service_unavailable("no free RTP port")
        return _Recording(
            offered.session_id,
            key,
            offered.peer,
            metadata=offered.offer.metadata,
            guid_source=str(source),
        )

    def _tenant_of(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None:
            for network, tenant in self.tenant_map:
                if ip.version == network.version and ip in network:
                    return tenant
        return self.services.settings.tenant or None

    async def _set_up(self, recording: _Recording, offered: RecordingOffered) -> None:
        sdp = offered.offer.sdp
        assert sdp is not None  # the UAS refuses an INVITE without an SDP offer
        try:
            answers, channels = await self._open_streams(recording, sdp)
            roles = assign_roles(self.role_rules, channels, recording.metadata)
            call = CallSession(
                recording.key,
                self.services.pipeline,
                self.services.store,
                self.services.endpointing,
                channels=channels,
                channel_roles=roles,
                owner=self.services.owner,
            )
            await call.open()
            recording.call = call
            if recording.ended:
                # Cancelled (or the SBC hung up) while the call was being registered.
                await self._finish(recording)
                return
            self.services.registry.add(call)
            recording.sdp = sdp
            recording.contact = (self._advertised_address(offered.peer), self.port)
            answer = self._answer(recording, sdp, answers)
        except Exception as exc:
            if isinstance(exc, RtpPortsExhausted):
                # Other programs hold ports of the range: as full as when our streams do.
                refusal = _service_unavailable("no free RTP port")
            else:
                log.exception("SIPREC session for call %s could not be set up", recording.key)
                refusal = _Refusal(500, "Server Internal Error")
            # Rejecting ends the session (RecordingEnded), which finishes a registered call;
            # streams opened before the call existed are closed here.
            self._reject(offered.offer_id, refusal)
            if recording.call is None:
                recording.ended = True
                self._close_media(recording)
                self._recordings.pop(recording.session_id, None)
                recording.finished.set()
            return
        assert self.uas is not None
        self._dispatch(
            self.uas.accept(offered.offer_id, answer, time.monotonic(), contact=recording.contact)
        )
        if not recording.ended:
            self.stats.sessions_answered += 1
            log.info(
                "SIPREC call %s (guid from %s) from %s recording streams %s",
                recording.key,
                recording.guid_source,
                _where(offered.peer),
                ", ".join(
                    f"{label}={roles.get(label, 'unassigned')}:{s.codec.name}@{s.port}"
                    for label, s in recording.streams.items()
                ),
            )

    async def _open_streams(
        self, recording: _Recording, sdp: SessionDescription
    ) -> tuple[list[StreamAnswer], list[str]]:
        """A port per recorded stream of the offer (new ones only on a re-offer)."""
        answers: list[StreamAnswer] = []
        channels: list[str] = []
        for index, section in enumerate(sdp.media):
            label = _channel_name(section, index, sdp)
            if not accepts(section):
                answers.append(StreamAnswer(0))
                continue
            choice = section.choose_codec()
            assert choice is not None
            payload_type, codec = choice
            expected, match_port = self._offered_source(sdp, section)
            stream = recording.streams.get(label)
            if stream is None:
                source = RtpSourceFilter(expected, match_port=match_port)
                stream = await self._open_stream(recording, label, payload_type, codec, source)
            else:
                stream.payload_type, stream.codec = payload_type, codec
                stream.receiver.set_payload_types({payload_type: codec})
                stream.source.expect(expected, match_port=match_port)
            stream.direction = offered_direction(sdp, section)
            answers.append(StreamAnswer(stream.port, payload_type, codec))
            channels.append(label)
        return answers, channels

    def _offered_source(
        self, sdp: SessionDescription, section: MediaSection
    ) -> tuple[tuple[str, int] | None, bool]:
        """Where the stream's RTP may come from (None: latch onto the first source), and
        whether its port must match too."""
        mode = self.services.settings.rtp_source
        match_port = mode != "offer-address"
        if mode == "first-packet":
            return None, match_port
        address = sdp.address_of(section)
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return None, match_port  # no address, or a host name: nothing to compare with
        if ip.is_unspecified or ip.is_multicast:
            return None, match_port
        return (str(ip), section.port), match_port

    async def _open_stream(
        self,
        recording: _Recording,
        label: str,
        payload_type: int,
        codec: Codec,
        source: RtpSourceFilter,
    ) -> _MediaStream:
        settings = self.services.settings
        receiver = RtpStreamReceiver(
            {payload_type: codec}, recording.clock, depth=settings.jitter_packets
        )
        holder: dict[str, _MediaStream] = {}

        def on_rtp(data: bytes, addr: tuple[str, int]) -> None:
            stream = holder.get("stream")
            if stream is None or recording.ended:
                return
            if not source.admits(addr):
                receiver.stats.wrong_source += 1
                return
            self._play(recording, stream, receiver.receive(data, time.monotonic()))

        def on_rtcp(data: bytes, addr: tuple[str, int]) -> None:
            stream = holder.get("stream")
            if stream is None:
                return
            if not source.admits_rtcp(addr):
                receiver.stats.wrong_source += 1
                return
            stream.rtcp_packets += 1  # sender reports are not needed: counted, dropped

        port, rtp, rtcp = await self.ports.open(self.services.host, on_rtp, on_rtcp)
        stream = _MediaStream(label, port, receiver, source, rtp, rtcp, payload_type, codec)
        holder["stream"] = stream
        recording.streams[label] = stream
        return stream

    def _play(self, recording: _Recording, stream: _MediaStream, decoded: list[Any]) -> None:
        call = recording.call
        if call is None or not decoded:
            return
        for chunk in decoded:
            call.audio(stream.label, chunk.pcm16, chunk.at_sample)

    def _answer(
        self, recording: _Recording, sdp: SessionDescription, answers: list[StreamAnswer]
    ) -> bytes:
        recording.answer_version += 1
        return build_answer(
            sdp,
            answers,
            address=recording.contact[0],
            session_id=str(int(recording.session_id[:10], 16)),
            version=recording.answer_version,
        )

    def _advertised_address(self, peer: Peer) -> str:
        configured = self.services.settings.advertised_address
        if configured:
            return configured
        host = self.services.host
        if host not in ("0.0.0.0", "::", ""):
            return host
        # Listening on every interface: the address of the one that routes to this SBC.
        family = socket.AF_INET6 if ":" in peer.address[0] else socket.AF_INET
        with contextlib.closing(socket.socket(family, socket.SOCK_DGRAM)) as probe:
            try:
                probe.connect((peer.address[0], peer.address[1] or 9))
                return str(probe.getsockname()[0])
            except OSError:
                return "127.0.0.1"

    def _reject(self, offer_id: str, refusal: _Refusal) -> None:
        assert self.uas is not None
        self.stats.sessions_rejected += 1
        self._dispatch(
            self.uas.reject(
                offer_id, refusal.status, refusal.reason, time.monotonic(), headers=refusal.headers
            )
        )

    # Changes (re-INVITE, UPDATE) ----------------------------------------------------------------

    def _changed(self, changed: RecordingChanged) -> None:
        recording = self._recordings.get(changed.session_id)
        if recording is None or recording.call is None:
            self._reject(
                changed.offer_id, _Refusal(500, "Server Internal Error: session not ready")
            )
            return
        if changed.offer.sdp is not None:
            refusal = self._refuse_new_streams(recording, changed.offer.sdp)
            if refusal is not None:
                self._reject(changed.offer_id, refusal)
                return
        self._spawn(self._change(recording, changed))

    def _refuse_new_streams(
        self, recording: _Recording, sdp: SessionDescription
    ) -> _Refusal | None:
        """A re-offer may add streams, up to the session's cap (or it could take every port
        one re-INVITE after another)."""
        new = [c for c in _recorded_channels(sdp) if c not in recording.streams]
        cap = self.services.settings.max_streams_per_session
        if len(recording.streams) + len(new) > cap:
            return _too_many_streams(len(recording.streams) + len(new), cap)
        if len(new) > self.ports.available:
            return _service_unavailable("no free RTP port")
        return None

    async def _change(self, recording: _Recording, changed: RecordingChanged) -> None:
        assert self.uas is not None and recording.call is not None
        offer: RecordingOffer = changed.offer
        if offer.metadata is not None:
            recording.metadata = (
                recording.metadata.merged_with(offer.metadata)
                if recording.metadata is not None
                else offer.metadata
            )
        answer: bytes | None = None
        try:
            if offer.sdp is not None:
                answers, channels = await self._open_streams(recording, offer.sdp)
                for channel in channels:
                    recording.call.add_channel(channel)
                recording.sdp = offer.sdp
                answer = self._answer(recording, offer.sdp, answers)
            if recording.sdp is not None:
                labels = [
                    _channel_name(section, index, recording.sdp)
                    for index, section in enumerate(recording.sdp.media)
                    if accepts(section)
                ]
                recording.call.assign_roles(
                    assign_roles(self.role_rules, labels, recording.metadata)
                )
        except RtpPortsExhausted:
            self._reject(changed.offer_id, _service_unavailable("no free RTP port"))
            return
        except Exception:
            log.exception("SIPREC call %s: re-offer failed", recording.key)
            self._reject(changed.offer_id, _Refusal(500, "Server Internal Error"))
            return
        self._dispatch(
            self.uas.accept(changed.offer_id, answer, time.monotonic(), contact=recording.contact)
        )
        directions = {label: s.direction for label, s in recording.streams.items()}
        log.info("SIPREC call %s changed: streams %s", recording.key, directions)

    # The end ----------------------------------------------------------------------------------

    def _ended(self, ended: RecordingEnded) -> None:
        recording = self._recordings.get(ended.session_id)
        if recording is None or recording.ended:
            return
        recording.ended = True
        self.stats.sessions_ended += 1
        log.info("SIPREC call %s ended: %s", recording.key, ended.reason)
        if recording.call is not None:
            self._spawn(self._finish(recording))
        # Otherwise the set-up in progress sees ``ended`` and finishes it.

    async def _finish(self, recording: _Recording) -> None:
        self._flush_media(recording)
        self._close_media(recording)
        for stream in recording.streams.values():
            counters = stream.receiver.stats.as_dict()
            for name, value in counters.items():
                setattr(self.stats.rtp, name, getattr(self.stats.rtp, name) + value)
            log.info("SIPREC call %s stream %s RTP: %s", recording.key, stream.label, counters)
        call = recording.call
        try:
            if call is not None:
                await call.complete()
                self.services.registry.remove(call)
        finally:
            self._recordings.pop(recording.session_id, None)
            recording.finished.set()

    def _flush_media(self, recording: _Recording) -> None:
        for stream in recording.streams.values():
            self._play(recording, stream, stream.receiver.drain())

    def _close_media(self, recording: _Recording) -> None:
        for stream in recording.streams.values():
            stream.close()
            self.ports.release(stream.port)

    # Timers -----------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        last_media_check = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                assert self.uas is not None
                self._dispatch(self.uas.tick(now))
                for recording in list(self._recordings.values()):
                    if recording.ended:
                        continue
                    for stream in recording.streams.values():
                        self._play(recording, stream, stream.receiver.release_stale(now))
                if now - last_media_check >= MEDIA_CHECK_S:
                    last_media_check = now
                    self._check_media(now)
                self._expire_connections(now)
            except Exception:
                log.exception("SIPREC timer failed")

    def _check_media(self, now: float) -> None:
        """End sessions whose SBC went away without a BYE: no RTP for media_timeout_s on any
        stream that should be sending (streams on hold are inactive and do not count)."""
        assert self.uas is not None
        timeout = self.services.settings.media_timeout_s
        for recording in list(self._recordings.values()):
            if recording.ended or recording.call is None:
                continue
            sending = [
                s for s in recording.streams.values() if s.direction in ("sendonly", "sendrecv")
            ]
            if not sending:
                continue
            last = max(
                [recording.started_at] + [s.receiver.last_packet_at or 0.0 for s in sending]
            )
            if now - last >= timeout:
                log.warning(
                    "SIPREC call %s: no RTP for %.0f s, ending it", recording.key, now - last
                )
                self._dispatch(self.uas.end_session(recording.session_id, "media timeout", now))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def snapshot(self) -> dict[str, Any]:
        """Counters for /healthz."""
        stats = self.stats
        return {
            "port": self.port,
            "liveSessions": self.live_sessions,
            "sessionsOffered": stats.sessions_offered,
            "sessionsAnswered": stats.sessions_answered,
            "sessionsRejected": stats.sessions_rejected,
            "sessionsEnded": stats.sessions_ended,
            "messagesDropped": stats.messages_dropped,
            "tcpConnections": stats.tcp_connections,
            "tcpConnectionsOpen": len(self._connections),
            "tcpConnectionsRefused": stats.tcp_connections_refused,
            "tcpConnectionsTimedOut": stats.tcp_connections_timed_out,
            "sip": self.uas.stats.as_dict() if self.uas else {},
            "rtp": self._rtp_totals(),
        }

    def _rtp_totals(self) -> dict[str, int]:
        totals = self.stats.rtp.as_dict()
        for recording in self._recordings.values():
            if recording.ended:
                continue  # counted when it finishes
            for stream in recording.streams.values():
                for name, value in stream.receiver.stats.as_dict().items():
                    totals[name] += value
        return totals

    # Connections ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport, host: str) -> int | None:
        """The new connection's id, or None when it is over a cap (and is being closed)."""
        settings = self.services.settings
        if len(self._connections) >= settings.max_tcp_connections:
            refused = f"{len(self._connections)} connections open, the most allowed"
        elif self._connections_by_host[host] >= settings.max_tcp_connections_per_source:
            refused = f"{self._connections_by_host[host]} connections from it, the most allowed"
        else:
            connection_id = next(self._connection_ids)
            self._connections[connection_id] = _TcpConnection(transport, host, time.monotonic())
            self._connections_by_host[host] += 1
            self.stats.tcp_connections += 1
            return connection_id
        self.stats.tcp_connections_refused += 1
        self._rate_limited.warning("refused", "SIP over TCP from %s refused: %s", host, refused)
        transport.close()
        return None

    def message_progress(self, connection_id: int, complete: bool, incomplete_bytes: int) -> None:
        """What a connection's bytes amounted to: ``complete`` messages (or pings) came, and
        ``incomplete_bytes`` of the next one wait for the rest."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return
        now = time.monotonic()
        if complete:
            connection.last_message_at = now
            connection.message_started_at = None
        if not incomplete_bytes:
            connection.message_started_at = None
        elif connection.message_started_at is None:
            connection.message_started_at = now

    def connection_lost(self, connection_id: int) -> None:
        """Forget the connection (at once when it is closed for a timeout, so it is neither
        counted again nor kept in the caps until the socket is gone)."""
        connection = self._connections.pop(connection_id, None)
        if connection is not None:
            self._connections_by_host[connection.host] -= 1
            if self._connections_by_host[connection.host] <= 0:
                del self._connections_by_host[connection.host]

    def _expire_connections(self, now: float) -> None:
        settings = self.services.settings
        # The recorder's own BYE (a media timeout) goes over the connection its session came
        # on: such a connection is kept however quiet the SBC is.
        in_use = {
            r.peer.connection
            for r in self._recordings.values()
            if not r.ended and r.peer.transport == "TCP"
        }
        for connection_id, connection in list(self._connections.items()):
            started = connection.message_started_at
            if started is not None and now - started >= settings.tcp_message_timeout_s:
                kind, why = "slow", f"a message not complete after {now - started:.1f} s"
            elif (
                connection_id not in in_use
                and now - connection.last_message_at >= settings.tcp_idle_timeout_s
            ):
                kind, why = "idle", f"no message for {now - connection.last_message_at:.1f} s"
            else:
                continue
            self.stats.tcp_connections_timed_out += 1
            host = connection.host
            self._rate_limited.warning(kind, "SIP over TCP from %s closed: %s", host, why)
            # Not close(): that would wait for responses a peer that does not read never takes.
            connection.transport.abort()
            self.connection_lost(connection_id)


def _recorded_channels(sdp: SessionDescription) -> list[str]:
    """The channels an offer's streams would be recorded as, each taking an RTP port."""
    return [
        _channel_name(section, index, sdp)
        for index, section in enumerate(sdp.media)
        if accepts(section)
    ]


def _too_many_streams(streams: int, cap: int) -> _Refusal:
    return _Refusal(
        488, f"Not Acceptable Here: {streams} media streams to record, at most {cap} a session"
    )


def _channel_name(section: MediaSection, index: int, sdp: SessionDescription) -> str:
    """The stream's SDP label; a stream without one (or with a label another stream also
    uses) is named by its position."""
    labels = [s.label for s in sdp.media]
    if section.label is not None and labels.count(section.label) == 1:
        return section.label
    return f"m{index + 1}"


def _where(peer: Peer) -> str:
    return f"{peer.transport} {peer.address[0]}:{peer.address[1]}"


class _SipUdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, gateway: SiprecGateway) -> None:
        self.gateway = gateway

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.gateway.sip_received(data, Peer("UDP", (addr[0], addr[1])))
        except Exception:
            log.exception("SIP over UDP from %s:%s failed", addr[0], addr[1])

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a response to an SBC that went away: nothing to do.
        log.debug("SIP UDP socket error: %s", exc)


class _SipTcpProtocol(asyncio.Protocol):
    def __init__(self, gateway: SiprecGateway) -> None:
        self.gateway = gateway
        self.framer = SipStreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        connection_id = self.gateway.connection_made(transport, host)
        if connection_id is not None:
            self.peer = Peer("TCP", (host, port), connection_id)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.peer is None or self.transport.is_closing():
            return  # refused or timed out: whatever was still in flight
        try:
            messages = self.framer.feed(data)
        except SipFramingError as exc:
            log.warning("SIP over TCP from %s closed: %s", _where(self.peer), exc)
            self.transport.close()
            return
        assert self.peer.connection is not None
        self.gateway.message_progress(
            self.peer.connection, bool(messages), self.framer.incomplete_bytes
        )
        for message in messages:
            if isinstance(message, KeepAlive):
                self.transport.write(b"\r\n")  # RFC 5626 pong
                continue
            try:
                self.gateway.sip_received(message, self.peer)
            except Exception:
                log.exception("SIP over TCP from %s failed", _where(self.peer))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.connection is not None:
            self.gateway.connection_lost(self.peer.connection)

