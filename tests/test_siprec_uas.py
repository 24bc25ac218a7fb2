"""The recording server's SIP UAS, sans-IO: transactions, retransmissions and timers driven by
an explicit clock, CANCEL, BYE, re-INVITE/UPDATE, OPTIONS, unknown methods, broken input."""

from __future__ import annotations

import itertools

import pytest
from sipmessage import Request, Response

from callscribe.siprec.message import parse_message
from callscribe.siprec.uas import (
    T1,
    MessageDropped,
    Peer,
    RecordingChanged,
    RecordingEnded,
    RecordingOffered,
    RecordingServerUas,
    RequestRejected,
    Send,
)
from tests.siprec_support import OfferedStream, avaya_invite, dialog_headers, sdp_offer, sip_request

SBC = Peer("UDP", ("192.0.2.10", 5060))
SBC_TCP = Peer("TCP", ("192.0.2.10", 40001), connection=7)
ANSWER = b"v=0\r\no=CallScribe 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
CONTACT = ("192.0.2.50", 5070)


def make_uas() -> RecordingServerUas:
    tags = (f"tag{n}" for n in itertools.count())
    return RecordingServerUas(local_port=5070, new_tag=lambda: next(tags))


def sent(outputs: list[object]) -> list[Response | Request]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send)]


def codes(outputs: list[object]) -> list[int]:
    return [m.code for m in sent(outputs) if isinstance(m, Response)]


def of_type(outputs: list[object], kind: type) -> list[object]:
    return [o for o in outputs if isinstance(o, kind)]


def offer_and_answer(
    uas: RecordingServerUas, now: float = 0.0, peer: Peer = SBC
) -> tuple[RecordingOffered, Response]:
    outputs = uas.receive(avaya_invite(branch="z9hG4bKinvite1"), peer, now)
    assert codes(outputs) == [100]
    (offered,) = of_type(outputs, RecordingOffered)
    accepted = uas.accept(offered.offer_id, ANSWER, now + 0.01, contact=CONTACT)
    (ok,) = sent(accepted)
    assert ok.code == 200
    return offered, ok


def ack_for(ok: Response, cseq: int = 1) -> bytes:
    to_tag = ok.to_address.parameters["tag"]
    return sip_request(
        "ACK",
        dialog_headers("ACK", call_id=ok.call_id, cseq=cseq, to_tag=to_tag),
    )


def in_dialog(
    method: str, ok: Response, cseq: int, body: str = "", content_type: str | None = None
) -> bytes:
    headers = dialog_headers(
        method, call_id=ok.call_id, cseq=cseq, to_tag=ok.to_address.parameters["tag"]
    )
    if content_type:
        headers.append(("Content-Type", content_type))
    return sip_request(method, headers, body)


def test_invite_answered_with_sdp_and_to_tag_then_ack_stops_retransmissions() -> None:
    uas = make_uas()
    offered, ok = offer_and_answer(uas)
    assert offered.offer.sdp is not None and len(offered.offer.sdp.media) == 2
    assert ok.body == ANSWER and ok.headers["Content-Type"] == "application/sdp"
    assert ok.to_address.parameters["tag"] == "tag0"
    assert "+sip.srs" in ok.headers["Contact"]
    assert ok.headers["Session-Expires"] == "1800;refresher=uac"
    # UDP: the 200 goes again at T1, 2·T1, 4·T1 … until the ACK.
    assert codes(uas.tick(T1 + 0.02)) == [200]
    assert codes(uas.tick(T1 + 0.5)) == []
    assert codes(uas.tick(3 * T1 + 0.02)) == [200]
    # A retransmitted INVITE gets the 200 again.
    assert codes(uas.receive(avaya_invite(branch="z9hG4bKinvite1"), SBC, 2.0)) == [200]
    assert uas.receive(ack_for(ok), SBC, 2.1) == []
    assert codes(uas.tick(10.0)) == []
    assert uas.live_sessions == 1


def test_no_ack_ends_the_session_with_a_bye() -> None:
    uas = make_uas()
    offered, ok = offer_and_answer(uas)
    outputs = []
    for step in range(1, 80):
        outputs += uas.tick(step * 0.5)
    assert codes(outputs).count(200) >= 5
    byes = [m for m in sent(outputs) if isinstance(m, Request)]
    assert [b.method for b in byes] == ["BYE"]
    assert byes[0].headers["From"].endswith(";tag=tag0")
    assert byes[0].call_id == ok.call_id
    assert of_type(outputs, RecordingEnded) == [RecordingEnded(offered.session_id, "no ACK")]


def test_tcp_does_not_retransmit() -> None:
    uas = make_uas()
    _, ok = offer_and_answer(uas, peer=SBC_TCP)
    assert codes(uas.tick(1.0)) == []
    assert uas.receive(ack_for(ok), SBC_TCP, 1.1) == []


