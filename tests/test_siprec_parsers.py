"""The SIPREC parsers without sockets: SIP messages and TCP framing, SDP and the answer,
RFC 7865 metadata in both namespaces, the multipart body, call ids (UCID, Cisco-Guid) and
stream roles, on Avaya-, Cisco- and Ribbon-shaped offers."""

from __future__ import annotations

import base64

import pytest

from callscribe.model import Role
from callscribe.siprec.callid import (
    CallIdConfigError,
    cisco_guid,
    decimal_ucid,
    parse_sources,
    resolve_call_guid,
    ucid_from_user_to_user,
)
from callscribe.siprec.message import (
    KeepAlive,
    SipFramingError,
    SipParseError,
    SipStreamFramer,
    build_response,
    parse_message,
    response_destination,
)
from callscribe.siprec.metadata import MetadataParseError, parse_metadata
from callscribe.siprec.offer import OfferError, parse_body
from callscribe.siprec.roles import RoleConfigError, RoleRules, assign_roles
from callscribe.siprec.sdp import (
    G729,
    PCMA,
    PCMU,
    SdpParseError,
    StreamAnswer,
    accepts,
    build_answer,
    parse_sdp,
)
from tests.siprec_support import (
    avaya_invite,
    cisco_invite,
    dialog_headers,
    draft_metadata,
    rfc7865_metadata,
    ribbon_invite,
    sip_request,
)

# SIP messages ------------------------------------------------------------------------------


def test_avaya_invite_parses_with_multipart_offer() -> None:
    request = parse_message(avaya_invite())
    assert request.method == "INVITE"
    assert request.cseq.sequence == 1 and request.cseq.method == "INVITE"
    assert request.via[0].parameters["branch"].startswith("z9hG4bK")
    assert "siprec" in request.require
    offer = parse_body(request.headers["Content-Type"], request.body)
    assert offer.sdp is not None and offer.metadata is not None
    assert [m.label for m in offer.sdp.media] == ["1", "2"]
    assert all(m.direction == "sendonly" for m in offer.sdp.media)
    assert offer.metadata.namespace == "urn:ietf:params:xml:ns:recording:1"
    assert offer.metadata.sender_of_label("2").aors == ["sip:4001@cm.example.com"]


def test_cisco_invite_compact_headers_draft_metadata_g729() -> None:
    request = parse_message(cisco_invite())
    # Compact forms (v, f, t, i, m, c) are expanded.
    assert request.call_id == "C2B1@192.0.2.20"
    assert request.headers.get("Content-Type").startswith("multipart/mixed")
    assert str(request.contact[0].uri) == "sip:192.0.2.20:5060"
    offer = parse_body(request.headers["Content-Type"], request.body)
    assert offer.sdp is not None and offer.metadata is not None
    assert offer.metadata.namespace == "urn:ietf:params:xml:ns:recording"
    assert offer.sdp.media[0].choose_codec() == (18, G729)
    assert offer.metadata.sender_of_label("1").aors == ["sip:8005550199@192.0.2.21"]
    assert offer.metadata.session_ids == ["sess-1"]


def test_ribbon_invite_folded_content_type_and_pcma() -> None:
    request = parse_message(ribbon_invite())
    # The folded Content-Type line is unfolded.
    assert 'boundary="----=_Part_0_1234.5678"' in request.headers["Content-Type"]
    offer = parse_body(request.headers["Content-Type"], request.body)
    assert offer.sdp is not None and offer.metadata is not None
    assert [m.label for m in offer.sdp.media] == ["10", "11"]
    assert offer.sdp.media[1].choose_codec() == (8, PCMA)
    assert offer.metadata.sender_of_label("10").names == ["Jane (agent)"]


@pytest.mark.parametrize(
    ("data", "reason", "answerable"),
    [
        (b"", "empty message", False),
        (b"HELLO WORLD\r\n\r\n", "not a SIP request or status line", False),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x", "no blank line after the headers", False),
        (
            sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c1")[:-1]),
            "missing CSeq header",
            False,
        ),
        (
            sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c1")).replace(
                b"Max-Forwards: 70", b"Max-Forwards 70 (no colon)"
            ),
            "malformed header line",
            True,
        ),
        (
            sip_request(
                "OPTIONS", [*dialog_headers("OPTIONS", call_id="c1")[:-1], ("CSeq", "x OPTIONS")]
            ),
            "malformed CSeq header",
            True,
        ),
        (
            sip_request(
                "OPTIONS", [*dialog_headers("OPTIONS", call_id="c1")[:-1], ("CSeq", "1 INVITE")]
            ),
            "CSeq method INVITE does not match OPTIONS",
            True,
        ),
        (
            sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c1"), uri="mailto:srs@x"),
            "malformed Request-URI",
            True,
        ),
        (
            sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c1")).replace(
                b"Content-Length: 0", b"Content-Length: 40"
            ),
            "body shorter than Content-Length 40",
            True,
        ),
        (
            "OPTIONS sip:a@b SIP/2.0\r\nVia: caf\xe9\r\n\r\n".encode("latin-1"),
            "header bytes are not UTF-8",
            False,
        ),
    ],
)
def test_malformed_messages_raise_typed_errors(data: bytes, reason: str, answerable: bool) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert reason in caught.value.reason
    assert (caught.value.request is not None) is answerable


