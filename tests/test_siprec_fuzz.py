"""Fuzzing the SIPREC parsers with hypothesis: random bytes and mutations of real-shaped
messages. Each parser either returns or raises its own typed error; the UAS and the RTP
receiver never raise at all."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callscribe.siprec.message import SipFramingError, SipParseError, SipStreamFramer, parse_message
from callscribe.siprec.metadata import MetadataParseError, parse_metadata
from callscribe.siprec.offer import OfferError, parse_body
from callscribe.siprec.rtp import CallClock, RtpStreamReceiver
from callscribe.siprec.sdp import G729, PCMA, PCMU, SdpParseError, parse_sdp
from callscribe.siprec.uas import Peer, RecordingServerUas
from tests.siprec_support import (
    avaya_invite,
    cisco_invite,
    draft_metadata,
    rfc7865_metadata,
    ribbon_invite,
)

SAMPLES = [avaya_invite(), cisco_invite(), ribbon_invite()]
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 18 0 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=label:1\r\na=sendonly\r\n"
    b"m=audio 4002 RTP/AVP 8\r\na=label:2\r\na=sendonly\r\n"
)
METADATA = [
    rfc7865_metadata([("sip:a@x", "A", "1"), ("sip:b@y", "B", "2")]).encode(),
    draft_metadata([("sip:a@x", "A", "1"), ("sip:b@y", "B", "2")]).encode(),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few random edits: bytes replaced, deleted, inserted, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "duplicate"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "replace":
            data[position : position + len(chunk)] = chunk
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        elif action == "insert":
            data[position:position] = chunk
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = data[position : position + draw(st.integers(1, 60))]
    return bytes(data)


any_bytes = st.binary(max_size=2048)


@FUZZ
@given(st.one_of(any_bytes, mutated(SAMPLES)))
def test_sip_parser_raises_only_its_own_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert exc.reason and len(exc.reason) < 300
        return
    assert message.headers is not None


@FUZZ
@given(st.one_of(any_bytes, mutated(SAMPLES)), st.lists(st.integers(1, 500), max_size=20))
def test_stream_framer_raises_only_its_own_error(data: bytes, cuts: list[int]) -> None:
    framer = SipStreamFramer()
    position = 0
    try:
        for cut in [*cuts, len(data)]:
            framer.feed(data[position : position + cut])
            position += cut
    except SipFramingError:
        pass


@FUZZ
@given(st.one_of(any_bytes, mutated([SDP])))
def test_sdp_parser_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(SdpParseError):
        parse_sdp(data)


@FUZZ
@given(st.one_of(any_bytes, mutated(METADATA)))
def test_metadata_parser_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(MetadataParseError):
        parse_metadata(data)


@FUZZ
@given(
    st.one_of(
        st.none(),
        st.text(max_size=80),
        st.sampled_from(
            [
                "multipart/mixed;boundary=unique-boundary-1",
                'multipart/mixed; boundary="x"',
                "application/sdp",
                "application/rs-metadata+xml",
                "multipart/mixed",
            ]
        ),
    ),
    st.one_of(any_bytes, mutated([s.partition(b"\r\n\r\n")[2] for s in SAMPLES])),
)
def test_body_parser_raises_only_its_own_error(content_type: str | None, body: bytes) -> None:
    try:
        parse_body(content_type, body)
    except OfferError as exc:
        assert exc.status in (400, 415)


@FUZZ
@given(st.lists(st.one_of(any_bytes, mutated(SAMPLES)), min_size=1, max_size=5), st.booleans())
def test_uas_never_raises(messages: list[bytes], tcp: bool) -> None:
    uas = RecordingServerUas(local_port=5070)
    peer = Peer("TCP", ("192.0.2.9", 4000), 1) if tcp else Peer("UDP", ("192.0.2.9", 5060))
    for index, data in enumerate(messages):
        uas.receive(data, peer, float(index))
        uas.tick(float(index) + 0.6)
    uas.tick(100.0)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_rtp_receiver_never_raises(datagrams: list[bytes]) -> None:
    rx = RtpStreamReceiver({0: PCMU, 8: PCMA, 18: G729}, CallClock(), depth=2)
    for index, data in enumerate(datagrams):
        # Valid RTP headers with random payloads too, not only noise.
        rx.receive(data, float(index))
        if len(data) > 12:
            rx.receive(b"\x80" + bytes([(0, 8, 18)[data[0] % 3]]) + data[2:], float(index))
        rx.release_stale(float(index) + 0.5)
    rx.drain()
