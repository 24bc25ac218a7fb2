"""The Connect demuxer: both directions sample-exact, audio held until its contact is known,
ContactId changes, MimeType, KVS errors, resuming at a fragment without gaps or duplicates,
corrupt fragments, the old single-track format; and the call timeline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.connect.media import (
    AGENT_TRACK,
    CUSTOMER_TRACK,
    AudioDiscarded,
    AudioReceived,
    ConnectMediaDemuxer,
    ContactChanged,
    FragmentCompleted,
    MediaTimeline,
    StreamFailed,
    parse_mime_type,
)
from callscribe.testing.connect_stream import SimulatedFragment, connect_fragments
from callscribe.testing.mkv_writer import error_fragment
from tests.connect_support import (
    CONTACT_ID,
    OTHER_CONTACT_ID,
    fragment_pcm,
    get_media_bytes,
    sample_call_pcm,
    sample_fragments,
    tone_fragments,
)


def audio(outputs: list[object], channel: str) -> np.ndarray:
    chunks = [o.pcm16 for o in outputs if isinstance(o, AudioReceived) and o.channel == channel]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def run(demuxer: ConnectMediaDemuxer, data: bytes, chunk: int = 4096) -> list[object]:
    out: list[object] = []
    for i in range(0, len(data), chunk):
        out += demuxer.feed(data[i : i + chunk])
    return out + demuxer.end_of_body()


def test_sample_call_both_directions_sample_exact_with_producer_times() -> None:
    fragments = sample_fragments()
    demuxer = ConnectMediaDemuxer()
    out = run(demuxer, get_media_bytes(fragments))
    customer, agent = sample_call_pcm()
    assert np.array_equal(audio(out, CUSTOMER_TRACK), customer)
    assert np.array_equal(audio(out, AGENT_TRACK), agent)
    received = [o for o in out if isinstance(o, AudioReceived)]
    assert received[0].time_ms == fragments[0].producer_time_ms
    assert received[-1].fragment_number == fragments[-1].number
    completed = [o for o in out if isinstance(o, FragmentCompleted)]
    assert [c.fragment_number for c in completed] == [f.number for f in fragments]
    assert completed[0].contact_id == CONTACT_ID
    assert completed[0].millis_behind_now == 1000 * len(fragments)
    assert completed[0].producer_timestamp == fragments[0].producer_time_ms / 1000
    assert demuxer.contact_id == CONTACT_ID


def test_audio_is_held_until_the_fragment_names_its_contact() -> None:
    (fragment,) = tone_fragments(1.0)
    data = fragment.encode((0, fragment.number))
    before_contact = data.index(b"ContactId") - 20  # inside the Tags element that names it
    demuxer = ConnectMediaDemuxer()
    assert not [o for o in demuxer.feed(data[:before_contact]) if isinstance(o, AudioReceived)]
    rest = demuxer.feed(data[before_contact:])
    assert np.array_equal(audio(rest, CUSTOMER_TRACK), fragment_pcm([fragment], 0))
    assert np.array_equal(audio(rest, AGENT_TRACK), fragment_pcm([fragment], 1))


def test_a_new_contact_on_the_stream_stops_it_and_none_of_its_audio_passes() -> None:
    first = tone_fragments(2.0, seed=1)
    second = tone_fragments(
        2.0, contact_id=OTHER_CONTACT_ID, seed=2, first_index=2, start_time_ms=first[-1].end_ms
    )
    demuxer = ConnectMediaDemuxer()
    out = run(demuxer, get_media_bytes(first + second))
    assert np.array_equal(audio(out, CUSTOMER_TRACK), fragment_pcm(first, 0))
    assert np.array_equal(audio(out, AGENT_TRACK), fragment_pcm(first, 1))
    (changed,) = [o for o in out if isinstance(o, ContactChanged)]
    assert (changed.expected, changed.found, changed.fragment_number) == (
        CONTACT_ID,
        OTHER_CONTACT_ID,
        second[0].number,
    )
    assert demuxer.finished
    assert demuxer.feed(get_media_bytes(first)) == []


def test_an_expected_contact_is_checked_from_the_first_fragment() -> None:
    demuxer = ConnectMediaDemuxer(expected_contact_id=OTHER_CONTACT_ID)
    out = run(demuxer, get_media_bytes(tone_fragments(1.0)))
    assert not [o for o in out if isinstance(o, AudioReceived)]
    assert [type(o) for o in out] == [ContactChanged]


@pytest.mark.parametrize(
    "mime,ok",
    [
        ("audio/L16;rate=8000;channels=1;", True),
        ("audio/L16", True),
        ("audio/l16; rate=8000; channels=1", True),
        ("audio/L16;rate=16000;channels=1;", False),
        ("audio/L16;rate=8000;channels=2;", False),
        ("audio/aac", False),
        ("audio/L16;rate=fast", False),
    ],
)
def test_the_mime_type_decides_what_the_blocks_are(mime: str, ok: bool) -> None:
    fragments = [
        SimulatedFragment(**{**f.__dict__, "mime_type": mime}) for f in tone_fragments(1.0)
    ]
    out = run(ConnectMediaDemuxer(), get_media_bytes(fragments))
    if ok:
        assert np.array_equal(audio(out, CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    else:
        assert not [o for o in out if isinstance(o, AudioReceived)]
        (failed,) = [o for o in out if isinstance(o, StreamFailed)]
        assert "MimeType" in failed.reason


def test_parse_mime_type() -> None:
    assert parse_mime_type("audio/L16;rate=8000;channels=1;").rate == 8000
    assert parse_mime_type("audio/L16").channels == 1
    with pytest.raises(ValueError):
        parse_mime_type("video/h264")


def test_a_kvs_error_in_the_stream_stops_it() -> None:
    fragments = tone_fragments(1.0)
    data = get_media_bytes(fragments) + error_fragment(
        4500, "Access denied for the stream's KMS key"
    )
    demuxer = ConnectMediaDemuxer()
    out = run(demuxer, data)
    assert np.array_equal(audio(out, CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    (failed,) = [o for o in out if isinstance(o, StreamFailed)]
    assert failed.error_code == "4500"
    assert "KMS key" in failed.reason
    assert demuxer.finished


def test_old_single_track_format_is_the_customer() -> None:
    customer, _ = sample_call_pcm()
    fragments = connect_fragments(customer[:16000], None, contact_id=CONTACT_ID, legacy=True)
    out = run(ConnectMediaDemuxer(), get_media_bytes(fragments))
    assert np.array_equal(audio(out, CUSTOMER_TRACK), customer[:16000])
    assert len(audio(out, AGENT_TRACK)) == 0


def test_a_stream_without_contact_tags_releases_audio_at_the_getmedia_trailer() -> None:
    customer, agent = sample_call_pcm()
    fragments = connect_fragments(customer[:20000], agent[:20000], contact_id=None)
    fragments = [SimulatedFragment(**{**f.__dict__, "mime_type": None}) for f in fragments]
    (first,) = fragments[:1]
    data = first.encode((5, first.number))
    trailer_at = data.index(b"AWS_KINESISVIDEO_MILLIS_BEHIND_NOW")
    demuxer = ConnectMediaDemuxer()
    assert not [o for o in demuxer.feed(data[:trailer_at]) if isinstance(o, AudioReceived)]
    rest = demuxer.feed(data[trailer_at:])
    assert np.array_equal(audio(rest, CUSTOMER_TRACK), customer[:8000])
    (completed,) = [o for o in rest if isinstance(o, FragmentCompleted)]
    assert completed.millis_behind_now == 5


def reconnect_at(demuxer: ConnectMediaDemuxer, fragments: list[SimulatedFragment]) -> bytes:
    """What GetMedia answers to FRAGMENT_NUMBER = the demuxer's resume fragment."""
    demuxer.new_body()
    number = demuxer.resume_fragment
    start = 0 if number is None else [f.number for f in fragments].index(number)
    return get_media_bytes(fragments[start:])


