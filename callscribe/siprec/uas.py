"""The SIP user-agent server of the recording server (RFC 3261 UAS core and server transactions,
RFC 7866 as the SRS). Sans-IO: :meth:`RecordingServerUas.receive` takes a message's bytes, where
they came from and the time, and returns what to send and what happened; the server that wraps
it owns the sockets and calls :meth:`~RecordingServerUas.tick` a few times a second for timers.

What it does with each request:

* ``INVITE`` (new): the body is checked (multipart SDP + metadata, see :mod:`offer`), then
  ``100 Trying`` goes out and :class:`RecordingOffered` asks the server to set the recording up;
  it answers with :meth:`~RecordingServerUas.accept` (``200 OK`` with the SDP answer) or
  :meth:`~RecordingServerUas.reject`. Over UDP the 200 is retransmitted (T1 doubling to T2)
  until the ACK comes; without an ACK after 64·T1 the session is ended with a BYE (§13.3.1.4).
* ``ACK``: confirms the session, or absorbs the ACK of a failure response.
* ``CANCEL``: for an INVITE not answered yet, ``200`` to the CANCEL, ``487`` to the INVITE,
  :class:`RecordingEnded`; otherwise ``200`` with no effect, or ``481`` for an unknown INVITE.
* ``BYE``: ``200`` at once, then :class:`RecordingEnded` (the server finishes the call).
* re-``INVITE`` and ``UPDATE`` in the session: hold and resume, a changed codec, new streams,
  new metadata: :class:`RecordingChanged`, answered the same way. An UPDATE without a body is
  a session refresh and gets ``200`` at once.
* ``OPTIONS``: ``200`` with Allow/Accept/Supported (SBCs ping their recorders with it); ``503``
  with Retry-After outside a dialog while the server takes no new recordings.
* Methods a recorder does not take (``INFO``, ``REFER``, ``MESSAGE``…): ``405`` with Allow;
  methods it does not know: ``501``.
* Malformed requests: ``400`` with the reason as the reason phrase when the request carries
  enough to route a response, else :class:`MessageDropped` (the server logs it). Nothing a
  peer sends raises out of :meth:`~RecordingServerUas.receive`.

Retransmitted requests get the last response again (server transactions, §17.2). Session
timers (RFC 4028) are honoured with the SBC as the refresher.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sipmessage import URI, Request, Response

from callscribe.siprec.message import (
    SipParseError,
    build_response,
    parse_message,
    response_destination,
    safe_text,
    tag_of,
    top_via_sent_by,
    transaction_branch,
)
from callscribe.siprec.offer import ACCEPTED_TYPES, OfferError, RecordingOffer, parse_body
from callscribe.siprec.sdp import accepts

T1 = 0.5
T2 = 4.0
T4 = 5.0
# What a 503 answer to an OPTIONS ping asks the SBC to wait before it pings again.
OPTIONS_RETRY_AFTER_S = 30
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE")
# Methods a recorder understands but does not take: 405 rather than 501.
REFUSED_METHODS = (
    "REGISTER",
    "INFO",
    "MESSAGE",
    "REFER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "PRACK",
)
# Extensions a request may Require. "100rel" is satisfied trivially: the only provisional
# response ever sent is 100 Trying, which is never sent reliably.
SUPPORTED_EXTENSIONS = ("siprec", "timer", "100rel")
MIN_SESSION_EXPIRES = 90
SERVER_NAME = "CallScribe SIPREC recorder"


@dataclass(frozen=True)
class Peer:
    """Where a message came from and where its answers go."""

    transport: str  # "UDP" or "TCP"
    address: tuple[str, int]
    connection: int | None = None  # the server's id of a TCP connection


@dataclass(frozen=True)
class Send:
    data: bytes
    peer: Peer  # UDP: the destination address; TCP: the connection


@dataclass(frozen=True)
class RecordingOffered:
    """A new recording session wants an answer (accept or reject)."""

    offer_id: str
    session_id: str
    request: Request
    offer: RecordingOffer
    peer: Peer


@dataclass(frozen=True)
class RecordingChanged:
    """A re-INVITE or UPDATE: a new SDP offer and/or metadata for a live session."""

    offer_id: str
    session_id: str
    request: Request
    offer: RecordingOffer


@dataclass(frozen=True)
class RecordingEnded:
    session_id: str
    reason: str  # "BYE", "CANCEL", "no ACK", "session expired", "rejected", "ended by us"


@dataclass(frozen=True)
class MessageDropped:
    reason: str
    peer: Peer


@dataclass(frozen=True)
class RequestRejected:
    """A request answered with an error (for the server's log and counters)."""

    status: int
    reason: str
    method: str
    peer: Peer


Output = (
    Send | RecordingOffered | RecordingChanged | RecordingEnded | MessageDropped | RequestRejected
)


@dataclass
class _Transaction:
    key: tuple[str, str, str]
    request: Request
    peer: Peer
    session_id: str | None = None
    last_response: bytes | None = None
    final_status: int | None = None
    retransmit_at: float | None = None
    interval: float = T1
    gives_up_at: float | None = None
    forget_at: float | None = None


@dataclass
class _Session:
    session_id: str
    call_id: str
    local_tag: str
    remote_tag: str | None
    remote_from: str  # their From header, the To of our requests
    local_to: str  # their To header with our tag, the From of our requests
    remote_target: str
    route_set: list[str]
    peer: Peer
    invite_key: tuple[str, str, str]
    invite_cseq: int
    remote_cseq: int
    state: str = "offered"  # offered -> answered (2xx sent) -> confirmed (ACKed) -> ended
    local_cseq: int = 0
    contact: tuple[str, int] | None = None
    session_expires: int | None = None
    expires_at: float | None = None
    pending_offer: str | None = None
    timer_supported: bool = False
    answer_sdp: bytes | None = None


@dataclass
class UasStats:
    requests: int = 0
    responses_sent: int = 0
    malformed: int = 0
    dropped: int = 0
    retransmissions: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RecordingServerUas:
    def __init__(
        self,
        *,
        local_port: int,
        new_tag: Callable[[], str] = lambda: secrets.token_hex(8),
        unavailable: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``unavailable``: why this server takes no new recording now (draining, full), or
        None; an out-of-dialog OPTIONS ping then gets 503, so the SBC tries another."""
        self.local_port = local_port
        self._new_tag = new_tag
        self._unavailable = unavailable
        self._transactions: dict[tuple[str, str, str], _Transaction] = {}
        self._sessions: dict[str, _Session] = {}
        self._by_dialog: dict[tuple[str, str], str] = {}  # (Call-ID, our tag) -> session id
        self.stats = UasStats()

    # Inputs ----------------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Output]:
        try:
            message = parse_message(data, datagram=peer.transport == "UDP")
        except SipParseError as exc:
            self.stats.malformed += 1
            if exc.request is not None and exc.request.method != "ACK":
                return self._reply_once(exc.request, peer, 400, exc.reason)
            self.stats.dropped += 1
            return [MessageDropped(exc.reason, peer)]
        if isinstance(message, Response):
            return []  # responses to our BYEs: nothing to do with them
        self.stats.requests += 1
        try:
            return self._request(message, peer, now)
        except (ValueError, KeyError) as exc:
            # The parser checked the headers the UAS relies on; this is a last guard so that
            # one odd request can never take the server down.
            return self._reply_once(message, peer, 400, f"bad request: {safe_text(str(exc), 60)}")

    def accept(
        self,
        offer_id: str,
        answer_sdp: bytes | None,
        now: float,
        *,
        contact: tuple[str, int],
    ) -> list[Output]:
        """Answer a :class:`RecordingOffered` or :class:`RecordingChanged` with 200 OK."""
        transaction = self._transactions.get(_key_from_id(offer_id))
        if transaction is None or transaction.final_status is not None:
            return []  # cancelled, or the session ended, while it was being set up
        session = self._sessions.get(transaction.session_id or "")
        if session is None or session.state == "ended":
            return []
        session.pending_offer = None
        session.contact = contact
        if answer_sdp is not None:
            session.answer_sdp = answer_sdp
        elif transaction.request.method == "INVITE" and session.answer_sdp is not None:
            # A re-INVITE with metadata only still needs SDP in its 200 (§14.2): the same.
            answer_sdp = session.answer_sdp
        headers = [
            ("Contact", f"<sip:srs@{_host(contact[0])}:{contact[1]}>;+sip.srs"),
            ("Allow", ", ".join(ALLOWED_METHODS)),
            ("Supported", ", ".join(SUPPORTED_EXTENSIONS)),
            ("Server", SERVER_NAME),
        ]
        if session.session_expires is not None:
            headers.append(("Session-Expires", f"{session.session_expires};refresher=uac"))
            headers.append(("Require", "timer"))
            session.expires_at = now + session.session_expires
        data = build_response(
            transaction.request,
            200,
            "OK",
            source=transaction.peer.address,
            to_tag=session.local_tag,
            headers=tuple(headers),
            body=answer_sdp or b"",
            content_type="application/sdp" if answer_sdp else None,
        )
        out = self._final(transaction, 200, data, now)
        if transaction.request.method == "INVITE":
            session.state = "answered" if session.state == "offered" else "reinvited"
            session.invite_cseq = transaction.request.cseq.sequence
            # The 2xx is retransmitted by the UAS core until the ACK (RFC 6026); only over UDP,
            # where it can be lost.
            transaction.gives_up_at = now + 64 * T1
            if transaction.peer.transport == "UDP":
                transaction.retransmit_at = now + T1
                transaction.interval = T1
        return out

    def reject(
        self,
        offer_id: str,
        status: int,
        reason: str,
        now: float,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> list[Output]:
        transaction = self._transactions.get(_key_from_id(offer_id))
        if transaction is None or transaction.final_status is not None:
            return []
        session = self._sessions.get(transaction.session_id or "")
        out: list[Output] = []
        to_tag = session.local_tag if session is not None else self._new_tag()
        data = build_response(
            transaction.request,
            status,
            reason,
            source=transaction.peer.address,
            to_tag=to_tag,
            headers=(("Warning", f'399 callscribe "{safe_text(reason, 80)}"'), *headers),
        )
        out += self._final(transaction, status, data, now)
        out.append(RequestRejected(status, reason, transaction.request.method, transaction.peer))
        if session is not None:
            if transaction.request.method == "INVITE" and session.state == "offered":
                self._end(session)
                out.append(RecordingEnded(session.session_id, "rejected"))
            else:
                session.pending_offer = None  # a refused re-INVITE/UPDATE keeps the session
        return out

    def end_session(self, session_id: str, reason: str, now: float) -> list[Output]:
        """End a session from our side (media timeout): BYE to the SBC."""
        session = self._sessions.get(session_id)
        if session is None or session.state == "ended":
            return []
        out: list[Output] = [*self._bye(session)]
        self._end(session)
        out.append(RecordingEnded(session_id, reason))
        return out

    def tick(self, now: float) -> list[Output]:
        """Timers: 2xx/failure retransmissions, ACK give-up, transaction expiry, session timers."""
        out: list[Output] = []
        for key, transaction in list(self._transactions.items()):
            if transaction.forget_at is not None and now >= transaction.forget_at:
                del self._transactions[key]
                continue
            if transaction.gives_up_at is not None and now >= transaction.gives_up_at:
                transaction.retransmit_at = None
                transaction.gives_up_at = None
                transaction.forget_at = now
                session = self._sessions.get(transaction.session_id or "")
                if (
                    transaction.final_status == 200
                    and session is not None
                    and session.state in ("answered", "reinvited")
                ):
                    out += self.end_session(session.session_id, "no ACK", now)
                continue
            if transaction.retransmit_at is not None and now >= transaction.retransmit_at:
                assert transaction.last_response is not None
                out.append(self._send(transaction, transaction.last_response))
                self.stats.retransmissions += 1
                transaction.interval = min(transaction.interval * 2, T2)
                transaction.retransmit_at = now + transaction.interval
        for session in list(self._sessions.values()):
            if session.expires_at is not None and now >= session.expires_at:
                out += self.end_session(session.session_id, "session expired", now)
        return out

    @property
    def live_sessions(self) -> int:
        return sum(1 for s in self._sessions.values() if s.state != "ended")

    # Requests --------------------------------------------------------------------------------

    def _request(self, request: Request, peer: Peer, now: float) -> list[Output]:
        method = request.method
        branch = transaction_branch(request)
        sent_by = top_via_sent_by(request)
        if method == "ACK":
            return self._ack(request, (branch, sent_by, "INVITE"), now)
        key = (branch, sent_by, method)
        known = self._transactions.get(key)
        if known is not None:
            # A retransmission: the last response again (or nothing while it is being set up).
            if known.last_response is not None:
                self.stats.retransmissions += 1
                return [self._send(known, known.last_response)]
            return []
        transaction = _Transaction(key, request, peer)
        self._transactions[key] = transaction
        if method == "CANCEL":
            return self._cancel(transaction, now)
        if method == "INVITE":
            if tag_of(request.to_address) is None:
                return self._invite(transaction, now)
            return self._reinvite(transaction, now)
        if method == "UPDATE":
            return self._update(transaction, now)
        if method == "BYE":
            return self._bye_received(transaction, now)
        if method == "OPTIONS":
            unavailable = self._unavailable() if tag_of(request.to_address) is None else None
            if unavailable is not None:
                # An SBC pings its recording servers to choose one for its next calls; a ping
                # inside a dialog only asks whether the dialog lives, and it does.
                return self._respond(
                    transaction,
                    503,
                    f"Service Unavailable: {unavailable}",
                    now,
                    headers=(("Retry-After", str(OPTIONS_RETRY_AFTER_S)),),
                )
            return self._respond(
                transaction,
                200,
                "OK",
                now,
                headers=(
                    ("Allow", ", ".join(ALLOWED_METHODS)),
                    ("Accept", ACCEPTED_TYPES),
                    ("Supported", ", ".join(SUPPORTED_EXTENSIONS)),
                    ("Server", SERVER_NAME),
                ),
            )
        allow = (("Allow", ", ".join(ALLOWED_METHODS)),)
        if method in REFUSED_METHODS:
            return self._respond(transaction, 405, "Method Not Allowed", now, headers=allow)
        return self._respond(transaction, 501, "Not Implemented", now, headers=allow)

    def _invite(self, transaction: _Transaction, now: float) -> list[Output]:
        request = transaction.request
        problem = self._invite_problem(request)
        if problem is not None:
            status, reason, headers = problem
            return self._respond(transaction, status, reason, now, headers=headers)
        try:
            offer = parse_body(request.headers.get("Content-Type"), request.body)
        except OfferError as exc:
            headers = (("Accept", ACCEPTED_TYPES),) if exc.status == 415 else ()
            return self._respond(transaction, exc.status, exc.reason, now, headers=headers)
        if offer.sdp is None:
            return self._respond(
                transaction, 488, "Not Acceptable Here: an SDP offer is required", now
            )
        if not any(accepts(section) for section in offer.sdp.media):
            return self._respond(
                transaction,
                488,
                "Not Acceptable Here: no RTP/AVP audio stream in PCMU, PCMA or G729",
                now,
            )
        try:
            contacts = request.contact
            route_set = [str(a) for a in request.record_route]
        except ValueError:
            return self._respond(transaction, 400, "malformed Contact or Record-Route header", now)
        session = _Session(
            session_id=secrets.token_hex(12),
            call_id=request.call_id,
            local_tag=self._new_tag(),
            remote_tag=tag_of(request.from_address),
            remote_from=request.headers["From"],
            local_to="",
            remote_target=str(contacts[0].uri) if contacts else str(request.uri),
            route_set=route_set,
            peer=transaction.peer,
            invite_key=transaction.key,
            invite_cseq=request.cseq.sequence,
            remote_cseq=request.cseq.sequence,
            timer_supported="timer" in request.supported or "timer" in request.require,
        )
        session.local_to = f"{request.headers['To']};tag={session.local_tag}"
        session.session_expires = self._session_expires(request, session.timer_supported)
        session.pending_offer = _id_from_key(transaction.key)
        transaction.session_id = session.session_id
        self._sessions[session.session_id] = session
        self._by_dialog[(session.call_id, session.local_tag)] = session.session_id
        trying = build_response(request, 100, "Trying", source=transaction.peer.address)
        transaction.last_response = trying
        return [
            self._send(transaction, trying),
            RecordingOffered(
                _id_from_key(transaction.key), session.session_id, request, offer, transaction.peer
            ),
        ]

    def _invite_problem(
        self, request: Request
    ) -> tuple[int, str, tuple[tuple[str, str], ...]] | None:
        unsupported = [tag for tag in request.require if tag not in SUPPORTED_EXTENSIONS]
        if unsupported:
            return 420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),)
        expires = request.headers.get("Session-Expires")
        if expires is not None:
            match = re.match(r"^\s*(\d{1,9})", expires)
            if match is None:
                return 400, "malformed Session-Expires header", ()
            if int(match.group(1)) < MIN_SESSION_EXPIRES:
                return (
                    422,
                    "Session Interval Too Small",
                    (("Min-SE", str(MIN_SESSION_EXPIRES)),),
                )
        return None

    @staticmethod
    def _session_expires(request: Request, timer_supported: bool) -> int | None:
        value = request.headers.get("Session-Expires")
        if value is None or not timer_supported:
            return None
        match = re.match(r"^\s*(\d{1,9})", value)
        return int(match.group(1)) if match else None

    def _session_for(self, request: Request) -> _Session | None:
        local_tag = tag_of(request.to_address)
        if local_tag is None:
            return None
        session_id = self._by_dialog.get((request.call_id, local_tag))
        session = self._sessions.get(session_id or "")
        if session is None or session.state == "ended":
            return None
        if session.remote_tag is not None and tag_of(request.from_address) != session.remote_tag:
            return None
        return session

    def _in_order(self, transaction: _Transaction, session: _Session, now: float) -> list[Output]:
        sequence = transaction.request.cseq.sequence
        if sequence <= session.remote_cseq:
            return self._respond(transaction, 500, "CSeq out of order", now)
        session.remote_cseq = sequence
        return []

    def _reinvite(self, transaction: _Transaction, now: float) -> list[Output]:
        return self._change(transaction, now, reinvite=True)

    def _update(self, transaction: _Transaction, now: float) -> list[Output]:
        return self._change(transaction, now, reinvite=False)

    def _change(self, transaction: _Transaction, now: float, *, reinvite: bool) -> list[Output]:
        request = transaction.request
        session = self._session_for(request)
        if session is None:
            return self._respond(transaction, 481, "Call/Transaction Does Not Exist", now)
        refused = self._in_order(transaction, session, now)
        if refused:
            return refused
        transaction.session_id = session.session_id
        if session.pending_offer is not None or (reinvite and session.state == "answered"):
            # §14.2: a second offer while one is still being answered.
            return self._respond(
                transaction,
                500 if reinvite else 491,
                "Server Internal Error" if reinvite else "Request Pending",
                now,
                headers=(("Retry-After", "1"),) if reinvite else (),
            )
        try:
            offer = parse_body(request.headers.get("Content-Type"), request.body)
        except OfferError as exc:
            return self._respond(transaction, exc.status, exc.reason, now)
        if session.session_expires is not None:
            session.expires_at = now + session.session_expires
        if offer.sdp is None and offer.metadata is None and not reinvite:
            return self._respond(
                transaction, 200, "OK", now, to_tag=session.local_tag, contact=session
            )
        if offer.sdp is not None and not any(accepts(s) for s in offer.sdp.media):
            return self._respond(
                transaction,
                488,
                "Not Acceptable Here: no RTP/AVP audio stream in PCMU, PCMA or G729",
                now,
            )
        session.pending_offer = _id_from_key(transaction.key)
        out: list[Output] = []
        if reinvite:
            trying = build_response(request, 100, "Trying", source=transaction.peer.address)
            transaction.last_response = trying
            out.append(self._send(transaction, trying))
        out.append(
            RecordingChanged(_id_from_key(transaction.key), session.session_id, request, offer)
        )
        return out

    def _ack(self, request: Request, invite_key: tuple[str, str, str], now: float) -> list[Output]:
        transaction = self._transactions.get(invite_key)
        if transaction is not None and transaction.final_status not in (None, 200):
            # The ACK of a failure response (§17.2.1): stop retransmitting, absorb copies.
            transaction.retransmit_at = None
            transaction.gives_up_at = None
            transaction.forget_at = now + (T4 if transaction.peer.transport == "UDP" else 0)
            return []
        session = self._session_for(request)
        if session is None:
            return []
        if request.cseq.sequence == session.invite_cseq:
            if session.state in ("answered", "reinvited"):
                session.state = "confirmed"
            for candidate in self._transactions.values():
                if (
                    candidate.session_id == session.session_id
                    and candidate.request.method == "INVITE"
                    and candidate.final_status == 200
                    and candidate.request.cseq.sequence == request.cseq.sequence
                ):
                    candidate.retransmit_at = None
                    candidate.gives_up_at = None
                    candidate.forget_at = now + 64 * T1
        return []

    def _cancel(self, transaction: _Transaction, now: float) -> list[Output]:
        branch, sent_by, _ = transaction.key
        invite = self._transactions.get((branch, sent_by, "INVITE"))
        if invite is None:
            return self._respond(transaction, 481, "Call/Transaction Does Not Exist", now)
        out = self._respond(transaction, 200, "OK", now)
        if invite.final_status is not None:
            return out  # already answered: the CANCEL has no effect (§9.2)
        session = self._sessions.get(invite.session_id or "")
        to_tag = session.local_tag if session is not None else self._new_tag()
        terminated = build_response(
            invite.request,
            487,
            "Request Terminated",
            source=invite.peer.address,
            to_tag=to_tag,
        )
        out += self._final(invite, 487, terminated, now)
        if session is not None:
            if session.state == "offered":
                self._end(session)
                out.append(RecordingEnded(session.session_id, "CANCEL"))
            else:
                session.pending_offer = None  # a cancelled re-INVITE keeps the session
        return out

    def _bye_received(self, transaction: _Transaction, now: float) -> list[Output]:
        session = self._session_for(transaction.request)
        if session is None:
            return self._respond(transaction, 481, "Call/Transaction Does Not Exist", now)
        transaction.session_id = session.session_id
        out = self._respond(transaction, 200, "OK", now)
        # Requests of the session still waiting for an answer get one now (§15.1.2).
        for pending in self._transactions.values():
            if (
                pending.session_id == session.session_id
                and pending is not transaction
                and pending.final_status is None
                and pending.request.method in ("INVITE", "UPDATE")
            ):
                data = build_response(
                    pending.request,
                    487,
                    "Request Terminated",
                    source=pending.peer.address,
                    to_tag=session.local_tag,
                )
                out += self._final(pending, 487, data, now)
            if pending.session_id == session.session_id:
                pending.retransmit_at = None
                pending.gives_up_at = None
        self._end(session)
        out.append(RecordingEnded(session.session_id, "BYE"))
        return out

    # Responses and our requests ----------------------------------------------------------

    def _respond(
        self,
        transaction: _Transaction,
        status: int,
        reason: str,
        now: float,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        to_tag: str | None = None,
        contact: _Session | None = None,
    ) -> list[Output]:
        request = transaction.request
        extra = list(headers)
        if contact is not None and contact.contact is not None:
            host, port = contact.contact
            extra.insert(0, ("Contact", f"<sip:srs@{_host(host)}:{port}>;+sip.srs"))
        if status >= 400:
            extra.append(("Warning", f'399 callscribe "{safe_text(reason, 80)}"'))
        data = build_response(
            request,
            status,
            reason,
            source=transaction.peer.address,
            to_tag=to_tag or (self._new_tag() if status >= 200 else None),
            headers=tuple(extra),
        )
        out: list[Output] = self._final(transaction, status, data, now)
        if status >= 400:
            out.append(RequestRejected(status, reason, request.method, transaction.peer))
        return out

    def _reply_once(self, request: Request, peer: Peer, status: int, reason: str) -> list[Output]:
        """A response outside any transaction (the request was too broken to start one)."""
        data = build_response(
            request,
            status,
            reason,
            source=peer.address,
            to_tag=self._new_tag(),
            headers=(("Warning", f'399 callscribe "{safe_text(reason, 80)}"'),),
        )
        self.stats.responses_sent += 1
        return [
            Send(data, _destination(request, peer)),
            RequestRejected(status, reason, request.method, peer),
        ]

    def _final(
        self, transaction: _Transaction, status: int, data: bytes, now: float
    ) -> list[Output]:
        transaction.final_status = status
        transaction.last_response = data
        reliable = transaction.peer.transport != "UDP"
        if transaction.request.method == "INVITE" and status >= 300:
            # Failure responses to INVITE are retransmitted until their ACK (Timer G/H).
            transaction.gives_up_at = now + 64 * T1
            if not reliable:
                transaction.retransmit_at = now + T1
                transaction.interval = T1
        elif transaction.request.method != "INVITE":
            # Keep answering retransmissions for 64·T1 (Timer J); streams never retransmit.
            transaction.forget_at = now + (0 if reliable else 64 * T1)
        return [self._send(transaction, data)]

    def _send(self, transaction: _Transaction, data: bytes) -> Send:
        self.stats.responses_sent += 1
        return Send(data, _destination(transaction.request, transaction.peer))

    def _bye(self, session: _Session) -> list[Output]:
        session.local_cseq += 1
        host, port = session.contact or ("invalid", self.local_port)
        transport = session.peer.transport
        request = Request(method="BYE", uri=_uri_or_invalid(session.remote_target))
        request.headers.add(
            "Via", f"SIP/2.0/{transport} {_host(host)}:{port};branch=z9hG4bK{secrets.token_hex(8)}"
        )
        request.headers.add("Max-Forwards", "70")
        for route in session.route_set:
            request.headers.add("Route", route)
        request.headers.add("From", session.local_to)
        request.headers.add("To", session.remote_from)
        request.headers.add("Call-ID", session.call_id)
        request.headers.add("CSeq", f"{session.local_cseq} BYE")
        request.headers.add("User-Agent", SERVER_NAME)
        request.headers.add("Content-Length", "0")
        return [Send(bytes(request), session.peer)]

    def _end(self, session: _Session) -> None:
        session.state = "ended"
        session.expires_at = None
        session.pending_offer = None
        # The dialog is kept until its transactions are forgotten, so that retransmitted BYEs
        # still match; the session itself is no longer needed.
        self._sessions.pop(session.session_id, None)
        self._by_dialog.pop((session.call_id, session.local_tag), None)


def _destination(request: Request, peer: Peer) -> Peer:
    if peer.transport != "UDP":
        return peer
    return Peer(peer.transport, response_destination(request, peer.address), peer.connection)


def _id_from_key(key: tuple[str, str, str]) -> str:
    return "\x1f".join(key)


def _key_from_id(offer_id: str) -> tuple[str, str, str]:
    parts = offer_id.split("\x1f")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", "", "")


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _uri_or_invalid(target: str) -> URI:
    try:
        return URI.parse(target)
    except ValueError:
        return URI(scheme="sip", host="invalid")
