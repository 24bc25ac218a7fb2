"""The SIPREC recording server: SIP over UDP and TCP on one port, RTP on a port range, each
recording session a ``CallSession`` keyed by (tenant, "siprec", guid).

The decisions (admission, tenants, call identifiers, roles, SDP answers, when a session ends)
are the sans-IO :class:`~callscribe.siprec.recorder.SiprecRecorder`'s. This module wraps it
as :mod:`callscribe.twilio.gateway` wraps the Twilio protocol: it owns the sockets, the RTP
ports, the timers and the calls, feeds the recorder what arrives and does what it asks:

* SIP datagrams and messages framed off TCP connections go to the recorder, and what it
  sends goes back over the transport the request came on;
* :class:`~callscribe.siprec.recorder.OpenRecording` and ``OpenStreams`` open an even/odd
  port pair per stream (and the call), reported back when done; each port's RTP goes to the
  recorder, and the audio it decodes into the call;
* :class:`~callscribe.siprec.recorder.CloseRecording` closes the ports and completes the
  call. While that runs, start/stop answer 409-203.

A session that fails to set up is answered with an error and leaves the others untouched;
nothing one SBC sends can stop the listeners. SIPREC carries no credentials and anyone may
reach the ports, so what a peer can hold is bounded: the recorder caps RTP ports per session
and sessions per source address, and this server caps SIP-over-TCP connections in all and per
source, each closed when idle or when a message it started does not finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from callscribe.calls import Calls, CallSession
from callscribe.config import SiprecSettings
from callscribe.siprec.admission import refuse_while_closing
from callscribe.siprec.message import KeepAlive, SipFramingError, SipStreamFramer, safe_text
from callscribe.siprec.recorder import (
    Action,
    CloseRecording,
    CloseStreams,
    MediaTimedOut,
    OpenRecording,
    OpenStreams,
    RecorderPolicy,
    Recording,
    RecordingStarted,
    RecordingStopped,
    RecordingUpdated,
    SiprecConfigError,
    SiprecRecorder,
    StreamAudio,
    TenantMap,
    parse_tenant_map,
    store_tenant_map,
)
from callscribe.siprec.rtp import RtpStats
from callscribe.siprec.uas import MessageDropped, Peer, RequestRejected, Send
from callscribe.store.base import Store

__all__ = [
    "RtpPortAllocator",
    "RtpPortsExhausted",
    "SiprecConfigError",
    "SiprecGateway",
    "SiprecServices",
    "parse_port_range",
    "parse_tenant_map",
]

log = logging.getLogger(__name__)

TICK_S = 0.05
BIND_ATTEMPTS = 50
# RTP is not flow-controlled: while the event loop is busy (VAD runs in it) packets wait in
# the socket. 1 MiB holds several seconds of a stream (the kernel may cap it at rmem_max).
RTP_RECEIVE_BUFFER_BYTES = 1 << 20
# A flood of connections must not become a flood of log lines: one line per kind of event in
# this many seconds, which says how many more there were.
LOG_INTERVAL_S = 10.0


class RtpPortsExhausted(OSError):
    """Every port pair of the RTP range is taken, by our streams or by other programs."""


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
    calls: Calls
    settings: SiprecSettings
    store: Store  # the SBC source mapping (callscribe siprec-sources)
    host: str = "127.0.0.1"


def parse_port_range(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    first, last = int(low), int(high)
    if not (1024 <= first < last <= 65535):
        raise SiprecConfigError(f"RTP port range {spec!r}: need 1024 <= first < last <= 65535")
    return first, last


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


# The server -------------------------------------------------------------------------------


@dataclass
class _StreamPorts:
    port: int
    rtp: asyncio.DatagramTransport
    rtcp: asyncio.DatagramTransport


@dataclass
class _TcpConnection:
    transport: asyncio.Transport
    host: str
    last_message_at: float  # the last complete message or ping (or the connection's opening)
    message_started_at: float | None = None  # while a message is arriving


@dataclass
class SiprecStats:
    tcp_connections: int = 0
    tcp_connections_refused: int = 0
    tcp_connections_timed_out: int = 0


class SiprecGateway:
    def __init__(self, services: SiprecServices) -> None:
        self.services = services
        # Parsed now, so that a bad setting stops start-up rather than the first INVITE.
        self.policy = RecorderPolicy.from_settings(services.settings)
        self.ports = RtpPortAllocator(*parse_port_range(services.settings.rtp_ports))
        self.stats = SiprecStats()
        self.port = 0
        self.recorder: SiprecRecorder | None = None  # from start(), when the SIP port is known
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: dict[int, _TcpConnection] = {}
        self._connections_by_host: Counter[str] = Counter()
        self._connection_ids = itertools.count(1)
        self._rate_limited = _RateLimitedLog()
        self._calls: dict[str, CallSession] = {}  # session id -> its call, once opened
        self._media: dict[str, dict[str, _StreamPorts]] = {}  # session id -> label -> ports
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._sources_refresh: asyncio.Task[None] | None = None
        self._sources_refresh_due = 0.0

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Before listening, so the first INVITE is decided by it (a Store that cannot be read
        # stops start-up, as a bad setting does).
        store_sources = await asyncio.to_thread(self._read_store_sources)
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
        calls = self.services.calls
        self.recorder = SiprecRecorder(
            self.policy,
            local_port=self.port,
            rtp_port_pairs=self.ports.capacity,
            is_call_live=lambda key: calls.get(key) is not None,
        )
        self.recorder.set_store_sources(store_sources)
        log.info("SIPREC: %d SBC networks mapped to tenants in the Store", len(store_sources))
        self._sources_refresh_due = time.monotonic() + self.services.settings.sources_refresh_s
        self._ticker = loop.create_task(self._tick_forever())
        log.info("SIPREC recorder on %s:%d (UDP and TCP)", host, self.port)

    async def stop(self) -> None:
        """Stop listening; flush each session's buffered audio into its call. The calls are
        completed by the runtime's shutdown (no BYE is sent: the SBC sees the server go)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._sources_refresh is not None:
            self._sources_refresh.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self._connections.values()):
                connection.transport.close()
            await self._tcp.wait_closed()
        if self.recorder is not None:
            self._dispatch(self.recorder.drain())
        for session_id in list(self._media):
            self._close_ports(session_id, None)

    @property
    def live_sessions(self) -> int:
        return self.recorder.live_sessions if self.recorder else 0

    def why_no_new_calls(self) -> str | None:
        """Why this server takes no new recording now (not listening, draining, full)."""
        if self.recorder is None:
            return "the SIP listener is not open"
        return self.recorder.why_no_new_calls()

    def begin_draining(self) -> None:
        """New INVITEs get 503 (and OPTIONS pings too) from now on; live recordings go on."""
        if self.recorder is not None and not self.recorder.draining:
            self.recorder.draining = True
            log.info("SIPREC: draining, %d live recordings", self.live_sessions)

    def recording_of(self, guid: str) -> Recording | None:
        return self.recorder.recording_of(guid) if self.recorder else None

    # Input from the sockets ---------------------------------------------------------------------

    def sip_received(self, data: bytes, peer: Peer) -> None:
        assert self.recorder is not None
        self._dispatch(self.recorder.receive(data, peer, time.monotonic()))

    def _rtp_received(
        self, session_id: str, label: str, data: bytes, addr: tuple[str, int]
    ) -> None:
        assert self.recorder is not None
        self._dispatch(self.recorder.rtp_received(session_id, label, data, addr, time.monotonic()))

    def _rtcp_received(self, session_id: str, label: str, addr: tuple[str, int]) -> None:
        assert self.recorder is not None
        self.recorder.rtcp_received(session_id, label, addr)

    # What the recorder asks for ---------------------------------------------------------------

    def _dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                if isinstance(action, StreamAudio):
                    call = self._calls.get(action.session_id)
                    if call is not None:
                        call.audio(action.channel, action.pcm16, action.at_sample)
                elif isinstance(action, Send):
                    self._send(action)
                elif isinstance(action, OpenRecording):
                    self._spawn(self._open_recording(action))
                elif isinstance(action, OpenStreams):
                    self._spawn(self._open_streams(action))
                elif isinstance(action, CloseStreams):
                    self._close_ports(action.session_id, action.channels)
                elif isinstance(action, RecordingStarted):
                    self._started(action)
                elif isinstance(action, RecordingUpdated):
                    self._updated(action)
                elif isinstance(action, RecordingStopped):
                    log.info("SIPREC call %s ended: %s", action.key, action.reason)
                elif isinstance(action, MediaTimedOut):
                    log.warning(
                        "SIPREC call %s: no RTP for %.0f s, ending it", action.key, action.silent_s
                    )
                elif isinstance(action, CloseRecording):
                    self._close_recording(action)
                elif isinstance(action, RequestRejected):
                    log.log(
                        logging.WARNING if action.status >= 500 else logging.INFO,
                        "SIP %s from %s answered %d %s",
                        action.method,
                        _where(action.peer),
                        action.status,
                        safe_text(action.reason),
                    )
                elif isinstance(action, MessageDropped):
                    log.warning(
                        "SIP message from %s dropped: %s", _where(action.peer), action.reason
                    )
            except Exception:
                log.exception("SIPREC: handling %s failed", type(action).__name__)

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

    async def _open_recording(self, opening: OpenRecording) -> None:
        assert self.recorder is not None
        try:
            ports = await self._open_ports(opening.session_id, opening.channels)
            call = await self.services.calls.open(
                CallSession,
                opening.key,
                channels=list(opening.channels),
                channel_roles=opening.roles,
                admission=refuse_while_closing,
                register=False,  # at RecordingStarted
            )
            self._calls[opening.session_id] = call
            contact = (self._advertised_address(opening.peer), self.port)
            actions = self.recorder.recording_ready(
                opening.session_id, ports, contact, time.monotonic()
            )
        except Exception as exc:
            # A full range (other programs hold ports of it too) is a refusal, not a fault.
            exhausted = isinstance(exc, RtpPortsExhausted)
            if not exhausted:
                log.exception("SIPREC session for call %s could not be set up", opening.key)
            actions = self.recorder.set_up_failed(opening.session_id, exhausted, time.monotonic())
        self._dispatch(actions)

    def _started(self, started: RecordingStarted) -> None:
        # Registered before the 200 that follows goes out: the SBC's call is live from then.
        call = self._calls.get(started.session_id)
        if call is not None:
            self.services.calls.register(call)
        log.info(
            "SIPREC call %s (guid from %s) from %s recording streams %s",
            started.key,
            started.guid_source,
            _where(started.peer),
            ", ".join(started.streams),
        )

    async def _open_streams(self, opening: OpenStreams) -> None:
        assert self.recorder is not None
        try:
            ports = await self._open_ports(opening.session_id, opening.channels)
            actions = self.recorder.streams_opened(opening.session_id, ports, time.monotonic())
        except Exception as exc:
            exhausted = isinstance(exc, RtpPortsExhausted)
            if not exhausted:
                log.exception("SIPREC session %s: re-offer failed", opening.session_id)
            actions = self.recorder.streams_failed(opening.session_id, exhausted, time.monotonic())
        self._dispatch(actions)

    def _updated(self, updated: RecordingUpdated) -> None:
        call = self._calls.get(updated.session_id)
        if call is not None:
            for channel in updated.new_channels:
                call.add_channel(channel)
            call.assign_roles(updated.roles)
        log.info("SIPREC call %s changed: streams %s", updated.key, updated.directions)

    def _close_recording(self, closing: CloseRecording) -> None:
        """Ports now (they are free for the next session), the call's completion in a task."""
        self._close_ports(closing.session_id, None)
        for label, counters in closing.rtp.items():
            log.info("SIPREC call %s stream %s RTP: %s", closing.key, label, counters)
        self._spawn(self._complete(closing.session_id))

    async def _complete(self, session_id: str) -> None:
        call = self._calls.pop(session_id, None)
        try:
            if call is not None:
                await call.complete()
                self.services.calls.forget(call)
        finally:
            if self.recorder is not None:
                self.recorder.forget(session_id)

    # RTP ports ----------------------------------------------------------------------------------

    async def _open_ports(self, session_id: str, labels: tuple[str, ...]) -> dict[str, int]:
        """An even/odd port pair per stream. Each is recorded as the session's at once, so
        that closing the session closes it whatever the set-up is waiting for."""
        opened: dict[str, int] = {}
        for label in labels:

            def on_rtp(data: bytes, addr: tuple[str, int], label: str = label) -> None:
                self._rtp_received(session_id, label, data, addr)

            def on_rtcp(data: bytes, addr: tuple[str, int], label: str = label) -> None:
                self._rtcp_received(session_id, label, addr)

            port, rtp, rtcp = await self.ports.open(self.services.host, on_rtp, on_rtcp)
            self._media.setdefault(session_id, {})[label] = _StreamPorts(port, rtp, rtcp)
            opened[label] = port
        return opened

    def _close_ports(self, session_id: str, labels: tuple[str, ...] | None) -> None:
        """Close the session's ports of ``labels`` (None: all of them). Only ports this
        session still holds: a port released once may already be another session's."""
        media = self._media.get(session_id, {})
        for label in list(media) if labels is None else labels:
            stream = media.pop(label, None)
            if stream is not None:
                stream.rtp.close()
                stream.rtcp.close()
                self.ports.release(stream.port)
        if not media:
            self._media.pop(session_id, None)

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

    # Timers -----------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                assert self.recorder is not None
                self._dispatch(self.recorder.tick(now))
                self._expire_connections(now)
                self._refresh_store_sources_when_due(now)
            except Exception:
                log.exception("SIPREC timer failed")

    # The Store's SBC source mapping -----------------------------------------------------------

    def _read_store_sources(self) -> TenantMap:
        """In a worker thread: the Store may be DynamoDB, a network call away."""
        return store_tenant_map(self.services.store.siprec_sources())

    def _refresh_store_sources_when_due(self, now: float) -> None:
        # Its own task: a slow Store must not hold up the timers (SIP retransmissions, RTP).
        refreshing = self._sources_refresh
        if now < self._sources_refresh_due or (refreshing is not None and not refreshing.done()):
            return
        self._sources_refresh_due = now + self.services.settings.sources_refresh_s
        self._sources_refresh = asyncio.get_running_loop().create_task(
            self._refresh_store_sources()
        )

    async def _refresh_store_sources(self) -> None:
        try:
            store_sources = await asyncio.to_thread(self._read_store_sources)
        except Exception as exc:
            # Calls keep coming while the Store is away: the last mapping read still holds.
            log.warning(
                "SIPREC: could not refresh the SBC source mapping from the Store, keeping the "
                "last one read: %s: %s",
                type(exc).__name__,
                exc,
            )
            return
        recorder = self.recorder
        if recorder is not None and set(store_sources) != set(recorder.policy.store_tenant_map):
            recorder.set_store_sources(store_sources)
            log.info("SIPREC: %d SBC networks mapped to tenants in the Store", len(store_sources))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def snapshot(self) -> dict[str, Any]:
        """Counters for /healthz."""
        recorder = self.recorder
        decided = recorder.stats if recorder is not None else None
        return {
            "port": self.port,
            "liveSessions": self.live_sessions,
            "sessionsOffered": decided.sessions_offered if decided else 0,
            "sessionsAnswered": decided.sessions_answered if decided else 0,
            "sessionsRejected": decided.sessions_rejected if decided else 0,
            "sessionsEnded": decided.sessions_ended if decided else 0,
            "messagesDropped": decided.messages_dropped if decided else 0,
            "tcpConnections": self.stats.tcp_connections,
            "tcpConnectionsOpen": len(self._connections),
            "tcpConnectionsRefused": self.stats.tcp_connections_refused,
            "tcpConnectionsTimedOut": self.stats.tcp_connections_timed_out,
            "sip": recorder.uas.stats.as_dict() if recorder else {},
            "rtp": recorder.rtp_totals() if recorder else RtpStats().as_dict(),
        }

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
        in_use = self.recorder.tcp_connections_in_use() if self.recorder else set()
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
