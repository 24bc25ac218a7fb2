"""Tests for the sans-IO Twilio Media Streams protocol and its encoders."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callscribe.twilio.protocol import (
    CloseCode,
    Connected,
    DtmfReceived,
    MarkReceived,
    MediaReceived,
    StreamStarted,
    StreamStopped,
    TwilioProtocolError,
    TwilioStreamProtocol,
    TwilioStreamWriter,
    encode_connected,
    encode_dtmf,
    encode_mark,
    encode_media,
    encode_start,
    encode_stop,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA2f1b1f9e0c4d4b7e8f6a5c3d2e1f0a9b"
ACCOUNT = "AC25e16e9a716a4a1786a7c83f58e30482"

FRAME_160 = bytes(range(160))  # 20 ms of mu-law, every byte value distinct enough to spot swaps


# --------------------------------------------------------------------------- helpers


def start_msg(**start_overrides: Any) -> dict[str, Any]:
    start: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound", "outbound"],
        "customParameters": {"caller": "+15550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(start_overrides)
    return {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": STREAM}


def media_msg(
    seq: Any = "2",
    *,
    track: str = "inbound",
    chunk: Any = "1",
    timestamp: Any = "0",
    payload: bytes = FRAME_160,
    stream_sid: str = STREAM,
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": seq,
        "media": {
            "track": track,
            "chunk": chunk,
            "timestamp": timestamp,
            "payload": base64.b64encode(payload).decode(),
        },
        "streamSid": stream_sid,
    }


def dtmf_msg(seq: Any = "2", digit: str = "1") -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": seq,
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def mark_msg(seq: Any = "2", name: str = "greeting-done") -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": seq, "streamSid": STREAM, "mark": {"name": name}}


def stop_msg(seq: Any = "2", call_sid: str = CALL) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": seq,
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": call_sid},
    }


def j(message: Any) -> str:
    return json.dumps(message)


def started(**kwargs: Any) -> TwilioStreamProtocol:
    proto = TwilioStreamProtocol(**kwargs)
    proto.receive(j(start_msg()))
    return proto


def expect_error(
    proto: TwilioStreamProtocol, frame: str | bytes, code: CloseCode, reason_part: str
) -> TwilioProtocolError:
    with pytest.raises(TwilioProtocolError) as info:
        proto.receive(frame)
    err = info.value
    assert err.close_code is code, (err.close_code, err.reason)
    assert reason_part in err.reason, err.reason
    assert_reason_sendable(err)
    return err


def assert_reason_sendable(err: TwilioProtocolError) -> None:
    assert isinstance(err.close_code, CloseCode)
    assert err.reason
    assert len(err.reason.encode("utf-8")) <= 123


# --------------------------------------------------------------------------- round trip


def test_writer_round_trip_full_call() -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    proto = TwilioStreamProtocol()
    inbound = [bytes([i]) * 160 for i in range(3)]
    outbound = [bytes([200 + i]) * 160 for i in range(2)]

    frames = [
        writer.connected(),
        writer.start(tracks=("inbound", "outbound"), custom_parameters={"lang": "en-US"}),
        writer.media("inbound", inbound[0]),
        writer.media("outbound", outbound[0]),
        writer.media("inbound", inbound[1]),
        writer.dtmf("#"),
        writer.media("outbound", outbound[1]),
        writer.media("inbound", inbound[2]),
        writer.mark("prompt-1"),
        writer.stop(),
    ]
    events = [event for frame in frames for event in proto.receive(frame)]

    assert events == [
        Connected(protocol="Call", version="1.0.0"),
        StreamStarted(
            stream_sid=STREAM,
            call_sid=CALL,
            account_sid=ACCOUNT,
            tracks=("inbound", "outbound"),
            custom_parameters={"lang": "en-US"},
            encoding="audio/x-mulaw",
            sample_rate=8000,
            channels=1,
        ),
        MediaReceived(track="inbound", chunk=1, timestamp_ms=0, payload=inbound[0]),
        MediaReceived(track="outbound", chunk=1, timestamp_ms=0, payload=outbound[0]),
        MediaReceived(track="inbound", chunk=2, timestamp_ms=20, payload=inbound[1]),
        DtmfReceived(track="inbound_track", digit="#"),
        MediaReceived(track="outbound", chunk=2, timestamp_ms=20, payload=outbound[1]),
        MediaReceived(track="inbound", chunk=3, timestamp_ms=40, payload=inbound[2]),
        MarkReceived(name="prompt-1"),
        StreamStopped(call_sid=CALL),
    ]
    assert proto.started and proto.stopped and not proto.failed
    assert proto.stream_sid == STREAM and proto.call_sid == CALL
    assert proto.frames_received == len(frames)
    assert proto.sequence_gaps == 0


@given(
    payloads=st.lists(st.binary(min_size=0, max_size=8000), min_size=1, max_size=5),
    track=st.sampled_from(["inbound", "outbound"]),
)
def test_payload_bytes_survive_round_trip(payloads: list[bytes], track: str) -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    proto = TwilioStreamProtocol()
    proto.receive(writer.start())
    for payload in payloads:
        (event,) = proto.receive(writer.media(track, payload))
        assert isinstance(event, MediaReceived)
        assert event.payload == payload


def test_explicit_timestamps_pass_through_writer() -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    proto = TwilioStreamProtocol()
    proto.receive(writer.start(tracks=("inbound",)))
    (event,) = proto.receive(writer.media("inbound", FRAME_160, timestamp_ms=1234))
    assert event == MediaReceived(track="inbound", chunk=1, timestamp_ms=1234, payload=FRAME_160)


def test_encoders_produce_twilio_documented_shapes() -> None:
    # Numbers as strings and the key layout of Twilio's own messages: the
    # simulated client must look like Twilio to anything else that parses it.
    assert json.loads(encode_connected()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "1.0.0",
    }
    assert json.loads(
        encode_start(stream_sid=STREAM, call_sid=CALL, account_sid=ACCOUNT, sequence_number=1)
    ) == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM,
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": STREAM,
            "callSid": CALL,
            "tracks": ["inbound", "outbound"],
            "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert json.loads(
        encode_media(
            stream_sid=STREAM,
            track="outbound",
            chunk=7,
            timestamp_ms=140,
            payload=b"\x00\xff",
            sequence_number=9,
        )
    ) == {
        "event": "media",
        "sequenceNumber": "9",
        "streamSid": STREAM,
        "media": {"track": "outbound", "chunk": "7", "timestamp": "140", "payload": "AP8="},
    }
    assert json.loads(encode_dtmf(stream_sid=STREAM, digit="5", sequence_number=4)) == {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "4",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert json.loads(encode_mark(stream_sid=STREAM, name="x", sequence_number=5)) == {
        "event": "mark",
        "sequenceNumber": "5",
        "streamSid": STREAM,
        "mark": {"name": "x"},
    }
    assert json.loads(
        encode_stop(stream_sid=STREAM, call_sid=CALL, account_sid=ACCOUNT, sequence_number=6)
    ) == {
        "event": "stop",
        "sequenceNumber": "6",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }


def test_writer_numbers_sequence_globally_and_chunks_per_track() -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    assert json.loads(writer.start())["sequenceNumber"] == "1"
    first_in = json.loads(writer.media("inbound", FRAME_160))
    first_out = json.loads(writer.media("outbound", FRAME_160))
    second_in = json.loads(writer.media("inbound", FRAME_160[:80]))
    third_in = json.loads(writer.media("inbound", FRAME_160))
    assert [m["sequenceNumber"] for m in (first_in, first_out, second_in, third_in)] == [
        "2",
        "3",
        "4",
        "5",
    ]
    assert [m["media"]["chunk"] for m in (first_in, first_out, second_in, third_in)] == [
        "1",
        "1",
        "2",
        "3",
    ]
    # timestamps follow the audio actually sent on the track (80 bytes = 10 ms)
    assert [m["media"]["timestamp"] for m in (first_in, second_in, third_in)] == ["0", "20", "30"]
    assert json.loads(writer.dtmf("9"))["sequenceNumber"] == "6"
    assert json.loads(writer.stop())["sequenceNumber"] == "7"
    assert writer.sequence_number == 7


# --------------------------------------------------------------------------- accepted variants


def test_start_without_connected_and_without_optional_fields() -> None:
    proto = TwilioStreamProtocol()
    msg = start_msg()
    del msg["start"]["customParameters"]
    del msg["start"]["tracks"]
    (event,) = proto.receive(j(msg))
    assert isinstance(event, StreamStarted)
    assert event.custom_parameters == {}
    assert event.tracks == ("inbound",)
    # default track list admits inbound media
    assert proto.receive(j(media_msg("2")))[0].track == "inbound"


@pytest.mark.parametrize("where", ["top", "inner"])
def test_start_stream_sid_may_be_in_either_place(where: str) -> None:
    msg = start_msg()
    if where == "top":
        del msg["start"]["streamSid"]
    else:
        del msg["streamSid"]
    proto = TwilioStreamProtocol()
    (event,) = proto.receive(j(msg))
    assert event.stream_sid == STREAM
    assert proto.stream_sid == STREAM


def test_numbers_as_json_integers_are_accepted() -> None:
    proto = TwilioStreamProtocol()
    msg = start_msg()
    msg["sequenceNumber"] = 1
    proto.receive(j(msg))
    (event,) = proto.receive(j(media_msg(2, chunk=1, timestamp=20)))
    assert event == MediaReceived(track="inbound", chunk=1, timestamp_ms=20, payload=FRAME_160)
    assert proto.receive(j(dtmf_msg(3)))[0] == DtmfReceived(track="inbound_track", digit="1")
    assert proto.receive(j(mark_msg(4)))[0] == MarkReceived(name="greeting-done")
    assert proto.receive(j(stop_msg(5)))[0] == StreamStopped(call_sid=CALL)


def test_string_and_int_numbers_can_mix_and_compare_numerically() -> None:
    proto = started()
    proto.receive(j(media_msg("9", timestamp="100")))
    # "10" > "9" numerically although not lexically; 99 < "100" must be caught as backwards
    proto.receive(j(media_msg(10, timestamp=100)))
    expect_error(
        proto,
        j(media_msg("11", timestamp=99)),
        CloseCode.PROTOCOL_ERROR,
        "media.timestamp 99 goes backwards from 100",
    )


def test_payload_at_exact_limit_is_accepted() -> None:
    proto = started(max_payload_bytes=320)
    (event,) = proto.receive(j(media_msg(payload=b"\x7f" * 320)))
    assert len(event.payload) == 320


def test_equal_timestamps_and_independent_tracks_are_fine() -> None:
    proto = started()
    proto.receive(j(media_msg("2", track="inbound", timestamp="40")))
    proto.receive(j(media_msg("3", track="inbound", timestamp="40")))
    # the outbound track has its own clock
    proto.receive(j(media_msg("4", track="outbound", timestamp="0")))
    assert proto.frames_received == 4


# --------------------------------------------------------------------------- malformed frames


def _media_with(**media_overrides: Any) -> dict[str, Any]:
    msg = media_msg()
    for key, value in media_overrides.items():
        if value is _DELETE:
            del msg["media"][key]
        else:
            msg["media"][key] = value
    return msg


_DELETE = object()

MALFORMED_AFTER_START: list[tuple[str, Any, CloseCode, str]] = [
    ("not json", "{event: media}", CloseCode.INVALID_PAYLOAD, "not valid JSON"),
    ("empty text", "", CloseCode.INVALID_PAYLOAD, "not valid JSON"),
    ("json array", "[1, 2]", CloseCode.INVALID_PAYLOAD, "not a JSON object"),
    ("json string", '"media"', CloseCode.INVALID_PAYLOAD, "not a JSON object"),
    ("no event", {"streamSid": STREAM}, CloseCode.INVALID_PAYLOAD, "missing event"),
    ("event not str", {"event": 3}, CloseCode.INVALID_PAYLOAD, "event must be a string"),
    ("unknown event", {"event": "clear"}, CloseCode.INVALID_PAYLOAD, "unknown event 'clear'"),
    (
        "media not object",
        {**media_msg(), "media": "x"},
        CloseCode.INVALID_PAYLOAD,
        "media must be an object",
    ),
    (
        "media missing",
        {k: v for k, v in media_msg().items() if k != "media"},
        CloseCode.INVALID_PAYLOAD,
        "missing media",
    ),
    (
        "no payload",
        _media_with(payload=_DELETE),
        CloseCode.INVALID_PAYLOAD,
        "missing media.payload",
    ),
    (
        "payload not str",
        _media_with(payload=123),
        CloseCode.INVALID_PAYLOAD,
        "media.payload must be a string",
    ),
    (
        "bad base64 chars",
        _media_with(payload="!!!!"),
        CloseCode.INVALID_PAYLOAD,
        "invalid base64 in media.payload",
    ),
    (
        "bad base64 padding",
        _media_with(payload="AAA"),
        CloseCode.INVALID_PAYLOAD,
        "invalid base64 in media.payload",
    ),
    (
        "non-ascii base64",
        _media_with(payload="ÿÿÿÿ"),
        CloseCode.INVALID_PAYLOAD,
        "invalid base64 in media.payload",
    ),
    (
        "embedded newline",
        _media_with(payload="AAAA\nAAAA"),
        CloseCode.INVALID_PAYLOAD,
        "invalid base64 in media.payload",
    ),
    (
        "payload too big",
        media_msg(payload=b"\x00" * 8001),
        CloseCode.INVALID_PAYLOAD,
        "media.payload of 8001 bytes exceeds 8000",
    ),
    (
        "payload far too big",
        _media_with(payload="A" * 12_000),
        CloseCode.INVALID_PAYLOAD,
        "exceeds 8000",
    ),
    (
        "bad track",
        _media_with(track="both_tracks"),
        CloseCode.INVALID_PAYLOAD,
        "invalid media.track 'both_tracks'",
    ),
    ("no track", _media_with(track=_DELETE), CloseCode.INVALID_PAYLOAD, "missing media.track"),
    ("no chunk", _media_with(chunk=_DELETE), CloseCode.INVALID_PAYLOAD, "missing media.chunk"),
    ("negative chunk", _media_with(chunk="-1"), CloseCode.INVALID_PAYLOAD, "media.chunk must be"),
    (
        "negative int chunk",
        _media_with(chunk=-1),
        CloseCode.INVALID_PAYLOAD,
        "media.chunk out of range",
    ),
    ("float chunk", _media_with(chunk=1.0), CloseCode.INVALID_PAYLOAD, "media.chunk must be"),
    ("bool chunk", _media_with(chunk=True), CloseCode.INVALID_PAYLOAD, "media.chunk must be"),
    (
        "unicode digit chunk",
        _media_with(chunk="\u0661"),
        CloseCode.INVALID_PAYLOAD,
        "media.chunk must be",
    ),
    (
        "no timestamp",
        _media_with(timestamp=_DELETE),
        CloseCode.INVALID_PAYLOAD,
        "missing media.timestamp",
    ),
    (
        "text timestamp",
        _media_with(timestamp="soon"),
        CloseCode.INVALID_PAYLOAD,
        "media.timestamp must be",
    ),
    (
        "huge timestamp",
        _media_with(timestamp="9" * 19),
        CloseCode.INVALID_PAYLOAD,
        "media.timestamp out of range",
    ),
    (
        "no sequenceNumber",
        {k: v for k, v in media_msg().items() if k != "sequenceNumber"},
        CloseCode.INVALID_PAYLOAD,
        "missing sequenceNumber",
    ),
    ("null sequenceNumber", media_msg(None), CloseCode.INVALID_PAYLOAD, "missing sequenceNumber"),
    ("text sequenceNumber", media_msg("two"), CloseCode.INVALID_PAYLOAD, "sequenceNumber must be"),
    (
        "no streamSid",
        {k: v for k, v in media_msg().items() if k != "streamSid"},
        CloseCode.INVALID_PAYLOAD,
        "missing streamSid",
    ),
    ("dtmf bad digit", dtmf_msg(digit="x"), CloseCode.INVALID_PAYLOAD, "invalid dtmf.digit 'x'"),
    ("dtmf two digits", dtmf_msg(digit="12"), CloseCode.INVALID_PAYLOAD, "invalid dtmf.digit"),
    (
        "dtmf no digit",
        {**dtmf_msg(), "dtmf": {"track": "inbound_track"}},
        CloseCode.INVALID_PAYLOAD,
        "missing dtmf.digit",
    ),
    (
        "dtmf bad track",
        {**dtmf_msg(), "dtmf": {"track": "left", "digit": "1"}},
        CloseCode.INVALID_PAYLOAD,
        "invalid dtmf.track 'left'",
    ),
    ("mark no name", {**mark_msg(), "mark": {}}, CloseCode.INVALID_PAYLOAD, "missing mark.name"),
    (
        "mark not object",
        {**mark_msg(), "mark": ["x"]},
        CloseCode.INVALID_PAYLOAD,
        "mark must be an object",
    ),
    (
        "stop no stop",
        {k: v for k, v in stop_msg().items() if k != "stop"},
        CloseCode.INVALID_PAYLOAD,
        "missing stop",
    ),
    (
        "stop no callSid",
        {**stop_msg(), "stop": {"accountSid": ACCOUNT}},
        CloseCode.INVALID_PAYLOAD,
        "missing stop.callSid",
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "reason_part"),
    [case[1:] for case in MALFORMED_AFTER_START],
    ids=[case[0] for case in MALFORMED_AFTER_START],
)
def test_malformed_frame_after_start(frame: Any, code: CloseCode, reason_part: str) -> None:
    proto = started()
    before = proto.frames_received
    expect_error(proto, frame if isinstance(frame, str) else j(frame), code, reason_part)
    assert proto.failed
    assert proto.frames_received == before


def _start_with(**overrides: Any) -> dict[str, Any]:
    msg = start_msg()
    for key, value in overrides.items():
        if value is _DELETE:
            del msg["start"][key]
        else:
            msg["start"][key] = value
    return msg


MALFORMED_START: list[tuple[str, Any, CloseCode, str]] = [
    (
        "no start object",
        {"event": "start", "sequenceNumber": "1", "streamSid": STREAM},
        CloseCode.INVALID_PAYLOAD,
        "missing start",
    ),
    (
        "start not object",
        {"event": "start", "sequenceNumber": "1", "start": [], "streamSid": STREAM},
        CloseCode.INVALID_PAYLOAD,
        "start must be an object",
    ),
    (
        "no sequenceNumber",
        {k: v for k, v in start_msg().items() if k != "sequenceNumber"},
        CloseCode.INVALID_PAYLOAD,
        "missing sequenceNumber",
    ),
    (
        "no streamSid anywhere",
        {k: v for k, v in _start_with(streamSid=_DELETE).items() if k != "streamSid"},
        CloseCode.INVALID_PAYLOAD,
        "missing streamSid",
    ),
    (
        "streamSids disagree",
        _start_with(streamSid="MZother"),
        CloseCode.INVALID_PAYLOAD,
        "start.streamSid does not match streamSid",
    ),
    (
        "empty streamSid",
        {**start_msg(), "streamSid": ""},
        CloseCode.INVALID_PAYLOAD,
        "streamSid must not be empty",
    ),
    (
        "no callSid",
        _start_with(callSid=_DELETE),
        CloseCode.INVALID_PAYLOAD,
        "missing start.callSid",
    ),
    (
        "accountSid not str",
        _start_with(accountSid=42),
        CloseCode.INVALID_PAYLOAD,
        "start.accountSid must be a string",
    ),
    (
        "tracks not list",
        _start_with(tracks="inbound"),
        CloseCode.INVALID_PAYLOAD,
        "start.tracks must be a non-empty array",
    ),
    (
        "tracks empty",
        _start_with(tracks=[]),
        CloseCode.INVALID_PAYLOAD,
        "start.tracks must be a non-empty array",
    ),
    (
        "bad track name",
        _start_with(tracks=["inbound_track"]),
        CloseCode.INVALID_PAYLOAD,
        "invalid track 'inbound_track' in start.tracks",
    ),
    (
        "duplicate track",
        _start_with(tracks=["inbound", "inbound"]),
        CloseCode.INVALID_PAYLOAD,
        "duplicate track in start.tracks",
    ),
    (
        "customParameters not object",
        _start_with(customParameters=["a"]),
        CloseCode.INVALID_PAYLOAD,
        "start.customParameters must be an object",
    ),
    (
        "customParameters non-string value",
        _start_with(customParameters={"n": 1}),
        CloseCode.INVALID_PAYLOAD,
        "start.customParameters['n'] must be a string",
    ),
    (
        "no mediaFormat",
        _start_with(mediaFormat=_DELETE),
        CloseCode.INVALID_PAYLOAD,
        "missing start.mediaFormat",
    ),
    (
        "sampleRate text",
        _start_with(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": "fast", "channels": 1}),
        CloseCode.INVALID_PAYLOAD,
        "start.mediaFormat.sampleRate must be",
    ),
    (
        "encoding not str",
        _start_with(mediaFormat={"encoding": 7, "sampleRate": 8000, "channels": 1}),
        CloseCode.INVALID_PAYLOAD,
        "start.mediaFormat.encoding must be a string",
    ),
    # well-formed but not audio we can decode: 1003, see module docstring
    (
        "linear16",
        _start_with(mediaFormat={"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported mediaFormat 'audio/l16' 8000 Hz 1 ch",
    ),
    (
        "16 kHz",
        _start_with(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}),
        CloseCode.UNSUPPORTED_DATA,
        "16000 Hz",
    ),
    (
        "stereo",
        _start_with(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}),
        CloseCode.UNSUPPORTED_DATA,
        "2 ch",
    ),
    (
        "connected without version",
        {"event": "connected", "protocol": "Call"},
        CloseCode.INVALID_PAYLOAD,
        "missing version",
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "reason_part"),
    [case[1:] for case in MALFORMED_START],
    ids=[case[0] for case in MALFORMED_START],
)
def test_malformed_start_or_connected(frame: Any, code: CloseCode, reason_part: str) -> None:
    proto = TwilioStreamProtocol()
    expect_error(proto, j(frame), code, reason_part)
    assert not proto.started
    assert proto.stream_sid is None


@pytest.mark.parametrize(
    "frame",
    [
        b'{"event":"connected","protocol":"Call","version":"1.0.0"}',
        b"\x00\xff",
        bytearray(b"{}"),
        b"",
    ],
)
def test_binary_frames_are_unsupported_data(frame: bytes) -> None:
    expect_error(TwilioStreamProtocol(), frame, CloseCode.UNSUPPORTED_DATA, "binary frame")


def test_oversized_frame_rejected_before_parsing() -> None:
    # Not JSON at all: a size error (not a JSON error) proves the size check runs first.
    expect_error(
        TwilioStreamProtocol(),
        "x" * 20_000,
        CloseCode.MESSAGE_TOO_BIG,
        "frame of 20000 bytes exceeds 16384",
    )


def test_frame_size_is_measured_in_utf8_bytes() -> None:
    proto = TwilioStreamProtocol(max_frame_bytes=1000)
    # 400 characters but 1200 bytes of UTF-8
    expect_error(
        proto, "\u20ac" * 400, CloseCode.MESSAGE_TOO_BIG, "frame of 1200 bytes exceeds 1000"
    )
    # 500 two-byte characters fit exactly
    fits = TwilioStreamProtocol(max_frame_bytes=1000)
    expect_error(fits, "\u00e9" * 500, CloseCode.INVALID_PAYLOAD, "not valid JSON")


def test_frame_at_exact_size_limit_is_accepted() -> None:
    msg = j(media_msg(payload=b"\x00" * 400))  # larger than the start frame
    proto = started(max_frame_bytes=len(msg.encode()))
    assert proto.receive(msg)
    expect_error(
        proto, j(media_msg("3", payload=b"\x00" * 403)), CloseCode.MESSAGE_TOO_BIG, "exceeds"
    )


def test_deeply_nested_json_is_invalid_payload_not_recursion_error() -> None:
    proto = TwilioStreamProtocol(max_frame_bytes=10_000_000)
    expect_error(
        proto, "[" * 1_000_000 + "]" * 1_000_000, CloseCode.INVALID_PAYLOAD, "not valid JSON"
    )


def test_number_with_thousands_of_digits_is_rejected_cheaply() -> None:
    # Python refuses to parse ints above 4300 digits with a bare ValueError
    frame = '{"event":"media","sequenceNumber":' + "9" * 5000 + "}"
    expect_error(started(), frame, CloseCode.INVALID_PAYLOAD, "not valid JSON")
    expect_error(
        started(),
        j(media_msg("9" * 5000)),
        CloseCode.INVALID_PAYLOAD,
        "sequenceNumber must be a non-negative integer",
    )


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (media_msg("2"), "media"),
        (dtmf_msg("2"), "dtmf"),
        (mark_msg("2"), "mark"),
        (stop_msg("2"), "stop"),
    ],
)
def test_frames_before_start(frame: dict[str, Any], kind: str) -> None:
    proto = TwilioStreamProtocol()
    proto.receive(encode_connected())
    expect_error(proto, j(frame), CloseCode.PROTOCOL_ERROR, f"{kind} frame before start")


def test_second_start() -> None:
    proto = started()
    second = start_msg()
    second["sequenceNumber"] = "2"
    expect_error(proto, j(second), CloseCode.PROTOCOL_ERROR, "duplicate start")
    assert proto.stream_sid == STREAM


@pytest.mark.parametrize(
    "frame",
    [j(media_msg("3")), encode_connected(), j(stop_msg("3")), b"\x00", "garbage", j(start_msg())],
)
def test_any_frame_after_stop(frame: str | bytes) -> None:
    proto = started()
    proto.receive(j(stop_msg("2")))
    assert proto.stopped
    expect_error(proto, frame, CloseCode.PROTOCOL_ERROR, "frame after stop")


def test_connected_after_start_and_twice() -> None:
    expect_error(started(), encode_connected(), CloseCode.PROTOCOL_ERROR, "connected after start")
    proto = TwilioStreamProtocol()
    proto.receive(encode_connected())
    expect_error(proto, encode_connected(), CloseCode.PROTOCOL_ERROR, "duplicate connected")


@pytest.mark.parametrize(
    "frame",
    [
        media_msg("2", stream_sid="MZforeign"),
        {**dtmf_msg("2"), "streamSid": "MZforeign"},
        {**mark_msg("2"), "streamSid": "MZforeign"},
        {**stop_msg("2"), "streamSid": "MZforeign"},
    ],
)
def test_foreign_stream_sid(frame: dict[str, Any]) -> None:
    expect_error(
        started(),
        j(frame),
        CloseCode.PROTOCOL_ERROR,
        "streamSid 'MZforeign' does not match started stream",
    )


def test_stop_for_another_call() -> None:
    expect_error(
        started(),
        j(stop_msg("2", call_sid="CAother")),
        CloseCode.PROTOCOL_ERROR,
        "stop.callSid 'CAother' does not match started call",
    )


# --------------------------------------------------------------------------- callSid

# The callSid becomes the call's guid: it names the call in the Store, the API, the webhook
# and file names, so only what the API's guid pattern accepts may pass.
BAD_CALL_SIDS = [
    ("NUL", "CA\x00" + "a" * 30, "'CA\\x00"),
    ("right-to-left override", "CA\u202e" + "a" * 30, "'CA\\u202e"),
    ("path traversal", "../../etc/passwd", "'../"),
    ("slash", "CA12/34", "'CA12/34'"),
    ("trailing newline", "CA" + "0" * 32 + "\n", "'CA"),
    ("leading space", " CA" + "0" * 32, "' CA"),
    ("starts with a dot", ".CA" + "0" * 32, "'.CA"),
    ("too long", "CA" + "a" * 200, "'CAaaa"),
    ("non-ASCII letter", "CA\u00e9" + "0" * 31, "'CA\\xe9"),
]


@pytest.mark.parametrize(
    ("call_sid", "shown"),
    [case[1:] for case in BAD_CALL_SIDS],
    ids=[case[0] for case in BAD_CALL_SIDS],
)
def test_start_refuses_a_call_sid_that_is_no_guid(call_sid: str, shown: str) -> None:
    proto = TwilioStreamProtocol()
    err = expect_error(
        proto, j(start_msg(callSid=call_sid)), CloseCode.INVALID_PAYLOAD, "invalid start.callSid"
    )
    assert shown in err.reason, err.reason
    assert err.reason.isascii() and err.reason.isprintable()
    assert not proto.started and proto.call_sid is None


@pytest.mark.parametrize("call_sid", [CALL, "CAbad", "CA1", "c" + "0" * 127, "CA.x_y:z-1"])
def test_start_accepts_every_call_sid_the_api_accepts_as_a_guid(call_sid: str) -> None:
    proto = TwilioStreamProtocol()
    assert proto.receive(j(start_msg(callSid=call_sid)))[0].call_sid == call_sid  # type: ignore[union-attr]


def test_sequence_number_repeated() -> None:
    proto = started()
    proto.receive(j(media_msg("2", timestamp="0")))
    proto.receive(j(media_msg("3", timestamp="20")))
    expect_error(
        proto,
        j(media_msg("3", timestamp="40")),
        CloseCode.PROTOCOL_ERROR,
        "sequenceNumber 3 repeated",
    )


def test_sequence_number_repeating_the_start() -> None:
    expect_error(started(), j(dtmf_msg("1")), CloseCode.PROTOCOL_ERROR, "sequenceNumber 1 repeated")


def test_sequence_number_backwards() -> None:
    proto = started()
    proto.receive(j(media_msg("5")))
    expect_error(
        proto, j(mark_msg("4")), CloseCode.PROTOCOL_ERROR, "sequenceNumber 4 goes backwards from 5"
    )


def test_media_timestamp_backwards_within_track() -> None:
    proto = started()
    proto.receive(j(media_msg("2", timestamp="60")))
    proto.receive(j(media_msg("3", track="outbound", timestamp="0")))
    expect_error(
        proto,
        j(media_msg("4", timestamp="40")),
        CloseCode.PROTOCOL_ERROR,
        "media.timestamp 40 goes backwards from 60 on inbound",
    )


def test_media_on_track_not_announced() -> None:
    proto = TwilioStreamProtocol()
    proto.receive(j(start_msg(tracks=["inbound"])))
    expect_error(
        proto,
        j(media_msg("2", track="outbound")),
        CloseCode.PROTOCOL_ERROR,
        "media on track outbound not announced in start.tracks",
    )


# --------------------------------------------------------------------------- gaps


def test_forward_gaps_are_counted_not_rejected() -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    proto = TwilioStreamProtocol()
    proto.receive(writer.start())
    proto.receive(writer.media("inbound", FRAME_160))
    writer.skip(3)  # three frames lost
    proto.receive(writer.media("inbound", FRAME_160))
    proto.receive(writer.media("inbound", FRAME_160))
    writer.skip(1)
    proto.receive(writer.stop())
    assert proto.sequence_gaps == 2
    assert proto.frames_lost == 4
    assert proto.stopped and not proto.failed
    assert proto.frames_received == 5


def test_start_sequence_number_sets_the_baseline() -> None:
    proto = TwilioStreamProtocol()
    msg = start_msg()
    msg["sequenceNumber"] = "100"
    proto.receive(j(msg))
    proto.receive(j(media_msg("101")))
    assert proto.sequence_gaps == 0
    assert proto.last_sequence_number == 101


@given(skips=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=30))
def test_gap_count_matches_skips(skips: list[int]) -> None:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    proto = TwilioStreamProtocol()
    proto.receive(writer.start())
    for skip in skips:
        writer.skip(skip)
        proto.receive(writer.media("inbound", FRAME_160))
    assert proto.sequence_gaps == sum(1 for s in skips if s)
    assert proto.frames_lost == sum(skips)


# --------------------------------------------------------------------------- failed state


def test_failed_protocol_stays_failed() -> None:
    proto = started()
    first = expect_error(
        proto, j(media_msg(payload=b"\x00" * 9000)), CloseCode.INVALID_PAYLOAD, "exceeds 8000"
    )
    assert proto.error is first
    received = proto.frames_received
    for frame in (j(media_msg("2")), j(stop_msg("2")), b"\x00", "nonsense"):
        again = expect_error(proto, frame, CloseCode.INVALID_PAYLOAD, "stream already failed")
        assert again.reason == "stream already failed"
    assert proto.frames_received == received
    assert proto.error is first


def test_non_text_non_bytes_input_is_a_programming_error() -> None:
    proto = started()
    with pytest.raises(TypeError):
        proto.receive(123)  # type: ignore[arg-type]
    assert not proto.failed


def test_constructor_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError):
        TwilioStreamProtocol(max_frame_bytes=0)
    with pytest.raises(ValueError):
        TwilioStreamProtocol(max_payload_bytes=-1)


# --------------------------------------------------------------------------- close reasons


def test_reason_echoing_untrusted_values_stays_short_and_ascii() -> None:
    raw_event = json.dumps({"event": "\u00fc" * 2000 + "\x00"}, ensure_ascii=False)
    err = expect_error(
        TwilioStreamProtocol(), raw_event, CloseCode.INVALID_PAYLOAD, "unknown event"
    )
    assert err.reason.isascii()
    raw_media = json.dumps(media_msg("2", stream_sid="\U0001f600" * 2000), ensure_ascii=False)
    err = expect_error(
        started(), raw_media, CloseCode.PROTOCOL_ERROR, "does not match started stream"
    )
    assert err.reason.isascii()


def test_error_constructor_clips_reason_to_websocket_limit() -> None:
    err = TwilioProtocolError(CloseCode.POLICY_VIOLATION, "\u20ac" * 200)
    assert len(err.reason.encode("utf-8")) <= 120
    assert err.close_code is CloseCode.POLICY_VIOLATION
    assert "1008" in str(err)


# --------------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "event",
    "sequenceNumber",
    "streamSid",
    "start",
    "media",
    "dtmf",
    "mark",
    "stop",
    "protocol",
    "version",
    "track",
    "chunk",
    "timestamp",
    "payload",
    "digit",
    "name",
    "callSid",
    "accountSid",
    "tracks",
    "customParameters",
    "mediaFormat",
    "encoding",
    "sampleRate",
    "channels",
]
EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear", ""]
twilioish = st.recursive(
    json_scalars | st.sampled_from(EVENTS) | st.sampled_from([STREAM, CALL, "1", "2", "AAAA"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=20,
)


def _check_receive(proto: TwilioStreamProtocol, frame: str | bytes) -> bool:
    """Feed one frame; only events or TwilioProtocolError are allowed. True if accepted."""
    was_failed = proto.failed
    try:
        events = proto.receive(frame)
    except TwilioProtocolError as err:
        assert_reason_sendable(err)
        if was_failed:
            assert err.reason == "stream already failed"
        assert proto.failed
        return False
    assert not was_failed
    assert events and all(
        isinstance(
            e, (Connected, StreamStarted, MediaReceived, DtmfReceived, MarkReceived, StreamStopped)
        )
        for e in events
    )
    return True


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    _check_receive(TwilioStreamProtocol(), text)
    _check_receive(started(), text)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    proto = started()
    assert not _check_receive(proto, data)
    assert proto.error is not None and proto.error.close_code is CloseCode.UNSUPPORTED_DATA


@FUZZ
@given(messages=st.lists(json_values | twilioish, min_size=1, max_size=6))
def test_fuzz_json_messages(messages: list[Any]) -> None:
    fresh, live = TwilioStreamProtocol(), started()
    for message in messages:
        frame = json.dumps(message)
        _check_receive(fresh, frame)
        _check_receive(live, frame)


def _valid_call() -> list[dict[str, Any]]:
    return [
        {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        start_msg(),
        media_msg("2", timestamp="0"),
        media_msg("3", track="outbound", timestamp="0"),
        dtmf_msg("4"),
        media_msg("5", timestamp="20", chunk="2"),
        mark_msg("6"),
        stop_msg("7"),
    ]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, prefix + (index,))
    return found


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_call(data: st.DataObject) -> None:
    """Real call with one field replaced or removed: only TwilioProtocolError may escape."""
    call = _valid_call()
    index = data.draw(st.integers(min_value=0, max_value=len(call) - 1))
    target = copy.deepcopy(call[index])
    path = data.draw(st.sampled_from(_paths(target)))
    parent = target
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values | twilioish)
    call[index] = target

    proto = TwilioStreamProtocol()
    for message in call:
        _check_receive(proto, json.dumps(message))