def test_datagram_padding_beyond_content_length_is_cut() -> None:
    data = sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c1")) + b"\x00\x00junk"
    assert parse_message(data).body == b""


def test_response_copies_vias_and_stamps_received_and_rport() -> None:
    headers = dialog_headers("OPTIONS", call_id="c9", via_host="10.9.9.9:5062")
    headers.insert(1, ("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy"))
    request = parse_message(sip_request("OPTIONS", headers))
    data = build_response(request, 200, "OK", source=("198.51.100.7", 40000), to_tag="t1")
    response = parse_message(data)
    vias = response.headers.getlist("Via")
    assert vias[0].endswith(";rport=40000;received=198.51.100.7")
    assert vias[1] == "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy"
    assert response.headers["To"].endswith(";tag=t1")
    assert response.headers["CSeq"] == "1 OPTIONS"
    # rport asked for: the answer goes back to the source port, not the Via port.
    assert response_destination(request, ("198.51.100.7", 40000)) == ("198.51.100.7", 40000)


def test_response_destination_without_rport_uses_via_port() -> None:
    headers = dialog_headers("OPTIONS", call_id="c9", via_host="10.9.9.9:5062")
    headers[0] = ("Via", "SIP/2.0/UDP 10.9.9.9:5062;branch=z9hG4bKabc")
    request = parse_message(sip_request("OPTIONS", headers))
    assert response_destination(request, ("10.9.9.9", 40000)) == ("10.9.9.9", 5062)


def test_stream_framer_splits_by_content_length_and_answers_pings() -> None:
    first = avaya_invite()
    second = sip_request("OPTIONS", dialog_headers("OPTIONS", call_id="c2"))
    stream = b"\r\n\r\n" + first + b"\r\n" + second
    framer = SipStreamFramer()
    out: list[object] = []
    for i in range(0, len(stream), 7):  # arbitrary TCP segmentation
        out += framer.feed(stream[i : i + 7])
    assert out[0] == KeepAlive()
    assert out[1:] == [first, second]


def test_stream_framer_rejects_garbage_lengths() -> None:
    with pytest.raises(SipFramingError):
        SipStreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -5\r\n\r\n")
    with pytest.raises(SipFramingError):
        SipStreamFramer().feed(b"X" * 40_000)


# SDP --------------------------------------------------------------------------------------


def test_sdp_answer_is_recvonly_with_chosen_codec_and_our_ports() -> None:
    offer = parse_sdp(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 9 18 0\r\na=rtpmap:18 G729/8000\r\na=label:1\r\na=sendonly\r\n"
        b"m=audio 4002 RTP/AVP 96 8\r\na=rtpmap:96 opus/48000/2\r\na=label:2\r\na=rtcp-mux\r\n"
        b"m=audio 4004 RTP/SAVP 0\r\na=label:3\r\na=sendonly\r\n"
        b"m=video 4006 RTP/AVP 99\r\na=label:4\r\n"
    )
    # G.722 (9) and opus are not decoded here: the first listed format we take wins.
    assert offer.media[0].choose_codec() == (18, G729)
    assert offer.media[1].choose_codec() == (8, PCMA)
    assert [accepts(m) for m in offer.media] == [True, True, False, False]
    answer = build_answer(
        offer,
        [
            StreamAnswer(20000, 18, G729),
            StreamAnswer(20002, 8, PCMA),
            StreamAnswer(0),
            StreamAnswer(0),
        ],
        address="192.0.2.50",
        session_id="7",
        version=1,
    ).decode()
    answered = parse_sdp(answer.encode())
    assert [m.port for m in answered.media] == [20000, 20002, 0, 0]
    assert answered.media[0].formats == ["18"] and answered.media[0].direction == "recvonly"
    assert "a=fmtp:18 annexb=no" in answer
    # sendrecv offered (no direction line): a recorder still only receives.
    assert answered.media[1].direction == "recvonly" and answered.media[1].rtcp_mux
    assert [m.label for m in answered.media] == ["1", "2", "3", "4"]
    assert answered.connection_address == "192.0.2.50"


