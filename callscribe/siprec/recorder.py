"""The recording server's decisions, sans-IO: what to record, for whom, and when it ends.

:class:`SiprecRecorder` wraps the SIP UAS (:mod:`~callscribe.siprec.uas`) and one
:class:`~callscribe.siprec.rtp.RtpStreamReceiver` per recorded stream. SIP messages, RTP
packets and timer ticks go in, each with the time; what to send and what to do comes out. It
owns no socket, no task and no clock: the gateway (:mod:`~callscribe.siprec.gateway`) opens
the RTP ports and the calls it is asked for and reports back.

A recording session goes through these steps:

1. An INVITE offers it. It is admitted, or refused with a SIP error: 403 for an SBC mapped to
   no tenant, 400 without a call identifier, 488 for more streams than a session may record,
   486 for a call already being recorded, 503 with Retry-After when the server is draining
   or holds ``max_calls``, its source holds its share of sessions or the RTP ports are taken.
   Admitted, :class:`OpenRecording` asks for a port per recorded stream and the call.
2. The gateway reports :meth:`~SiprecRecorder.recording_ready` (ports, the address to
   advertise) or :meth:`~SiprecRecorder.set_up_failed`; the recorder answers 200 with the
   SDP answer (:class:`RecordingStarted` first, so the call is registered before the SBC
   hears of it), or 503/500.
3. re-INVITE and UPDATE change it (hold, codec, metadata, new streams): new streams take
   ports again (:class:`OpenStreams`, then :meth:`~SiprecRecorder.streams_opened` or
   :meth:`~SiprecRecorder.streams_failed`), within the same caps.
4. BYE, CANCEL, a session timer, a missing ACK or a media timeout (no RTP for
   ``media_timeout_s`` on a stream that should be sending) ends it: the audio still buffered
   comes out, then :class:`CloseRecording`; the gateway closes the ports, completes the call
   and calls :meth:`~SiprecRecorder.forget`.

Nothing a peer sends raises out of the recorder: a decision that fails is logged and the
offer is answered 500.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from callscribe.config import SiprecSettings
from callscribe.model import Namespace, Role
from callscribe.siprec.callid import CallIdSource, parse_sources, resolve_call_guid
from callscribe.siprec.metadata import RecordingMetadata
from callscribe.siprec.roles import RoleRules, assign_roles
from callscribe.siprec.rtp import (
    CallClock,
    DecodedAudio,
    RtpSourceFilter,
    RtpStats,
    RtpStreamReceiver,
)
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
    Peer,
    RecordingChanged,
    RecordingEnded,
    RecordingOffered,
    RecordingServerUas,
    RequestRejected,
    Send,
)
from callscribe.siprec.uas import (
    Output as UasOutput,
)
from callscribe.store.base import CallKey

log = logging.getLogger(__name__)

# Ports come free as calls end, minutes rather than seconds: an SBC told to come back sooner
# would only be refused again (and SBCs fail over to another recorder meanwhile).
RETRY_AFTER_S = 30
# A two-party call records two streams: fewer free ports than this and the server is full.
CALL_STREAMS = 2
# How often sessions are checked for a media timeout (a timeout is tens of seconds at least).
MEDIA_CHECK_S = 1.0

TenantMap = list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]


class SiprecConfigError(ValueError):
    pass


def parse_tenant_map(spec: str) -> TenantMap:
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
    return most_specific_first(mapping)


def store_tenant_map(sources: Mapping[str, str]) -> TenantMap:
    """The Store's SBC source mapping (network -> tenant, as ``Store.siprec_sources`` gives
    it) as the recorder consults it."""
    mapping = []
    for network, tenant in sources.items():
        try:
            mapping.append((ipaddress.ip_network(network, strict=False), tenant))
        except ValueError:
            raise SiprecConfigError(f"bad SBC network {network!r} in the Store") from None
    return most_specific_first(mapping)


def most_specific_first(mapping: TenantMap) -> TenantMap:
    """The order a map is searched in: the longest prefix that holds an address wins."""
    return sorted(mapping, key=lambda entry: -entry[0].prefixlen)


@dataclass(frozen=True)
class RecorderPolicy:
    """The settings the recorder decides by, parsed (a bad one fails at start-up, not on the
    first INVITE), and the SBC source mapping held in the Store (the gateway reads it at
    start and refreshes it while running)."""

    settings: SiprecSettings
    call_id_sources: tuple[CallIdSource, ...]
    role_rules: RoleRules
    tenant_map: TenantMap  # from the settings (CALLSCRIBE_SIPREC_TENANT_BY_SOURCE)
    store_tenant_map: TenantMap = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: SiprecSettings) -> RecorderPolicy:
        return cls(
            settings,
            parse_sources(settings.call_id_sources),
            RoleRules.from_settings(
                settings.agent_pattern,
                settings.customer_pattern,
                settings.label_roles,
                settings.first_stream_role,
            ),
            parse_tenant_map(settings.tenant_by_source),
        )

    def with_store_sources(self, mapping: TenantMap) -> RecorderPolicy:
        return dataclasses.replace(self, store_tenant_map=most_specific_first(mapping))

    def tenant_of(self, address: str) -> str | None:
        """The tenant of an SBC at ``address``: the Store's mapping first (what operators
        change while recorders run), then the settings' map, then the default tenant; None
        (refused) when that is empty. Within a map the most specific network wins."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None:
            for mapping in (self.store_tenant_map, self.tenant_map):
                for network, tenant in mapping:
                    if ip.version == network.version and ip in network:
                        return tenant
        return self.settings.tenant or None