def test_cancel_before_answer_gives_487_and_ends_the_session() -> None:
    uas = make_uas()
    outputs = uas.receive(avaya_invite(branch="z9hG4bKinv2"), SBC, 0.0)
    (offered,) = of_type(outputs, RecordingOffered)
    cancel = sip_request(
        "CANCEL", dialog_headers("CANCEL", call_id="avaya-1@192.0.2.10", branch="z9hG4bKinv2")
    )
    outputs = uas.receive(cancel, SBC, 0.1)
    responses = sent(outputs)
    assert [(r.code, r.cseq.method) for r in responses] == [(200, "CANCEL"), (487, "INVITE")]
    assert of_type(outputs, RecordingEnded) == [RecordingEnded(offered.session_id, "CANCEL")]
    # The set-up finishing later must not answer any more.
    assert uas.accept(offered.offer_id, ANSWER, 0.2, contact=CONTACT) == []
    # The 487 is retransmitted until its ACK (same branch as the INVITE), then absorbed.
    assert codes(uas.tick(0.1 + T1 + 0.01)) == [487]
    ack = sip_request(
        "ACK",
        dialog_headers("ACK", call_id="avaya-1@192.0.2.10", branch="z9hG4bKinv2", to_tag="tag0"),
    )
    assert uas.receive(ack, SBC, 1.0) == []
    assert codes(uas.tick(3.0)) == []
    # A CANCEL for an INVITE nobody knows.
    unknown = sip_request("CANCEL", dialog_headers("CANCEL", call_id="nope", branch="z9hG4bKnope"))
    assert codes(uas.receive(unknown, SBC, 4.0)) == [481]


def test_cancel_after_answer_has_no_effect() -> None:
    uas = make_uas()
    _, ok = offer_and_answer(uas)
    cancel = sip_request(
        "CANCEL", dialog_headers("CANCEL", call_id=ok.call_id, branch="z9hG4bKinvite1")
    )
    outputs = uas.receive(cancel, SBC, 0.2)
    assert codes(outputs) == [200]
    assert of_type(outputs, RecordingEnded) == []


def test_bye_ends_the_session_and_retransmitted_bye_gets_the_same_200() -> None:
    uas = make_uas()
    offered, ok = offer_and_answer(uas)
    uas.receive(ack_for(ok), SBC, 0.1)
    bye = in_dialog("BYE", ok, 2)
    outputs = uas.receive(bye, SBC, 5.0)
    assert codes(outputs) == [200]
    assert of_type(outputs, RecordingEnded) == [RecordingEnded(offered.session_id, "BYE")]
    assert codes(uas.receive(bye, SBC, 5.5)) == [200]
    assert of_type(uas.receive(bye, SBC, 5.6), RecordingEnded) == []
    assert uas.live_sessions == 0
    other = sip_request("BYE", dialog_headers("BYE", call_id="unknown", to_tag="zzz"))
    assert codes(uas.receive(other, SBC, 6.0)) == [481]


def test_reinvite_for_hold_and_update_refresh() -> None:
    uas = make_uas()
    offered, ok = offer_and_answer(uas)
    uas.receive(ack_for(ok), SBC, 0.1)
    hold = sdp_offer(
        [
            OfferedStream("1", 35000, direction="inactive"),
            OfferedStream("2", 35002, direction="inactive"),
        ]
    )
    outputs = uas.receive(in_dialog("INVITE", ok, 3, hold, "application/sdp"), SBC, 1.0)
    assert codes(outputs) == [100]
    (changed,) = of_type(outputs, RecordingChanged)
    assert changed.session_id == offered.session_id
    assert [m.direction for m in changed.offer.sdp.media] == ["inactive", "inactive"]
    # A second re-INVITE while the first is unanswered: 500 with Retry-After (§14.2).
    busy = uas.receive(in_dialog("INVITE", ok, 4, hold, "application/sdp"), SBC, 1.1)
    (refused,) = sent(busy)
    assert refused.code == 500 and refused.headers["Retry-After"] == "1"
    (reanswer,) = sent(uas.accept(changed.offer_id, ANSWER, 1.2, contact=CONTACT))
    assert reanswer.code == 200 and reanswer.cseq.sequence == 3
    uas.receive(ack_for(ok, cseq=3), SBC, 1.3)
    # UPDATE without a body: a session refresh, answered at once.
    outputs = uas.receive(in_dialog("UPDATE", ok, 5), SBC, 2.0)
    assert codes(outputs) == [200] and of_type(outputs, RecordingChanged) == []
    # UPDATE with new metadata only: the server is asked, and answers without SDP.
    metadata = '<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>partial</datamode></recording>'
    outputs = uas.receive(
        in_dialog("UPDATE", ok, 6, metadata, "application/rs-metadata+xml"), SBC, 2.5
    )
    (changed,) = of_type(outputs, RecordingChanged)
    assert changed.offer.sdp is None and changed.offer.metadata is not None
    (updated,) = sent(uas.accept(changed.offer_id, None, 2.6, contact=CONTACT))
    assert updated.code == 200 and updated.body == b""
    # Out-of-order CSeq in the dialog.
    assert codes(uas.receive(in_dialog("UPDATE", ok, 2), SBC, 3.0)) == [500]