def test_sdp_inactive_offer_is_answered_inactive() -> None:
    offer = parse_sdp(
        b"v=0\no=- 1 2 IN IP4 h\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\na=inactive\n"
        b"m=audio 4000 RTP/AVP 0\na=label:1\n"
    )
    answer = build_answer(
        offer, [StreamAnswer(20000, 0, PCMU)], address="h", session_id="1", version=2
    )
    assert b"a=inactive" in answer


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"v=1\r\n",
        b"v=0\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n",
        b"v=0\r\nno equals sign\r\n",
        b"v=0\r\ns=only\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:x\r\n",
        b"\xff\xfe",
    ],
)
def test_malformed_sdp_raises_typed_error(data: bytes) -> None:
    with pytest.raises(SdpParseError):
        parse_sdp(data)


# Metadata -------------------------------------------------------------------------------------


def test_metadata_rfc7865_with_vendor_extension() -> None:
    xml = rfc7865_metadata(
        [("sip:+15551230000@pstn", "Ann", "1"), ("sip:4001@pbx", "Bob", "2")],
        vendor_extension='<ext:thing xmlns:ext="urn:vendor:x"><ext:participant participant_id="ghost"/></ext:thing>',
    )
    metadata = parse_metadata(xml.encode())
    assert set(metadata.participants) == {"p0", "p1"}  # the vendor's look-alike is ignored
    assert metadata.sender_of_label("1").names == ["Ann"]
    assert metadata.streams["s1"].label == "2"
    assert metadata.data_mode == "complete"


def test_metadata_draft_namespace_and_rs_metadata_type() -> None:
    xml = draft_metadata([("sip:a@x", "A", "7"), ("sip:b@y", "B", "8")])
    offer = parse_body(
        "multipart/mixed;boundary=b",
        (
            "--b\r\nContent-Type: application/sdp\r\n\r\n"
            "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
            "m=audio 5000 RTP/AVP 0\r\na=label:7\r\nm=audio 5002 RTP/AVP 0\r\na=label:8\r\n"
            "--b\r\nContent-Type: application/rs-metadata\r\n"
            "Content-Disposition: recording-session\r\n\r\n" + xml + "\r\n--b--\r\n"
        ).encode(),
    )
    assert offer.metadata is not None
    assert offer.metadata.sender_of_label("8").aors == ["sip:b@y"]


def test_metadata_partial_update_merges() -> None:
    snapshot = parse_metadata(
        rfc7865_metadata([("sip:c@x", "C", "1"), ("sip:agent1@pbx", "Agent 1", "2")]).encode()
    )
    update = parse_metadata(
        b'<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>partial</datamode>'
        b'<participant participant_id="p2"><nameID aor="sip:agent2@pbx"/></participant>'
        b'<stream stream_id="s2"><label>3</label></stream>'
        b'<participantstreamassoc participant_id="p2"><send>s2</send></participantstreamassoc>'
        b"</recording>"
    )
    merged = snapshot.merged_with(update)
    assert merged.sender_of_label("3").aors == ["sip:agent2@pbx"]
    assert merged.sender_of_label("1").aors == ["sip:c@x"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<recording",
        b"<other xmlns='urn:ietf:params:xml:ns:recording:1'/>",
        b"<recording xmlns='urn:example'/>",
        # An encoding Python does not know (found by the fuzzer).
        b'<?xml version="1.0" encoding="klingon"?><recording/>',
        # Entity expansion (billion laughs) and external entities are refused, not expanded.
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'>&b;</recording>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'>&x;</recording>",
    ],
)
def test_malformed_or_hostile_metadata_raises_typed_error(data: bytes) -> None:
    with pytest.raises(MetadataParseError):
        parse_metadata(data)


def test_offer_body_errors_carry_sip_status() -> None:
    with pytest.raises(OfferError) as unsupported:
        parse_body("text/plain", b"hello")
    assert unsupported.value.status == 415
    with pytest.raises(OfferError) as no_boundary:
        parse_body("multipart/mixed", b"--x\r\n\r\n--x--")
    assert no_boundary.value.status == 400
    with pytest.raises(OfferError) as bad_xml:
        parse_body("application/rs-metadata+xml", b"<recording")
    assert bad_xml.value.status == 400
    empty = parse_body(None, b"")
    assert empty.sdp is None and empty.metadata is None


# Call ids ---------------------------------------------------------------------------------