@dataclass(frozen=True)
class Refusal:
    """A SIP error answer to an offer."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def service_unavailable(reason: str) -> Refusal:
    return Refusal(503, f"Service Unavailable: {reason}", (("Retry-After", str(RETRY_AFTER_S)),))


NO_FREE_PORT = service_unavailable("no free RTP port")
INTERNAL_ERROR = Refusal(500, "Server Internal Error")


def too_many_streams(streams: int, cap: int) -> Refusal:
    return Refusal(
        488, f"Not Acceptable Here: {streams} media streams to record, at most {cap} a session"
    )


# What the recorder asks of the gateway, and tells it -----------------------------------------


@dataclass(frozen=True)
class OpenRecording:
    """Open an RTP port for each of ``channels`` and the call, then report
    :meth:`SiprecRecorder.recording_ready` (or :meth:`SiprecRecorder.set_up_failed`)."""

    session_id: str
    key: CallKey
    channels: tuple[str, ...]
    roles: dict[str, Role]
    peer: Peer  # the SBC: the address advertised to it may depend on where it is


@dataclass(frozen=True)
class OpenStreams:
    """A re-offer added streams: open a port for each of ``channels``, then report
    :meth:`SiprecRecorder.streams_opened` (or :meth:`SiprecRecorder.streams_failed`)."""

    session_id: str
    channels: tuple[str, ...]


@dataclass(frozen=True)
class CloseStreams:
    """Ports opened for a re-offer that will not be used: close them."""

    session_id: str
    channels: tuple[str, ...]


@dataclass(frozen=True)
class RecordingStarted:
    """The session is answered: the call is live (comes before the 200 that says so)."""

    session_id: str
    key: CallKey
    guid_source: str
    peer: Peer
    streams: tuple[str, ...]  # "label=role:codec@port", for the log


@dataclass(frozen=True)
class RecordingUpdated:
    """A re-offer was taken: add ``new_channels`` to the call and give it ``roles``."""

    session_id: str
    key: CallKey
    new_channels: tuple[str, ...]
    roles: dict[str, Role]
    directions: dict[str, str]  # label -> SDP direction, for the log


@dataclass(frozen=True)
class StreamAudio:
    """Decoded audio of one stream, at ``at_sample`` on the call's timeline."""

    session_id: str
    channel: str
    pcm16: np.ndarray
    at_sample: int


@dataclass(frozen=True)
class RecordingStopped:
    """The session ended (``reason`` as the UAS or the media check tells it)."""

    session_id: str
    key: CallKey
    reason: str


@dataclass(frozen=True)
class MediaTimedOut:
    session_id: str
    key: CallKey
    silent_s: float


@dataclass(frozen=True)
class CloseRecording:
    """Nothing more comes for this session: close its ports, complete its call (if it was
    opened), then :meth:`SiprecRecorder.forget` it. Its last audio came just before."""

    session_id: str
    key: CallKey
    rtp: dict[str, dict[str, int]]  # label -> the stream's RTP counters, for the log