def test_resuming_at_the_last_fragment_after_a_drop_anywhere_loses_and_repeats_nothing() -> None:
    fragments = tone_fragments(3.0, fragment_ms=500, block_ms=64)
    whole = get_media_bytes(fragments)
    expected = (fragment_pcm(fragments, 0), fragment_pcm(fragments, 1))
    for cut in range(0, len(whole), 977):
        demuxer = ConnectMediaDemuxer()
        out = demuxer.feed(whole[:cut]) + demuxer.end_of_body()
        out += run(demuxer, reconnect_at(demuxer, fragments))
        assert np.array_equal(audio(out, CUSTOMER_TRACK), expected[0]), cut
        assert np.array_equal(audio(out, AGENT_TRACK), expected[1]), cut


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_several_drops_in_a_row_still_deliver_every_sample_once(drops: list[float]) -> None:
    fragments = tone_fragments(2.0, fragment_ms=250, block_ms=64, seed=7)
    expected = (fragment_pcm(fragments, 0), fragment_pcm(fragments, 1))
    demuxer = ConnectMediaDemuxer()
    out: list[object] = []
    body = get_media_bytes(fragments)
    for fraction in drops:
        out += demuxer.feed(body[: int(len(body) * fraction)]) + demuxer.end_of_body()
        body = reconnect_at(demuxer, fragments)
    out += run(demuxer, body)
    assert np.array_equal(audio(out, CUSTOMER_TRACK), expected[0])
    assert np.array_equal(audio(out, AGENT_TRACK), expected[1])


