"""The recorder's decisions, sans-IO: SIP messages, RTP datagrams and ticks in with an explicit
clock, what to send and what to open or close out; no sockets, no event loop."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sipmessage import Request, Response

from callscribe.config import SiprecSettings
from callscribe.model import Role
from callscribe.siprec.message import parse_message
from callscribe.siprec.recorder import (
    CloseRecording,
    CloseStreams,
    MediaTimedOut,
    OpenRecording,
    OpenStreams,
    RecorderPolicy,
    RecordingStarted,
    RecordingStopped,
    RecordingUpdated,
    SiprecConfigError,
    SiprecRecorder,
    StreamAudio,
    store_tenant_map,
)
from callscribe.siprec.rtp import RtpPacket, build_rtp
from callscribe.siprec.uas import Peer, RequestRejected, Send
from callscribe.store.base import CallKey
from tests.siprec_support import (
    OfferedStream,
    avaya_invite,
    dialog_headers,
    numbered_streams,
    plain_invite,
    sdp_offer,
    sip_request,
)

SBC = Peer("UDP", ("192.0.2.10", 5060))
CONTACT = ("192.0.2.50", 5070)
AVAYA_GUID = "00002542391662063156"  # the decimal UCID of avaya_invite()'s User-to-User
AVAYA_CALL_ID = "avaya-1@192.0.2.10"


def make_recorder(
    *,
    rtp_port_pairs: int = 100,
    is_call_live: Callable[[CallKey], bool] = lambda key: False,
    **settings: Any,
) -> SiprecRecorder:
    tags = (f"tag{n}" for n in itertools.count())
    return SiprecRecorder(
        RecorderPolicy.from_settings(SiprecSettings(**settings)),
        local_port=5070,
        rtp_port_pairs=rtp_port_pairs,
        is_call_live=is_call_live,
        new_tag=lambda: next(tags),
    )


def messages(actions: list[object]) -> list[Request | Response]:
    return [parse_message(a.data) for a in actions if isinstance(a, Send)]


def codes(actions: list[object]) -> list[int]:
    return [m.code for m in messages(actions) if isinstance(m, Response)]


def of_type(actions: list[object], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def final(actions: list[object]) -> Response:
    (response,) = [m for m in messages(actions) if isinstance(m, Response) and m.code >= 200]
    return response


def ports_for(channels: tuple[str, ...], first: int = 20000) -> dict[str, int]:
    return {label: first + 2 * index for index, label in enumerate(channels)}


def offer(
    recorder: SiprecRecorder, invite: bytes, now: float = 0.0, peer: Peer = SBC
) -> OpenRecording:
    actions = recorder.receive(invite, peer, now)
    assert codes(actions) == [100]
    (opening,) = of_type(actions, OpenRecording)
    return opening


def answer(
    recorder: SiprecRecorder, invite: bytes | None = None, now: float = 0.0, peer: Peer = SBC
) -> tuple[OpenRecording, Response]:
    """An offered session set up and answered, its 200 acknowledged."""
    opening = offer(recorder, invite or avaya_invite(), now, peer)
    actions = recorder.recording_ready(
        opening.session_id, ports_for(opening.channels), CONTACT, now + 0.01
    )
    ok = final(actions)
    assert ok.code == 200
    to_tag = ok.to_address.parameters["tag"]
    ack = dialog_headers(
        "ACK",
        call_id=ok.call_id,
        cseq=ok.cseq.sequence,
        to_tag=to_tag,
        from_tag=ok.from_address.parameters["tag"],
        via_host=f"{peer.address[0]}:{peer.address[1]}",
    )
    assert recorder.receive(sip_request("ACK", ack), peer, now + 0.02) == []
    return opening, ok


def in_dialog(
    method: str, ok: Response, cseq: int, body: str = "", branch: str | None = None
) -> bytes:
    headers = dialog_headers(
        method,
        call_id=ok.call_id,
        cseq=cseq,
        to_tag=ok.to_address.parameters["tag"],
        from_tag=ok.from_address.parameters["tag"],
        branch=branch,
    )
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return sip_request(method, headers, body)


def rtp(sequence: int, ssrc: int = 0x5BC) -> bytes:
    return build_rtp(RtpPacket(0, False, sequence, 1000 + sequence * 160, ssrc, b"\xff" * 160))


# Set-up -------------------------------------------------------------------------------------


def test_invite_is_admitted_then_answered_200_with_the_sdp_answer_once_ports_are_open() -> None:
    recorder = make_recorder()
    opening = offer(recorder, avaya_invite())
    assert opening.key == CallKey("default", "siprec", AVAYA_GUID)
    assert opening.channels == ("1", "2")
    assert opening.roles == {"1": Role.CUSTOMER, "2": Role.AGENT}
    assert recorder.ports_available == 98  # held from the offer on, not from the answer
    actions = recorder.recording_ready(opening.session_id, {"1": 20000, "2": 20002}, CONTACT, 0.1)
    # The call is live (registered) before the 200 that tells the SBC so.
    assert isinstance(actions[0], RecordingStarted) and isinstance(actions[1], Send)
    (started,) = of_type(actions, RecordingStarted)
    assert started.guid_source == "user-to-user"
    assert started.streams == ("1=customer:PCMU@20000", "2=agent:PCMU@20002")
    ok = final(actions)
    assert ok.code == 200 and ok.headers["Content-Type"] == "application/sdp"
    body = ok.body.decode()
    assert "c=IN IP4 192.0.2.50" in body
    assert "m=audio 20000 RTP/AVP 0" in body and "m=audio 20002 RTP/AVP 0" in body
    assert body.count("a=recvonly") == 2
    assert "<sip:srs@192.0.2.50:5070>" in ok.headers["Contact"]
    assert recorder.live_sessions == 1 and recorder.stats.sessions_answered == 1


def test_sbc_not_mapped_to_a_tenant_is_refused_403_and_a_mapped_one_gets_its_tenant() -> None:
    recorder = make_recorder(tenant="", tenant_by_source="198.51.100.0/24=acme,192.0.2.10=globex")
    refused = recorder.receive(avaya_invite(), Peer("UDP", ("203.0.113.9", 5060)), 0.0)
    assert final(refused).code == 403
    assert of_type(refused, OpenRecording) == [] and recorder.live_sessions == 0
    (rejected,) = of_type(refused, RequestRejected)
    assert rejected.status == 403 and rejected.method == "INVITE"
    opening = offer(recorder, avaya_invite(call_id="avaya-2@192.0.2.10", branch="z9hG4bKb2"))
    assert opening.key.tenant == "globex"


def test_the_stores_mapping_comes_before_the_settings_map_then_the_default_tenant() -> None:
    recorder = make_recorder(
        tenant="default", tenant_by_source="192.0.2.10=globex,198.51.100.0/24=initech"
    )
    assert recorder.policy.tenant_of("192.0.2.10") == "globex"
    # Least specific first, as a Store may list them: the most specific network still wins.
    recorder.set_store_sources(
        store_tenant_map(
            {"192.0.2.0/24": "acme", "192.0.2.8/29": "umbrella", "2001:db8::/32": "acme"}
        )
    )
    policy = recorder.policy
    # The Store's /29 beats its own /24, and the settings' /32 (the Store is asked first).
    assert policy.tenant_of("192.0.2.10") == "umbrella"
    assert policy.tenant_of("192.0.2.100") == "acme"
    assert policy.tenant_of("2001:db8::5") == "acme"
    # What the Store does not map: the settings' map, then the default tenant.
    assert policy.tenant_of("198.51.100.7") == "initech"
    assert policy.tenant_of("203.0.113.9") == "default"
    assert policy.tenant_of("2001:db9::5") == "default"

    # A new mapping replaces the old one as a whole; one given unordered is ordered too.
    recorder.set_store_sources(
        [
            (ipaddress.ip_network("192.0.2.0/24"), "hooli"),
            (ipaddress.ip_network("192.0.2.0/28"), "initrode"),
        ]
    )
    assert recorder.policy.tenant_of("192.0.2.10") == "initrode"
    assert recorder.policy.tenant_of("192.0.2.100") == "hooli"
    assert recorder.policy.tenant_of("2001:db8::5") == "default"
    recorder.set_store_sources([])
    assert recorder.policy.tenant_of("192.0.2.10") == "globex"
    assert recorder.policy.tenant_of("192.0.2.100") == "default"


def test_with_no_default_tenant_an_sbc_the_store_does_not_map_is_refused_403() -> None:
    recorder = make_recorder(tenant="", tenant_by_source="192.0.2.10=globex")
    recorder.set_store_sources(store_tenant_map({"192.0.2.0/24": "acme"}))
    refused = recorder.receive(avaya_invite(), Peer("UDP", ("203.0.113.9", 5060)), 0.0)
    assert final(refused).code == 403
    assert of_type(refused, OpenRecording) == [] and recorder.live_sessions == 0
    opening = offer(recorder, avaya_invite(call_id="avaya-2@192.0.2.10", branch="z9hG4bKb2"))
    assert opening.key.tenant == "acme"  # not the settings' globex

    # The mapping removed from the Store: the settings' map again; where neither maps, 403.
    recorder.set_store_sources([])
    other_call = avaya_invite(
        call_id="avaya-3@192.0.2.10", ucid_hex="00FA080002D3DF63111235", branch="z9hG4bKb3"
    )
    assert offer(recorder, other_call, 0.1).key.tenant == "globex"
    unmapped = avaya_invite(
        call_id="avaya-4@192.0.2.11", ucid_hex="00FA080002D3DF63111236", branch="z9hG4bKb4"
    )
    assert final(recorder.receive(unmapped, Peer("UDP", ("192.0.2.11", 5060)), 0.2)).code == 403


def test_a_network_the_store_should_never_hold_is_a_config_error_naming_it() -> None:
    with pytest.raises(SiprecConfigError, match="'192.0.2.300/24'"):
        store_tenant_map({"192.0.2.0/24": "acme", "192.0.2.300/24": "globex"})


def test_invite_without_a_configured_call_identifier_is_refused_400() -> None:
    recorder = make_recorder(call_id_sources="header:X-UCID")
    invite = plain_invite(
        "plain-1", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    response = final(recorder.receive(invite, SBC, 0.0))
    assert response.code == 400 and "no call identifier" in response.phrase


def test_more_streams_than_a_session_records_is_refused_488_and_takes_no_port() -> None:
    recorder = make_recorder(max_streams_per_session=4)
    invite = plain_invite(
        "greedy-1", numbered_streams(64), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    actions = recorder.receive(invite, SBC, 0.0)
    response = final(actions)
    assert response.code == 488
    assert "64 media streams" in response.phrase and "at most 4" in response.phrase
    assert of_type(actions, OpenRecording) == [] and recorder.ports_available == 100


def test_call_already_recorded_is_refused_486_here_or_elsewhere_in_the_process() -> None:
    recorder = make_recorder()
    offer(recorder, avaya_invite())
    # The same UCID forked again (another Call-ID): one call, one recording.
    forked = avaya_invite(call_id="avaya-2@192.0.2.10", branch="z9hG4bKb2")
    again = recorder.receive(forked, SBC, 0.1)
    assert final(again).code == 486 and AVAYA_GUID in final(again).phrase
    live_elsewhere = make_recorder(is_call_live=lambda key: key.guid == AVAYA_GUID)
    assert final(live_elsewhere.receive(avaya_invite(), SBC, 0.0)).code == 486


def test_one_source_holds_at_most_its_share_of_sessions_503_with_retry_after() -> None:
    recorder = make_recorder(max_sessions_per_source=2)
    for n in range(2):
        offer(
            recorder,
            plain_invite(
                f"c{n}", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
            ),
        )
    third = plain_invite(
        "c2", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    refused = final(recorder.receive(third, SBC, 0.1))
    assert refused.code == 503 and int(refused.headers["Retry-After"]) > 0
    other = Peer("UDP", ("192.0.2.11", 5060))
    offer(
        recorder,
        plain_invite(
            "c3", numbered_streams(2), media_address="192.0.2.11", via_host="192.0.2.11:5060"
        ),
        peer=other,
    )


def test_no_free_rtp_port_is_503_and_ports_come_back_when_a_session_closes() -> None:
    recorder = make_recorder(rtp_port_pairs=3)
    _, ok = answer(recorder)
    second = plain_invite(
        "c2", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    refused = final(recorder.receive(second, SBC, 0.1))
    assert refused.code == 503 and "no free RTP port" in refused.phrase
    assert int(refused.headers["Retry-After"]) > 0
    closed = recorder.receive(in_dialog("BYE", ok, 2), SBC, 0.2)
    assert of_type(closed, CloseRecording) and recorder.ports_available == 3
    again = plain_invite(
        "c3", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    offer(recorder, again, now=0.3)


def test_ports_taken_by_other_programs_fail_the_set_up_with_503_and_close_it() -> None:
    recorder = make_recorder()
    opening = offer(recorder, avaya_invite())
    actions = recorder.set_up_failed(opening.session_id, True, 0.1)
    assert final(actions).code == 503
    (stopped,) = of_type(actions, RecordingStopped)
    assert stopped.reason == "rejected"
    (closing,) = of_type(actions, CloseRecording)
    assert closing.session_id == opening.session_id
    assert recorder.ports_available == 100 and recorder.live_sessions == 0
    recorder.forget(opening.session_id)
    assert recorder.recording_of(AVAYA_GUID) is None
    # Any other failure is the server's fault.
    faulty = offer(recorder, avaya_invite(call_id="avaya-2@192.0.2.10", branch="z9hG4bKb2"))
    assert final(recorder.set_up_failed(faulty.session_id, False, 0.2)).code == 500


# In the session ---------------------------------------------------------------------------


def test_options_is_answered_200_outside_any_session() -> None:
    recorder = make_recorder()
    options = sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="ping-1"))
    actions = recorder.receive(options, SBC, 0.0)
    pong = final(actions)
    assert pong.code == 200 and "INVITE" in pong.headers["Allow"]
    assert recorder.live_sessions == 0 and recorder.stats.sessions_offered == 0


def ping(recorder: SiprecRecorder, now: float, to_tag: str | None = None) -> Response:
    headers = dialog_headers("OPTIONS", call_id=f"ping-{now}", to_tag=to_tag)
    return final(recorder.receive(sip_request("OPTIONS", headers), SBC, now))


def test_a_draining_recorder_refuses_new_invites_and_pings_503_and_keeps_its_live_session() -> None:
    recorder = make_recorder()
    _, ok = answer(recorder)
    assert recorder.why_no_new_calls() is None and ping(recorder, 0.1).code == 200
    recorder.draining = True
    assert recorder.why_no_new_calls() == "this recording server is draining"
    refused = final(
        recorder.receive(
            plain_invite(
                "c2", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
            ),
            SBC,
            0.2,
        )
    )
    assert refused.code == 503 and "draining" in refused.phrase
    assert int(refused.headers["Retry-After"]) > 0
    pong = ping(recorder, 0.3)
    assert pong.code == 503 and int(pong.headers["Retry-After"]) > 0
    # A ping inside the live dialog asks only whether the dialog lives: it does.
    assert ping(recorder, 0.4, to_tag=ok.to_address.parameters["tag"]).code == 200
    # The live session carries on to its BYE.
    assert recorder.live_sessions == 1
    ended = recorder.receive(in_dialog("BYE", ok, 2), SBC, 0.5)
    assert 200 in codes(ended) and of_type(ended, CloseRecording)


def test_a_recorder_at_its_call_cap_refuses_503_until_a_call_ends() -> None:
    recorder = make_recorder(max_calls=1)
    _, ok = answer(recorder)
    assert recorder.why_no_new_calls() == "1 live recordings, the most this server takes"
    second = plain_invite(
        "c2", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    refused = final(recorder.receive(second, SBC, 0.1))
    assert refused.code == 503 and "the most this server takes" in refused.phrase
    assert ping(recorder, 0.2).code == 503
    recorder.receive(in_dialog("BYE", ok, 2), SBC, 0.3)
    assert recorder.why_no_new_calls() is None and ping(recorder, 0.4).code == 200
    third = plain_invite(
        "c3", numbered_streams(2), media_address="192.0.2.10", via_host="192.0.2.10:5060"
    )
    offer(recorder, third, now=0.5)


def test_a_recorder_without_ports_for_a_call_is_not_ready() -> None:
    recorder = make_recorder(rtp_port_pairs=3)
    assert recorder.why_no_new_calls() is None
    answer(recorder)
    assert recorder.why_no_new_calls() == "no free RTP port"
    assert ping(recorder, 0.1).code == 503


def test_rtp_from_the_offered_source_becomes_audio_and_anyone_elses_is_dropped() -> None:
    recorder = make_recorder()
    opening, _ = answer(recorder)
    heard = recorder.rtp_received(opening.session_id, "1", rtp(7), ("192.0.2.10", 35000), 1.0)
    (audio,) = heard
    assert isinstance(audio, StreamAudio)
    assert audio.channel == "1" and len(audio.pcm16) == 160 and audio.at_sample == 0
    elsewhere = ("192.0.2.66", 35000)
    assert recorder.rtp_received(opening.session_id, "1", rtp(8, 0xBAD), elsewhere, 1.0) == []
    stats = recorder.recording_of(AVAYA_GUID).streams["1"].receiver.stats
    assert stats.packets == 1 and stats.wrong_source == 1
    assert recorder.rtp_totals()["wrong_source"] == 1


def test_bye_ends_the_session_its_last_audio_comes_out_then_it_is_closed() -> None:
    recorder = make_recorder()
    opening, ok = answer(recorder)
    for sequence in (1, 3):  # 2 is missing: 3 waits in the jitter buffer
        recorder.rtp_received(opening.session_id, "1", rtp(sequence), ("192.0.2.10", 35000), 1.0)
    actions = recorder.receive(in_dialog("BYE", ok, 2), SBC, 1.01)
    assert codes(actions) == [200]
    kinds = [type(a) for a in actions if not isinstance(a, Send)]
    assert kinds == [RecordingStopped, StreamAudio, CloseRecording]
    assert of_type(actions, RecordingStopped)[0].reason == "BYE"
    (closing,) = of_type(actions, CloseRecording)
    assert closing.rtp["1"]["packets"] == 2 and closing.rtp["1"]["lost"] == 1
    assert recorder.live_sessions == 0 and recorder.stats.sessions_ended == 1
    # Kept until the gateway has completed the call.
    assert recorder.recording_of(AVAYA_GUID) is not None
    assert recorder.rtp_received(opening.session_id, "1", rtp(4), ("192.0.2.10", 35000), 1.1) == []
    recorder.forget(opening.session_id)
    assert recorder.recording_of(AVAYA_GUID) is None
    assert recorder.rtp_totals()["packets"] == 2


def test_cancel_during_set_up_ends_the_session_and_the_finished_set_up_only_closes_it() -> None:
    recorder = make_recorder()
    opening = offer(recorder, avaya_invite(branch="z9hG4bKinv2"))
    cancel = sip_request(
        "CANCEL", dialog_headers("CANCEL", call_id=AVAYA_CALL_ID, branch="z9hG4bKinv2")
    )
    actions = recorder.receive(cancel, SBC, 0.1)
    answered = [(m.code, m.cseq.method) for m in messages(actions)]
    assert answered == [(200, "CANCEL"), (487, "INVITE")]
    assert [s.reason for s in of_type(actions, RecordingStopped)] == ["CANCEL"]
    assert of_type(actions, CloseRecording) == []  # the set-up still holds its ports
    ready = recorder.recording_ready(opening.session_id, ports_for(opening.channels), CONTACT, 0.2)
    assert messages(ready) == [] and of_type(ready, RecordingStarted) == []
    assert len(of_type(ready, CloseRecording)) == 1 and recorder.ports_available == 100


def test_reinvite_adding_a_stream_opens_its_port_then_answers_with_all_streams() -> None:
    recorder = make_recorder()
    opening, ok = answer(recorder)
    streams = [OfferedStream("1", 35000), OfferedStream("2", 35002), OfferedStream("3", 35004)]
    actions = recorder.receive(in_dialog("INVITE", ok, 2, sdp_offer(streams)), SBC, 1.0)
    assert codes(actions) == [100]
    assert of_type(actions, OpenStreams) == [OpenStreams(opening.session_id, ("3",))]
    answered = recorder.streams_opened(opening.session_id, {"3": 20004}, 1.1)
    (updated,) = of_type(answered, RecordingUpdated)
    assert updated.new_channels == ("3",)
    assert updated.roles == {"1": Role.CUSTOMER, "2": Role.AGENT}
    assert isinstance(answered[0], RecordingUpdated)  # the call has the stream before the 200
    reanswer = final(answered)
    assert reanswer.code == 200
    assert "m=audio 20004 RTP/AVP 0" in reanswer.body.decode()
    assert "o=CallScribe" in reanswer.body.decode() and " 2 IN IP4 " in reanswer.body.decode()
    assert recorder.ports_available == 97


def test_reinvite_putting_streams_on_hold_is_answered_at_once_and_stops_the_media_check() -> None:
    recorder = make_recorder(media_timeout_s=5.0)
    opening, ok = answer(recorder)
    held = [
        OfferedStream("1", 35000, direction="inactive"),
        OfferedStream("2", 35002, direction="inactive"),
    ]
    actions = recorder.receive(in_dialog("INVITE", ok, 2, sdp_offer(held)), SBC, 1.0)
    assert of_type(actions, OpenStreams) == []
    (updated,) = of_type(actions, RecordingUpdated)
    assert updated.directions == {"1": "inactive", "2": "inactive"}
    assert codes(actions) == [100, 200] and "a=inactive" in final(actions).body.decode()
    ack = dialog_headers(
        "ACK",
        call_id=ok.call_id,
        cseq=2,
        to_tag=ok.to_address.parameters["tag"],
        from_tag=ok.from_address.parameters["tag"],
    )
    assert recorder.receive(sip_request("ACK", ack), SBC, 1.1) == []
    # Well past the media timeout: nothing is expected of streams on hold.
    recorder.tick(1.5)
    assert of_type(recorder.tick(60.0), MediaTimedOut) == []
    assert recorder.live_sessions == 1


def test_reinvite_beyond_the_stream_cap_or_the_free_ports_is_refused_the_session_goes_on() -> None:
    recorder = make_recorder(rtp_port_pairs=3, max_streams_per_session=4)
    _, ok = answer(recorder)
    too_many = sdp_offer(numbered_streams(6, 35000), "192.0.2.10")
    refused = final(recorder.receive(in_dialog("INVITE", ok, 2, too_many), SBC, 1.0))
    assert refused.code == 488 and "at most 4" in refused.phrase
    more_than_free = sdp_offer(numbered_streams(4, 35000), "192.0.2.10")
    refused = final(recorder.receive(in_dialog("INVITE", ok, 3, more_than_free), SBC, 2.0))
    assert refused.code == 503
    assert recorder.live_sessions == 1 and recorder.ports_available == 1


def test_reinvite_whose_ports_cannot_be_opened_is_refused_and_its_ports_closed() -> None:
    recorder = make_recorder()
    opening, ok = answer(recorder)
    three = sdp_offer(numbered_streams(3, 35000), "192.0.2.10")
    recorder.receive(in_dialog("INVITE", ok, 2, three), SBC, 1.0)
    actions = recorder.streams_failed(opening.session_id, True, 1.1)
    assert of_type(actions, CloseStreams) == [CloseStreams(opening.session_id, ("3",))]
    assert final(actions).code == 503
    assert recorder.live_sessions == 1 and recorder.ports_available == 98


def test_ports_opened_for_a_reinvite_after_the_session_ended_are_closed() -> None:
    recorder = make_recorder()
    opening, ok = answer(recorder)
    three = sdp_offer(numbered_streams(3, 35000), "192.0.2.10")
    recorder.receive(in_dialog("INVITE", ok, 2, three), SBC, 1.0)
    ended = recorder.receive(in_dialog("BYE", ok, 3), SBC, 1.1)
    answered = [(m.code, m.cseq.method) for m in messages(ended)]
    assert answered == [(200, "BYE"), (487, "INVITE")]  # the pending re-INVITE is answered too
    assert of_type(ended, CloseRecording)
    late = recorder.streams_opened(opening.session_id, {"3": 20004}, 1.2)
    assert late == [CloseStreams(opening.session_id, ("3",))]
    assert recorder.ports_available == 100


def test_update_with_metadata_changes_the_roles() -> None:
    recorder = make_recorder(agent_pattern="^sip:4001@")
    opening, ok = answer(recorder)
    assert opening.roles == {"1": Role.CUSTOMER, "2": Role.AGENT}
    swapped = sip_request(
        "UPDATE",
        dialog_headers("UPDATE", call_id=ok.call_id, cseq=2, to_tag=ok.to_address.parameters["tag"])
        + [("Content-Type", "application/rs-metadata+xml")],
        '<?xml version="1.0"?><recording xmlns="urn:ietf:params:xml:ns:recording:1">'
        '<participant participant_id="p9"><nameID aor="sip:4001@cm.example.com"/></participant>'
        '<stream stream_id="s9"><label>1</label></stream>'
        '<participantstreamassoc participant_id="p9"><send>s9</send></participantstreamassoc>'
        "</recording>",
    )
    actions = recorder.receive(swapped, SBC, 1.0)
    assert codes(actions) == [200]
    (updated,) = of_type(actions, RecordingUpdated)
    assert updated.roles["1"] is Role.AGENT and updated.new_channels == ()


def test_no_rtp_for_the_media_timeout_ends_the_session_with_a_bye() -> None:
    recorder = make_recorder(media_timeout_s=5.0)
    opening, _ = answer(recorder)
    recorder.tick(0.5)
    recorder.rtp_received(opening.session_id, "1", rtp(1), ("192.0.2.10", 35000), 3.0)
    assert of_type(recorder.tick(7.0), MediaTimedOut) == []  # 4 s since the last packet
    actions = recorder.tick(8.5)
    (timed_out,) = of_type(actions, MediaTimedOut)
    assert timed_out.silent_s == 5.5
    (bye,) = [m for m in messages(actions) if isinstance(m, Request)]
    assert bye.method == "BYE"
    assert [s.reason for s in of_type(actions, RecordingStopped)] == ["media timeout"]
    assert of_type(actions, CloseRecording) and recorder.live_sessions == 0


def test_tcp_connections_of_live_sessions_are_in_use() -> None:
    recorder = make_recorder()
    tcp = Peer("TCP", ("192.0.2.10", 40001), connection=7)
    invite = plain_invite(
        "tcp-1",
        numbered_streams(2),
        media_address="192.0.2.10",
        via_host="192.0.2.10:5060",
        transport="TCP",
    )
    _, ok = answer(recorder, invite, peer=tcp)
    assert recorder.tcp_connections_in_use() == {7}
    recorder.receive(in_dialog("BYE", ok, 2), tcp, 1.0)
    assert recorder.tcp_connections_in_use() == set()