def test_avaya_ucid_hex_to_decimal() -> None:
    # Node 2, sequence 54239, timestamp 1662063156: the API contract's example guid.
    assert ucid_from_user_to_user("00FA080002D3DF63111234;encoding=hex") == "00002542391662063156"
    # Node 25 (0x0019), sequence 16 (0x0010), timestamp 0x38F725B3.
    assert ucid_from_user_to_user("00FA080019001038F725B3") == "00025000160955721139"
    # Without the protocol discriminator, quoted, after another shared-UUI element.
    assert ucid_from_user_to_user('"FA080019001038F725B3"') == "00025000160955721139"
    assert ucid_from_user_to_user("00C8020102FA080019001038F725B3") == "00025000160955721139"
    assert decimal_ucid(bytes.fromhex("FFFFFFFFFFFFFFFF")) == "65535655354294967295"
    for value in ("", "zz", "00C80201", "00FA04DEADBEEF", "123"):
        assert ucid_from_user_to_user(value) is None


def test_cisco_guid_forms() -> None:
    decimal = "0867617078-0032318833-2221801472-0002236962"
    assert cisco_guid(decimal) == decimal
    # The same GUID in hex (the form some CUBE releases log): four 32-bit numbers.
    assert cisco_guid("33B6C936-01ED2571-846E0000-00222222") == decimal
    assert cisco_guid("33b6c93601ed2571846e000000222222") == decimal
    assert cisco_guid("not-a-guid") is None


def test_call_id_sources_in_order() -> None:
    request = parse_message(avaya_invite())
    headers = {name.lower(): request.headers[name] for name in request.headers.keys()}
    offer = parse_body(request.headers["Content-Type"], request.body)
    avaya_first = parse_sources("user-to-user,cisco-guid,metadata-session,call-id")
    assert resolve_call_guid(avaya_first, headers, offer.metadata)[0] == "00002542391662063156"
    session_first = parse_sources("metadata-session")
    expected = "855a5ded-8420-456d-a70f-6da1eeaeb425"
    assert base64.b64decode("hVpd7YQgRW2nD22h7q60JQ==").hex() == expected.replace("-", "")
    assert resolve_call_guid(session_first, headers, offer.metadata)[0] == expected
    assert resolve_call_guid(parse_sources("call-id"), headers, None)[0] == "avaya-1_192.0.2.10"
    ribbon = parse_message(ribbon_invite())
    ribbon_headers = {name.lower(): ribbon.headers[name] for name in ribbon.headers.keys()}
    assert resolve_call_guid(parse_sources("cisco-guid,header:X-UCID"), ribbon_headers, None) == (
        "RBBN-20240301-000123",
        parse_sources("header:X-UCID")[0],
    )
    assert resolve_call_guid(parse_sources("cisco-guid"), ribbon_headers, None) is None
    with pytest.raises(CallIdConfigError):
        parse_sources("carrier-pigeon")


# Roles ------------------------------------------------------------------------------------


def test_roles_by_metadata_pattern_then_label_then_order() -> None:
    ribbon = parse_message(ribbon_invite())
    offer = parse_body(ribbon.headers["Content-Type"], ribbon.body)
    labels = ["10", "11"]
    # Ribbon lists the agent first: SDP order alone would get it wrong…
    assert assign_roles(RoleRules(), labels, offer.metadata) == {
        "10": Role.CUSTOMER,
        "11": Role.AGENT,
    }
    # …a pattern on the agent's AOR decides both streams.
    by_agent = RoleRules.from_settings(r"@cc\.example\.com$", None, "", "customer")
    assert assign_roles(by_agent, labels, offer.metadata) == {"10": Role.AGENT, "11": Role.CUSTOMER}
    by_customer = RoleRules.from_settings(None, r"^tel:\+", "", "customer")
    assert assign_roles(by_customer, labels, offer.metadata) == {
        "10": Role.AGENT,
        "11": Role.CUSTOMER,
    }
    by_label = RoleRules.from_settings(None, None, "10=agent,11=customer", "customer")
    assert assign_roles(by_label, labels, None) == {"10": Role.AGENT, "11": Role.CUSTOMER}
    agent_first = RoleRules.from_settings(None, None, "", "agent")
    assert assign_roles(agent_first, ["1", "2", "3"], None) == {"1": Role.AGENT, "2": Role.CUSTOMER}
    with pytest.raises(RoleConfigError):
        RoleRules.from_settings("(", None, "", "customer")
    with pytest.raises(RoleConfigError):
        RoleRules.from_settings(None, None, "1=boss", "customer")