Action = (
    Send
    | OpenRecording
    | OpenStreams
    | CloseStreams
    | RecordingStarted
    | RecordingUpdated
    | StreamAudio
    | RecordingStopped
    | MediaTimedOut
    | CloseRecording
    | RequestRejected
    | MessageDropped
)


# Recording sessions ---------------------------------------------------------------------------


@dataclass
class MediaStream:
    """One recorded stream: where its RTP comes in, who may send it, how it decodes."""

    label: str
    port: int
    receiver: RtpStreamReceiver
    source: RtpSourceFilter
    payload_type: int
    codec: Codec
    direction: str = "sendonly"
    rtcp_packets: int = 0


@dataclass
class _PendingChange:
    offer_id: str
    sdp: SessionDescription | None
    channels: tuple[str, ...]  # the ports it waits for


@dataclass
class Recording:
    session_id: str
    key: CallKey
    peer: Peer
    offer_id: str
    offered_sdp: SessionDescription
    started_at: float
    guid_source: str = ""
    metadata: RecordingMetadata | None = None
    streams: dict[str, MediaStream] = field(default_factory=dict)
    sdp: SessionDescription | None = None
    clock: CallClock = field(default_factory=CallClock)
    answer_version: int = 0
    contact: tuple[str, int] = ("127.0.0.1", 0)
    ports_reserved: int = 0
    pending: _PendingChange | None = None
    # answered: 200 sent. set_up_over: the gateway reported the set-up (ready or failed), so
    # an end can close it. ended: the SIP session is over. closed: CloseRecording went out.
    answered: bool = False
    set_up_over: bool = False
    ended: bool = False
    closed: bool = False


@dataclass
class RecorderStats:
    sessions_offered: int = 0
    sessions_answered: int = 0
    sessions_rejected: int = 0
    sessions_ended: int = 0
    messages_dropped: int = 0
    # RTP counters of closed sessions (open ones are added in rtp_totals()).
    rtp: RtpStats = field(default_factory=RtpStats)