def test_options_and_methods_a_recorder_does_not_take() -> None:
    uas = make_uas()
    options = sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="ping-1"))
    (pong,) = sent(uas.receive(options, SBC, 0.0))
    assert pong.code == 200
    assert "INVITE" in pong.headers["Allow"] and "application/sdp" in pong.headers["Accept"]
    info = sip_request("INFO", dialog_headers("INFO", call_id="x1"))
    (refused,) = sent(uas.receive(info, SBC, 0.0))
    assert refused.code == 405 and "BYE" in refused.headers["Allow"]
    unknown = sip_request("FROBNICATE", dialog_headers("FROBNICATE", call_id="x2"))
    assert codes(uas.receive(unknown, SBC, 0.0)) == [501]


def with_length(data: bytes) -> bytes:
    """The message with its Content-Length recomputed after an edit of the body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
    return b"\r\n".join([*lines, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("old", "new", "status", "reason"),
    [
        (b"Require: siprec", b"Require: siprec, magic", 420, "Bad Extension"),
        (b"Session-Expires: 1800", b"Session-Expires: 30", 422, "Session Interval Too Small"),
        (b"multipart/mixed;boundary=unique-boundary-1", b"text/html", 415, "unsupported body type"),
        (b"PCMU/8000", b"opus/48000", 488, "no RTP/AVP audio stream"),
        (b"a=label:1", b"a=label:", 400, "bad SDP: malformed a=label"),
        (b"<datamode>", b"<datamode", 400, "bad recording metadata"),
        (b"CSeq: 1 INVITE", b"CSeq: banana", 400, "malformed CSeq header"),
    ],
)
def test_bad_invites_get_errors_with_reasons(
    old: bytes, new: bytes, status: int, reason: str
) -> None:
    uas = make_uas()
    invite = avaya_invite()
    if new == b"opus/48000":  # no codec we decode: every format is dynamic opus
        invite = invite.replace(b"RTP/AVP 0 101", b"RTP/AVP 96").replace(
            b"a=rtpmap:0 ", b"a=rtpmap:96 "
        )
    outputs = uas.receive(with_length(invite.replace(old, new)), SBC, 0.0)
    assert codes(outputs) == [status]
    (rejected,) = of_type(outputs, RequestRejected)
    assert rejected.status == status
    (response,) = sent(outputs)
    assert reason in response.phrase  # the reason is in the status line
    assert of_type(outputs, RecordingOffered) == []
    if status == 420:
        assert response.headers["Unsupported"] == "magic"
    else:
        assert reason in response.headers["Warning"]


def test_reject_after_offer_ends_the_session() -> None:
    uas = make_uas()
    (offered,) = of_type(uas.receive(avaya_invite(), SBC, 0.0), RecordingOffered)
    outputs = uas.reject(offered.offer_id, 486, "Busy Here: already recorded", 0.1)
    (busy,) = sent(outputs)
    assert busy.code == 486 and "already recorded" in busy.headers["Warning"]
    assert of_type(outputs, RecordingEnded) == [RecordingEnded(offered.session_id, "rejected")]


def test_unanswerable_garbage_is_dropped_not_raised() -> None:
    uas = make_uas()
    for data in (b"\x00\x01\x02", b"GET / HTTP/1.1\r\n\r\n", b"INVITE sip:x@y SIP/2.0\r\n\r\n"):
        outputs = uas.receive(data, SBC, 0.0)
        assert len(outputs) == 1 and isinstance(outputs[0], MessageDropped)
    # An ACK is never answered, however broken.
    broken_ack = sip_request("ACK", dialog_headers("ACK", call_id="a")).replace(
        b"CSeq: 1 ACK", b"CSeq: x"
    )
    assert of_type(uas.receive(broken_ack, SBC, 0.0), Send) == []
    assert uas.stats.malformed == 4


def test_session_timer_expiry_ends_the_session() -> None:
    uas = make_uas()
    invite = avaya_invite().replace(b"Session-Expires: 1800", b"Session-Expires: 90")
    (offered,) = of_type(uas.receive(invite, SBC, 0.0), RecordingOffered)
    (ok,) = sent(uas.accept(offered.offer_id, ANSWER, 0.0, contact=CONTACT))
    uas.receive(ack_for(ok), SBC, 0.1)
    # A refresh (UPDATE) at 60 s pushes the expiry to 150 s.
    uas.receive(in_dialog("UPDATE", ok, 2), SBC, 60.0)
    assert of_type(uas.tick(100.0), RecordingEnded) == []
    outputs = uas.tick(151.0)
    assert of_type(outputs, RecordingEnded) == [
        RecordingEnded(offered.session_id, "session expired")
    ]
    assert [m.method for m in sent(outputs) if isinstance(m, Request)] == ["BYE"]