def test_a_fragment_sent_again_after_it_completed_is_dropped() -> None:
    fragments = tone_fragments(2.0)
    demuxer = ConnectMediaDemuxer()
    out = run(demuxer, get_media_bytes(fragments))
    demuxer.new_body()
    again = run(demuxer, get_media_bytes(fragments))
    assert not [o for o in again if isinstance(o, AudioReceived)]
    assert np.array_equal(audio(out, CUSTOMER_TRACK), fragment_pcm(fragments, 0))


def test_a_corrupt_fragment_is_reported_and_the_rest_delivered() -> None:
    fragments = tone_fragments(3.0)
    encoded = [f.encode((0, f.number)) for f in fragments]
    broken = bytearray(encoded[1])
    first_block = broken.index(b"\xa7\x81\x00", broken.index(b"\x1f\x43\xb6\x75")) + 3
    broken[first_block : first_block + 3] = b"\x00" * 3  # no element header starts with 0x00
    out = run(ConnectMediaDemuxer(), encoded[0] + bytes(broken) + encoded[2])
    kept = [fragments[0], fragments[2]]
    assert np.array_equal(audio(out, CUSTOMER_TRACK), fragment_pcm(kept, 0))
    (discarded,) = [o for o in out if isinstance(o, AudioDiscarded)]
    assert discarded.fragment_number == fragments[1].number


def test_timeline_keeps_blocks_contiguous_and_places_gaps() -> None:
    timeline = MediaTimeline(tolerance_ms=40)
    assert timeline.place(CUSTOMER_TRACK, 1000.0, 512) == 0
    # The agent's first block 3 ms later still lines up with the call's start.
    assert timeline.place(AGENT_TRACK, 1003.0, 512) == 24
    # Millisecond rounding (64 ms of audio stamped 63 or 65 ms later) does not open gaps.
    assert timeline.place(CUSTOMER_TRACK, 1063.0, 512) == 512
    assert timeline.place(CUSTOMER_TRACK, 1129.0, 512) == 1024
    # Half a second of lost audio is a gap at its true place.
    assert timeline.place(CUSTOMER_TRACK, 1692.0, 512) == 692 * 8
    assert timeline.place(CUSTOMER_TRACK, 0.0, 10) == 692 * 8 + 512  # no going back in time


@pytest.mark.parametrize(
    "name", ["output_get_media.mkv", "output_get_media_sparse_fragments.mkv", "test_mixed_tags.mkv"]
)
def test_real_getmedia_output_gives_its_fragments_and_no_audio_from_video(name: str) -> None:
    from tests.connect_support import kvs_fixture
    from tests.test_connect_mkv import EXPECTED

    out = run(ConnectMediaDemuxer(), kvs_fixture(name), chunk=1500)
    assert not [o for o in out if isinstance(o, AudioReceived)]  # H.264 is not a Connect track
    completed = [o for o in out if isinstance(o, FragmentCompleted)]
    expected = EXPECTED[name]
    assert [(c.fragment_number, c.millis_behind_now) for c in completed][: len(expected)] == [
        (number, behind) for number, _, _, behind in expected
    ]
    assert completed[0].server_timestamp == float(expected[0][1])
    assert completed[0].continuation_token == expected[0][0]