class SiprecRecorder:
    def __init__(
        self,
        policy: RecorderPolicy,
        *,
        local_port: int,
        rtp_port_pairs: int,
        is_call_live: Callable[[CallKey], bool] = lambda key: False,
        new_tag: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        """``rtp_port_pairs``: the RTP range's size, shared by every session's streams.
        ``is_call_live``: whether a call with that key is live elsewhere in this process."""
        self.policy = policy
        self.uas = RecordingServerUas(
            local_port=local_port, new_tag=new_tag, unavailable=self.why_no_new_calls
        )
        # Set when the server is stopping (or its task is being replaced): live recordings
        # carry on, new ones are refused with 503 so the SBC takes them elsewhere.
        self.draining = False
        self.rtp_port_pairs = rtp_port_pairs
        self.is_call_live = is_call_live
        self.stats = RecorderStats()
        self._recordings: dict[str, Recording] = {}
        self._ports_reserved = 0
        self._last_media_check: float | None = None

    @property
    def settings(self) -> SiprecSettings:
        return self.policy.settings

    @property
    def live_sessions(self) -> int:
        return sum(1 for r in self._recordings.values() if not r.ended)

    @property
    def ports_available(self) -> int:
        """Port pairs no session holds or is opening (other programs may still hold some)."""
        return self.rtp_port_pairs - self._ports_reserved

    def why_no_new_calls(self) -> str | None:
        """Why a new recording would be refused whoever offered it, or None: what OPTIONS
        pings and the load balancer's readiness check are told."""
        if self.draining:
            return "this recording server is draining"
        cap = self.settings.max_calls
        if cap and self.live_sessions >= cap:
            return f"{self.live_sessions} live recordings, the most this server takes"
        if self.ports_available < CALL_STREAMS:
            return "no free RTP port"
        return None

    def set_store_sources(self, mapping: TenantMap) -> None:
        """Replace the Store's SBC source mapping (sessions already admitted keep their
        tenant; the next INVITE is decided by the new one)."""
        self.policy = self.policy.with_store_sources(mapping)

    def recording(self, session_id: str) -> Recording | None:
        return self._recordings.get(session_id)

    def recording_of(self, guid: str) -> Recording | None:
        for recording in self._recordings.values():
            if recording.key.guid == guid:
                return recording
        return None

    def tcp_connections_in_use(self) -> set[int]:
        """Connections live sessions came on: our own BYE (a media timeout) goes over them."""
        return {
            r.peer.connection
            for r in self._recordings.values()
            if not r.ended and r.peer.transport == "TCP" and r.peer.connection is not None
        }

    def rtp_totals(self) -> dict[str, int]:
        totals = self.stats.rtp.as_dict()
        for recording in self._recordings.values():
            if recording.closed:
                continue  # counted when it closed
            for stream in recording.streams.values():
                for name, value in stream.receiver.stats.as_dict().items():
                    totals[name] += value
        return totals

    # Input: SIP and time ---------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        """A SIP message (a datagram, or one framed off a stream) from ``peer``."""
        return self._decide(self.uas.receive(data, peer, now), now)

    def tick(self, now: float) -> list[Action]:
        """Timers: SIP retransmissions and session timers, audio held behind a gap too long,
        and (once a second) sessions whose media stopped."""
        out = self._decide(self.uas.tick(now), now)
        for recording in list(self._recordings.values()):
            if recording.ended:
                continue
            for stream in recording.streams.values():
                out += _audio(recording, stream, stream.receiver.release_stale(now))
        if self._last_media_check is None:
            self._last_media_check = now
        elif now - self._last_media_check >= MEDIA_CHECK_S:
            self._last_media_check = now
            out += self._check_media(now)
        return out

    def end_session(self, session_id: str, reason: str, now: float) -> list[Action]:
        """End a session from our side: BYE to the SBC."""
        return self._decide(self.uas.end_session(session_id, reason, now), now)

    # Input: RTP ------------------------------------------------------------------------------

    def rtp_received(
        self, session_id: str, channel: str, data: bytes, source: tuple[str, int], now: float
    ) -> list[Action]:
        """A datagram on a stream's RTP port, from ``source``."""
        recording = self._recordings.get(session_id)
        if recording is None or recording.ended:
            return []
        stream = recording.streams.get(channel)
        if stream is None:
            return []
        if not stream.source.admits(source):
            stream.receiver.stats.wrong_source += 1
            return []
        return _audio(recording, stream, stream.receiver.receive(data, now))

    def rtcp_received(self, session_id: str, channel: str, source: tuple[str, int]) -> None:
        """A datagram on a stream's RTCP port: sender reports are not needed, only counted."""
        recording = self._recordings.get(session_id)
        stream = recording.streams.get(channel) if recording is not None else None
        if stream is None:
            return
        if not stream.source.admits_rtcp(source):
            stream.receiver.stats.wrong_source += 1
            return
        stream.rtcp_packets += 1

    # Input: what the gateway did --------------------------------------------------------------

    def recording_ready(
        self,
        session_id: str,
        ports: dict[str, int],
        contact: tuple[str, int],
        now: float,
    ) -> list[Action]:
        """The ports of :class:`OpenRecording` are open and the call too; ``contact`` is the
        address and SIP port to advertise to the SBC."""
        recording = self._recordings.get(session_id)
        if recording is None or recording.set_up_over:
            return []
        if recording.ended:
            # Cancelled (or the SBC hung up) while the call was being opened.
            recording.set_up_over = True
            return self._close(recording)
        recording.contact = contact
        answer = self._apply_offer(recording, recording.offered_sdp, ports)
        recording.set_up_over = True
        recording.answered = True
        roles = self._roles(recording)
        self.stats.sessions_answered += 1
        started = RecordingStarted(
            session_id,
            recording.key,
            recording.guid_source,
            recording.peer,
            tuple(
                f"{label}={roles.get(label, 'unassigned')}:{s.codec.name}@{s.port}"
                for label, s in recording.streams.items()
            ),
        )
        accepted = self.uas.accept(recording.offer_id, answer, now, contact=contact)
        return [started, *self._decide(accepted, now)]

    def set_up_failed(self, session_id: str, ports_exhausted: bool, now: float) -> list[Action]:
        """:class:`OpenRecording` could not be done. ``ports_exhausted``: every port of the
        range was taken (by other programs too), which is a 503, not a fault."""
        recording = self._recordings.get(session_id)
        if recording is None or recording.set_up_over:
            return []
        recording.set_up_over = True
        refusal = NO_FREE_PORT if ports_exhausted else INTERNAL_ERROR
        out = self._reject(recording.offer_id, refusal, now)
        if recording.ended and not recording.closed:
            out += self._close(recording)
        return out

    def streams_opened(self, session_id: str, ports: dict[str, int], now: float) -> list[Action]:
        """The ports of :class:`OpenStreams` are open."""
        recording = self._recordings.get(session_id)
        if recording is None or recording.pending is None or recording.ended:
            # The session ended meanwhile: its ports were closed, and these go too.
            return self._discard(session_id, tuple(ports))
        pending = recording.pending
        recording.pending = None
        return self._complete_change(recording, pending, ports, now)

    def streams_failed(self, session_id: str, ports_exhausted: bool, now: float) -> list[Action]:
        recording = self._recordings.get(session_id)
        if recording is None or recording.pending is None:
            return []
        pending = recording.pending
        recording.pending = None
        out = self._discard(session_id, pending.channels)
        refusal = NO_FREE_PORT if ports_exhausted else INTERNAL_ERROR
        return out + self._reject(pending.offer_id, refusal, now)

    def drain(self) -> list[Action]:
        """Everything still buffered in every session (the server is stopping)."""
        out: list[Action] = []
        for recording in self._recordings.values():
            for stream in recording.streams.values():
                out += _audio(recording, stream, stream.receiver.drain())
        return out

    def forget(self, session_id: str) -> None:
        """The gateway is done with a closed session (its call completed)."""
        recording = self._recordings.get(session_id)
        if recording is not None and recording.closed:
            del self._recordings[session_id]

    # What the UAS says ------------------------------------------------------------------------

    def _decide(self, outputs: list[UasOutput], now: float) -> list[Action]:
        out: list[Action] = []
        for output in outputs:
            try:
                if isinstance(output, RecordingOffered):
                    out += self._offered(output, now)
                elif isinstance(output, RecordingChanged):
                    out += self._changed(output, now)
                elif isinstance(output, RecordingEnded):
                    out += self._ended(output)
                else:
                    if isinstance(output, MessageDropped):
                        self.stats.messages_dropped += 1
                    out.append(output)
            except Exception:
                # One odd session must not take the others down: its offer gets a 500.
                log.exception("SIPREC: deciding on %s failed", type(output).__name__)
                if isinstance(output, (RecordingOffered, RecordingChanged)):
                    out += self._reject(output.offer_id, INTERNAL_ERROR, now)
        return out

    def _offered(self, offered: RecordingOffered, now: float) -> list[Action]:
        self.stats.sessions_offered += 1
        admitted = self._admit(offered, now)
        if isinstance(admitted, Refusal):
            return self._reject(offered.offer_id, admitted, now)
        recording = admitted
        channels = tuple(recorded_channels(recording.offered_sdp))
        self._recordings[recording.session_id] = recording
        self._reserve(recording, len(channels))
        roles = assign_roles(self.policy.role_rules, list(channels), recording.metadata)
        return [OpenRecording(recording.session_id, recording.key, channels, roles, offered.peer)]

    def _admit(self, offered: RecordingOffered, now: float) -> Recording | Refusal:
        """The new recording, or how to refuse it."""
        settings = self.settings
        if self.draining or (settings.max_calls and self.live_sessions >= settings.max_calls):
            why = self.why_no_new_calls()
            assert why is not None
            return service_unavailable(why)
        source_host = offered.peer.address[0]
        tenant = self.policy.tenant_of(source_host)
        if tenant is None:
            return Refusal(403, "Forbidden: this SBC is not mapped to a tenant")
        request = offered.request
        headers = {name.lower(): request.headers[name] for name in request.headers.keys()}
        sources = self.policy.call_id_sources
        resolved = resolve_call_guid(sources, headers, offered.offer.metadata)
        if resolved is None:
            looked_at = ", ".join(str(s) for s in sources)
            return Refusal(400, f"no call identifier found (looked at {looked_at})")
        guid, source = resolved
        sdp = offered.offer.sdp
        assert sdp is not None  # the UAS refuses an INVITE without an SDP offer
        streams = len(recorded_channels(sdp))
        if streams > settings.max_streams_per_session:
            return too_many_streams(streams, settings.max_streams_per_session)
        key = CallKey(tenant, Namespace.SIPREC.value, guid)
        live = self.is_call_live(key) or any(
            r.key == key and not r.ended for r in self._recordings.values()
        )
        if live:
            return Refusal(486, f"Busy Here: call {guid} is already being recorded")
        from_source = sum(
            1 for r in self._recordings.values() if not r.ended and r.peer.address[0] == source_host
        )
        if from_source >= settings.max_sessions_per_source:
            return service_unavailable(
                f"{from_source} sessions from {source_host}, the most one source may hold"
            )
        if streams > self.ports_available:
            return NO_FREE_PORT
        return Recording(
            offered.session_id,
            key,
            offered.peer,
            offered.offer_id,
            sdp,
            started_at=now,
            guid_source=str(source),
            metadata=offered.offer.metadata,
        )

    def _changed(self, changed: RecordingChanged, now: float) -> list[Action]:
        recording = self._recordings.get(changed.session_id)
        if recording is None or not recording.answered or recording.ended:
            return self._reject(
                changed.offer_id, Refusal(500, "Server Internal Error: session not ready"), now
            )
        offer = changed.offer
        new: tuple[str, ...] = ()
        if offer.sdp is not None:
            new = tuple(c for c in recorded_channels(offer.sdp) if c not in recording.streams)
            # A re-offer may add streams, up to the session's cap (or it could take every
            # port one re-INVITE after another).
            cap = self.settings.max_streams_per_session
            if len(recording.streams) + len(new) > cap:
                return self._reject(
                    changed.offer_id, too_many_streams(len(recording.streams) + len(new), cap), now
                )
            if len(new) > self.ports_available:
                return self._reject(changed.offer_id, NO_FREE_PORT, now)
        if offer.metadata is not None:
            recording.metadata = (
                recording.metadata.merged_with(offer.metadata)
                if recording.metadata is not None
                else offer.metadata
            )
        pending = _PendingChange(changed.offer_id, offer.sdp, new)
        if not new:
            return self._complete_change(recording, pending, {}, now)
        self._reserve(recording, len(new))
        recording.pending = pending
        return [OpenStreams(recording.session_id, new)]

    def _complete_change(
        self, recording: Recording, pending: _PendingChange, ports: dict[str, int], now: float
    ) -> list[Action]:
        answer: bytes | None = None
        if pending.sdp is not None:
            answer = self._apply_offer(recording, pending.sdp, ports)
        roles = self._roles(recording)
        updated = RecordingUpdated(
            recording.session_id,
            recording.key,
            pending.channels,
            roles,
            {label: s.direction for label, s in recording.streams.items()},
        )
        accepted = self.uas.accept(pending.offer_id, answer, now, contact=recording.contact)
        return [updated, *self._decide(accepted, now)]

    def _ended(self, ended: RecordingEnded) -> list[Action]:
        recording = self._recordings.get(ended.session_id)
        if recording is None or recording.ended:
            return []
        recording.ended = True
        self.stats.sessions_ended += 1
        out: list[Action] = [RecordingStopped(recording.session_id, recording.key, ended.reason)]
        if recording.set_up_over:
            out += self._close(recording)
        # Otherwise the set-up in progress reports, and is closed then.
        return out

    def _check_media(self, now: float) -> list[Action]:
        """End sessions whose SBC went away without a BYE: no RTP for media_timeout_s on any
        stream that should be sending (streams on hold are inactive and do not count)."""
        timeout = self.settings.media_timeout_s
        out: list[Action] = []
        for recording in list(self._recordings.values()):
            if recording.ended or not recording.answered:
                continue
            sending = [
                s for s in recording.streams.values() if s.direction in ("sendonly", "sendrecv")
            ]
            if not sending:
                continue
            last = max([recording.started_at] + [s.receiver.last_packet_at or 0.0 for s in sending])
            if now - last >= timeout:
                out.append(MediaTimedOut(recording.session_id, recording.key, now - last))
                out += self.end_session(recording.session_id, "media timeout", now)
        return out

    # The parts ----------------------------------------------------------------------------

    def _apply_offer(
        self, recording: Recording, sdp: SessionDescription, ports: dict[str, int]
    ) -> bytes:
        """Take an offer's streams (new ones on ``ports``); the SDP answer."""
        answers: list[StreamAnswer] = []
        for index, section in enumerate(sdp.media):
            label = channel_name(section, index, sdp)
            if not accepts(section):
                answers.append(StreamAnswer(0))
                continue
            choice = section.choose_codec()
            assert choice is not None
            payload_type, codec = choice
            expected, match_port = self._offered_source(sdp, section)
            stream = recording.streams.get(label)
            if stream is None:
                receiver = RtpStreamReceiver(
                    {payload_type: codec}, recording.clock, depth=self.settings.jitter_packets
                )
                source = RtpSourceFilter(expected, match_port=match_port)
                stream = MediaStream(label, ports[label], receiver, source, payload_type, codec)
                recording.streams[label] = stream
            else:
                stream.payload_type, stream.codec = payload_type, codec
                stream.receiver.set_payload_types({payload_type: codec})
                stream.source.expect(expected, match_port=match_port)
            stream.direction = offered_direction(sdp, section)
            answers.append(StreamAnswer(stream.port, payload_type, codec))
        recording.sdp = sdp
        recording.answer_version += 1
        return build_answer(
            sdp,
            answers,
            address=recording.contact[0],
            session_id=str(int(recording.session_id[:10], 16)),
            version=recording.answer_version,
        )

    def _offered_source(
        self, sdp: SessionDescription, section: MediaSection
    ) -> tuple[tuple[str, int] | None, bool]:
        """Where the stream's RTP may come from (None: latch onto the first source), and
        whether its port must match too."""
        mode = self.settings.rtp_source
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

    def _roles(self, recording: Recording) -> dict[str, Role]:
        labels = recorded_channels(recording.sdp) if recording.sdp is not None else []
        return assign_roles(self.policy.role_rules, labels, recording.metadata)

    def _reject(self, offer_id: str, refusal: Refusal, now: float) -> list[Action]:
        self.stats.sessions_rejected += 1
        rejected = self.uas.reject(
            offer_id, refusal.status, refusal.reason, now, headers=refusal.headers
        )
        return self._decide(rejected, now)

    def _reserve(self, recording: Recording, ports: int) -> None:
        recording.ports_reserved += ports
        self._ports_reserved += ports

    def _release(self, recording: Recording | None, ports: int) -> None:
        if recording is None:
            return
        ports = min(ports, recording.ports_reserved)
        recording.ports_reserved -= ports
        self._ports_reserved -= ports

    def _discard(self, session_id: str, channels: tuple[str, ...]) -> list[Action]:
        self._release(self._recordings.get(session_id), len(channels))
        return [CloseStreams(session_id, channels)] if channels else []

    def _close(self, recording: Recording) -> list[Action]:
        """The session's last audio, its RTP counters into the totals, its ports freed."""
        out: list[Action] = []
        counters: dict[str, dict[str, int]] = {}
        for stream in recording.streams.values():
            out += _audio(recording, stream, stream.receiver.drain())
            counters[stream.label] = stream.receiver.stats.as_dict()
            for name, value in counters[stream.label].items():
                setattr(self.stats.rtp, name, getattr(self.stats.rtp, name) + value)
        recording.closed = True
        recording.pending = None
        self._release(recording, recording.ports_reserved)
        out.append(CloseRecording(recording.session_id, recording.key, counters))
        return out


def recorded_channels(sdp: SessionDescription) -> list[str]:
    """The channels an offer's streams would be recorded as, each taking an RTP port."""
    return [
        channel_name(section, index, sdp)
        for index, section in enumerate(sdp.media)
        if accepts(section)
    ]


def channel_name(section: MediaSection, index: int, sdp: SessionDescription) -> str:
    """The stream's SDP label; a stream without one (or with a label another stream also
    uses) is named by its position."""
    labels = [s.label for s in sdp.media]
    if section.label is not None and labels.count(section.label) == 1:
        return section.label
    return f"m{index + 1}"


def _audio(recording: Recording, stream: MediaStream, decoded: list[DecodedAudio]) -> list[Action]:
    return [
        StreamAudio(recording.session_id, stream.label, chunk.pcm16, chunk.at_sample)
        for chunk in decoded
    ]
