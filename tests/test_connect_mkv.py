"""The sans-IO MKV reader on real GetMedia output (every fixture), on Connect-shaped streams made
by the writer, split at byte boundaries, truncated, corrupted and fuzzed; ffprobe is the
independent check."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callscribe.connect import mkv
from callscribe.connect.mkv import (
    BlockFrames,
    Corrupted,
    DocumentEnded,
    DocumentStarted,
    MkvStreamParser,
    TagsParsed,
    TracksParsed,
    Truncated,
    decode_vint,
)
from callscribe.testing.mkv_writer import (
    ebml_header,
    element,
    encode_size,
    simple_block,
    tags_element,
    uint_element,
    unknown_size_header,
)
from tests.connect_support import (
    CONTACT_ID,
    KVS_FIXTURE_FILES,
    ffprobe_output,
    get_media_bytes,
    kvs_fixture,
    sample_fragments,
    tone_fragments,
)


@dataclass
class Document:
    tracks: tuple = ()
    tags: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[BlockFrames] = field(default_factory=list)
    ended: str | None = None

    def tag(self, name: str) -> str | None:
        values = [v for k, v in self.tags if k == name]
        return values[-1] if values else None


def parse(data: bytes, chunks: list[int] | None = None) -> list[object]:
    parser = MkvStreamParser()
    events: list[object] = []
    if chunks is None:
        events += parser.feed(data)
    else:
        pos = 0
        for size in chunks:
            events += parser.feed(data[pos : pos + size])
            pos += size
        events += parser.feed(data[pos:])
    return events + parser.close()


def documents(events: list[object]) -> list[Document]:
    docs: list[Document] = []
    for event in events:
        if isinstance(event, DocumentStarted):
            docs.append(Document())
        elif isinstance(event, TracksParsed):
            docs[-1].tracks = event.tracks
        elif isinstance(event, TagsParsed):
            docs[-1].tags += event.tags
        elif isinstance(event, BlockFrames):
            docs[-1].blocks.append(event)
        elif isinstance(event, DocumentEnded):
            docs[-1].ended = event.reason
    return docs


# What the fixtures hold, read off their bytes by hand (hexdump) and by ffprobe.
FRAGMENTS_OF_GET_MEDIA = [
    ("91343852333181432392682062607743920146159169392", "1511852109.126", "1511852108.513", 15858),
    ("91343852333181432397633822764885441725874549018", "1511852110.915", "1511852110.513", 14155),
    ("91343852333181432402585582922026963247510532162", "1511852112.487", "1511852112.513", 12940),
    ("91343852333181432407537343079168484595829378270", "1511852113.414", "1511852114.513", 12414),
    ("91343852333181432412489103236310005892133364608", "1511852114.147", "1511852116.513", 12093),
]
EXPECTED = {
    "output_get_media.mkv": FRAGMENTS_OF_GET_MEDIA,
    "output_get_media_sparse_fragments.mkv": [FRAGMENTS_OF_GET_MEDIA[i] for i in (0, 2, 4)],
    "test_mixed_tags.mkv": [
        ("91343852333713038908964877623801423530396737899", "1537574915.281", "0.000", 910),
        ("91343852333713038913916637780942944683031040297", "1537574915.478", "5.000", 723),
        ("91343852333713038918868397938084465802887066670", "1537574915.554", "10.000", 658),
        ("91343852333713038923820158095225986915711326403", "1537574915.603", "15.000", 633),
    ],
    "empty-mkv-with-tags.mkv": [
        (
            "91343852338378294813695855977007281634605393997",
            "1516124526.822",
            "1515865326.543",
            None,
        ),
    ],
}
BLOCKS = {
    "output_get_media.mkv": [60] * 5,
    "output_get_media_sparse_fragments.mkv": [60] * 3,
    "test_mixed_tags.mkv": [10] * 10,
    "empty-mkv-with-tags.mkv": [0],
    "test_tags_empty_cluster.mkv": [0],
}


@pytest.mark.parametrize("name", KVS_FIXTURE_FILES)
def test_every_fixture_parses_whole_with_its_fragments_and_tags(name: str) -> None:
    events = parse(kvs_fixture(name))
    assert not [e for e in events if isinstance(e, (Corrupted, Truncated))]
    docs = documents(events)
    assert [len(d.blocks) for d in docs] == BLOCKS[name]
    assert [d.ended for d in docs] == ["next-document"] * (len(docs) - 1) + ["end-of-stream"]
    for doc, expected in zip(docs, EXPECTED.get(name, []), strict=False):
        number, server, producer, behind = expected
        assert doc.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") == number
        assert doc.tag("AWS_KINESISVIDEO_SERVER_TIMESTAMP") == server
        assert doc.tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP") == producer
        behind_tag = doc.tag("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW")
        assert (int(behind_tag) if behind_tag else None) == behind
        if behind is not None:
            assert doc.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN") == number


def test_fixture_details_clusters_timestamps_and_tracks() -> None:
    docs = documents(parse(kvs_fixture("output_get_media.mkv")))
    # Two-second fragments of 30 fps video; cluster timestamps continue across documents.
    assert [(d.blocks[0].time_ms, d.blocks[-1].time_ms) for d in docs] == [
        (2000.0 * i, 2000.0 * i + 1967) for i in range(5)
    ]
    assert all(b.track_number == 1 for d in docs for b in d.blocks)
    assert docs[0].blocks[0].keyframe
    assert [(t.number, t.codec_id, t.track_type) for t in docs[0].tracks] == [
        (1, "V_MPEG4/ISO/AVC", 1)
    ]
    mixed = documents(parse(kvs_fixture("test_mixed_tags.mkv")))
    assert len(mixed) == 10
    # Tags before Info, between Tracks and the Cluster, inside the Cluster's run and after it.
    assert [k for k, _ in mixed[0].tags][:5] == [f"testTag_{i}" for i in range(5)]
    assert mixed[0].tracks[0].name.strip() == "test track"
    assert mixed[9].tag("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW") == "274"
    only_tags = documents(parse(kvs_fixture("test_tags_empty_cluster.mkv")))
    assert [v for _, v in only_tags[0].tags] == [f"testTag_{i}_Value" for i in range(5)]


@pytest.mark.parametrize(
    "name", ["output_get_media.mkv", "output_get_media_sparse_fragments.mkv", "test_mixed_tags.mkv"]
)
def test_first_fragment_tags_and_packet_count_agree_with_ffprobe(name: str, tmp_path: Path) -> None:
    data = kvs_fixture(name)
    probe = ffprobe_output(data, tmp_path, "-show_format", "-show_streams")
    ffprobe_tags = dict(re.findall(r"^TAG:(AWS_KINESISVIDEO_\w+)=(.*)$", probe, re.M))
    first = documents(parse(data))[0]
    ours = {k: v for k, v in first.tags if k.startswith("AWS_KINESISVIDEO_")}
    # ffprobe shows the Segment-level tags of the first document, read before its Cluster.
    assert ffprobe_tags
    assert {k: ours[k] for k in ffprobe_tags} == ffprobe_tags
    packets = ffprobe_output(
        data,
        tmp_path,
        "-count_packets",
        "-show_entries",
        "stream=nb_read_packets",
        "-of",
        "csv=p=0",
    )
    assert int(packets.split()[0]) == sum(len(d.blocks) for d in documents(parse(data)))


def test_generated_connect_stream_agrees_with_ffprobe(tmp_path: Path) -> None:
    fragments = sample_fragments()[:5]
    data = get_media_bytes(fragments)
    probe = ffprobe_output(data, tmp_path, "-show_format", "-show_streams")
    assert re.findall(r"^TAG:title=(AUDIO_\w+)$", probe, re.M) == [
        "AUDIO_FROM_CUSTOMER",
        "AUDIO_TO_CUSTOMER",
    ]
    # What Connect declares, though the blocks are PCM: the MimeType tag says so.
    assert re.findall(r"^codec_name=(\w+)$", probe, re.M) == ["aac", "aac"]
    assert re.findall(r"^sample_rate=(\d+)$", probe, re.M) == ["8000", "8000"]
    assert f"TAG:AWS_KINESISVIDEO_FRAGMENT_NUMBER={fragments[0].number}" in probe
    assert (
        f"TAG:AWS_KINESISVIDEO_PRODUCER_TIMESTAMP={fragments[0].producer_time_ms / 1000:.3f}"
        in probe
    )
    packets = ffprobe_output(
        data,
        tmp_path,
        "-count_packets",
        "-show_entries",
        "stream=nb_read_packets",
        "-of",
        "csv=p=0",
    )
    docs = documents(parse(data))
    per_track = [sum(1 for d in docs for b in d.blocks if b.track_number == n) for n in (1, 2)]
    assert [int(n) for n in packets.split()] == per_track
    assert all(d.tag("ContactId") == CONTACT_ID for d in docs)


def test_generated_fragments_round_trip_tracks_tags_and_times() -> None:
    fragments = tone_fragments(2.5, fragment_ms=1000, block_ms=64)
    docs = documents(parse(get_media_bytes(fragments)))
    assert len(docs) == 3
    for doc, fragment in zip(docs, fragments, strict=True):
        assert [
            (t.number, t.name, t.codec_id, t.sampling_frequency, t.channels) for t in doc.tracks
        ] == [
            (1, "AUDIO_FROM_CUSTOMER", "A_AAC", 8000.0, 1),
            (2, "AUDIO_TO_CUSTOMER", "A_AAC", 8000.0, 1),
        ]
        assert doc.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") == fragment.number
        assert doc.tag("MimeType") == "audio/L16;rate=8000;channels=1;"
        customer = [b for b in doc.blocks if b.track_number == 1]
        assert [b.payload for b in customer] == [pcm for _, pcm in fragment.audio.customer]
        assert [b.time_ms for b in customer] == [
            fragment.producer_time_ms + ms for ms, _ in fragment.audio.customer
        ]
    # The last fragment is half a second: blocks of 64 ms, the last one 52 ms.
    assert [len(p) // 2 for _, p in fragments[2].audio.customer][-1] == 52 * 8


# Splits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_tags_empty_cluster.mkv", "empty-mkv-with-tags.mkv"])
def test_small_fixtures_split_at_every_byte_boundary(name: str) -> None:
    data = kvs_fixture(name)
    whole = parse(data)
    for cut in range(len(data) + 1):
        assert parse(data, [cut]) == whole, cut


def test_mixed_tags_fixture_fed_one_byte_at_a_time_and_split_densely() -> None:
    data = kvs_fixture("test_mixed_tags.mkv")
    whole = parse(data)
    assert parse(data, [1] * len(data)) == whole
    for cut in range(0, len(data) + 1, 7):
        assert parse(data, [cut]) == whole, cut


@pytest.mark.parametrize("name", ["output_get_media.mkv", "output_get_media_sparse_fragments.mkv"])
def test_large_fixtures_split_at_a_dense_sample_of_boundaries(name: str) -> None:
    data = kvs_fixture(name)
    whole = parse(data)
    rng = random.Random(name)
    # Every boundary around each element header of the first 64 KiB, then a random sample.
    cuts = list(range(0, 2048)) + rng.sample(range(len(data)), 150)
    for cut in cuts:
        assert parse(data, [cut]) == whole, cut
    for _ in range(5):
        chunks = [rng.randint(1, 70_000) for _ in range(200)]
        assert parse(data, chunks) == whole


def test_generated_stream_split_at_every_byte_boundary() -> None:
    data = get_media_bytes(tone_fragments(0.3, fragment_ms=100, block_ms=32))
    whole = parse(data)
    assert len(documents(whole)) == 3
    for cut in range(len(data) + 1):
        assert parse(data, [cut]) == whole, cut


# Truncation and corruption ---------------------------------------------------------------------


def test_every_truncation_reports_cleanly_and_keeps_what_came_before() -> None:
    data = get_media_bytes(tone_fragments(0.2, fragment_ms=100, block_ms=32))
    whole = parse(data)
    full_docs = documents(whole)
    for cut in range(len(data)):
        events = parse(data[:cut])
        assert not [e for e in events if isinstance(e, Corrupted)], cut
        last = events[-1] if events else None
        assert last is None or isinstance(last, (Truncated, DocumentEnded)), (cut, last)
        if isinstance(last, DocumentEnded):
            assert last.reason == "end-of-stream"
        # Everything reported before the end is what the whole stream reports.
        body = [e for e in events if not isinstance(e, (Truncated, DocumentEnded))]
        complete = [e for e in whole if not isinstance(e, DocumentEnded)]
        assert body == complete[: len(body)], cut
        docs = documents(events)
        for doc, full in zip(docs, full_docs, strict=False):
            assert full.blocks[: len(doc.blocks)] == doc.blocks


def test_corrupt_fragment_is_reported_and_the_next_ones_are_read() -> None:
    fragments = tone_fragments(0.5, fragment_ms=100, block_ms=32)
    encoded = [f.encode((0, f.number)) for f in fragments]
    # Break the Cluster of the second fragment: a SimpleBlock whose size overruns everything.
    broken = bytearray(encoded[1])
    at = broken.index(
        bytes([mkv.SIMPLE_BLOCK]) + encode_size(len(fragments[1].audio.customer[0][1]) + 4)
    )
    broken[at + 1 : at + 2] = b"\x01"  # a size vint of 8 bytes: 0x01 then the next 7 bytes
    data = b"".join([encoded[0], bytes(broken), *encoded[2:]])
    events = parse(data)
    corrupted = [e for e in events if isinstance(e, Corrupted)]
    assert len(corrupted) == 1
    numbers = [d.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") for d in documents(events)]
    assert numbers == [f.number for f in fragments]
    complete = [d for d in documents(events) if d.ended]
    assert [d.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") for d in complete] == [
        f.number for i, f in enumerate(fragments) if i != 1
    ]


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\x00\x00\x00\x00", "invalid EBML variable-length integer"),
        (b"\x1f\x43\xb6\x75\x80", "Cluster at the top level"),
        (
            ebml_header() + unknown_size_header(mkv.SEGMENT) + unknown_size_header(mkv.VOID),
            "unknown size",
        ),
        (
            ebml_header()
            + unknown_size_header(mkv.SEGMENT)
            + unknown_size_header(mkv.CLUSTER)
            + b"\xa3\x08\xff\xff\xff\xff\xff\xff\xfe",
            "too large",
        ),
        (
            ebml_header()
            + unknown_size_header(mkv.SEGMENT)
            + element(mkv.TRACKS, element(mkv.TRACK_ENTRY, b"\x53\x6e\x85x")),
            "overruns its parent",
        ),
        (element(mkv.EBML, element(mkv.DOC_TYPE, b"avi")), "not matroska"),
        (
            ebml_header()
            + unknown_size_header(mkv.SEGMENT)
            + element(mkv.TRACKS, element(mkv.TRACK_ENTRY, uint_element(mkv.TRACK_TYPE, 2))),
            "without a TrackNumber",
        ),
        (
            ebml_header()
            + unknown_size_header(mkv.SEGMENT)
            + unknown_size_header(mkv.CLUSTER)
            + element(mkv.SIMPLE_BLOCK, b"\x81\x00"),
            "too short",
        ),
    ],
    ids=[
        "vint",
        "top-level",
        "unknown-size-leaf",
        "huge-block",
        "overrun",
        "doctype",
        "no-track-number",
        "short-block",
    ],
)
def test_corrupt_input_is_named(data: bytes, reason: str) -> None:
    events = parse(data)
    corrupted = [e for e in events if isinstance(e, Corrupted)]
    assert corrupted and reason in corrupted[0].reason, events


def test_an_enormous_declared_size_is_an_error_not_a_wait() -> None:
    parser = MkvStreamParser()
    events = parser.feed(
        ebml_header()
        + unknown_size_header(mkv.SEGMENT)
        + unknown_size_header(mkv.CLUSTER)
        + b"\xec\x01\x00\x00\x10\x00\x00\x00\x00"  # a Void of 2**44 bytes
    )
    assert any(isinstance(e, Corrupted) and "too large" in e.reason for e in events)


def test_unknown_sizes_end_at_a_parent_level_element() -> None:
    block = simple_block(1, 0, b"\x01\x02")
    data = (
        ebml_header()
        + unknown_size_header(mkv.SEGMENT)
        + unknown_size_header(mkv.CLUSTER)
        + uint_element(mkv.CLUSTER_TIMESTAMP, 100)
        + block
        + tags_element([("ContactId", "a")])  # ends the Cluster: Tags belong to the Segment
        + unknown_size_header(mkv.CLUSTER)
        + uint_element(mkv.CLUSTER_TIMESTAMP, 200)
        + block
        + ebml_header()
        + unknown_size_header(mkv.SEGMENT)  # ends the Cluster and the Segment
        + element(mkv.CLUSTER, uint_element(mkv.CLUSTER_TIMESTAMP, 300) + block)
    )
    events = parse(data)
    assert [type(e).__name__ for e in events] == [
        "DocumentStarted",
        "BlockFrames",
        "TagsParsed",
        "BlockFrames",
        "DocumentEnded",
        "DocumentStarted",
        "BlockFrames",
        "DocumentEnded",
    ]
    assert [e.time_ms for e in events if isinstance(e, BlockFrames)] == [100.0, 200.0, 300.0]
    assert [e.index for e in events if isinstance(e, BlockFrames)] == [0, 1, 0]


def test_laced_blocks_are_split_into_frames() -> None:
    frames = [b"a" * 300, b"b" * 10, b"c" * 7]

    def cluster(payload: bytes) -> bytes:
        return (
            ebml_header()
            + unknown_size_header(mkv.SEGMENT)
            + unknown_size_header(mkv.CLUSTER)
            + uint_element(mkv.CLUSTER_TIMESTAMP, 0)
            + element(mkv.SIMPLE_BLOCK, payload)
        )

    xiph = b"\x81\x00\x00\x82\x02" + b"\xff\x2d" + b"\x0a" + b"".join(frames)
    ebml = b"\x81\x00\x00\x86\x02" + b"\x41\x2c" + b"\x5e\xdd" + b"".join(frames)  # 300, then -290
    fixed = b"\x81\x00\x00\x84\x02" + b"x" * 30
    for payload, expected in (
        (xiph, tuple(frames)),
        (ebml, (frames[0], frames[1], frames[2])),
        (fixed, (b"x" * 10,) * 3),
    ):
        (block,) = [e for e in parse(cluster(payload)) if isinstance(e, BlockFrames)]
        assert block.frames == expected
    broken = b"\x81\x00\x00\x84\x02" + b"x" * 31
    assert any(isinstance(e, Corrupted) for e in parse(cluster(broken)))


def test_vints() -> None:
    assert decode_vint(b"\x81", 0) == (1, 1, False)
    assert decode_vint(b"\x40\x02", 0) == (2, 2, False)
    assert decode_vint(b"\x01\xff\xff\xff\xff\xff\xff\xff", 0) == ((1 << 56) - 1, 8, True)
    assert decode_vint(b"\x1a\x45\xdf\xa3", 0, max_length=4, keep_marker=True) == (
        mkv.EBML,
        4,
        False,
    )
    assert decode_vint(b"\x40", 0) is None
    with pytest.raises(ValueError):
        decode_vint(b"\x00", 0)
    for size in (0, 1, 126, 127, 16382, 16383, 1 << 30):
        encoded = encode_size(size)
        assert decode_vint(encoded, 0)[:2] == (size, len(encoded))


# Fuzzing --------------------------------------------------------------------------------------

VALID = get_media_bytes(tone_fragments(0.2, fragment_ms=100, block_ms=32))


def _chunked(data: bytes, sizes: list[int]) -> list[object]:
    parser = MkvStreamParser()
    events: list[object] = []
    pos = 0
    for size in sizes:
        events += parser.feed(data[pos : pos + size])
        pos += size
    events += parser.feed(data[pos:])
    return events + parser.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.lists(st.integers(1, 512), max_size=20))
def test_fuzz_arbitrary_bytes_never_raise(data: bytes, sizes: list[int]) -> None:
    events = _chunked(data, sizes)
    assert events == _chunked(data, [])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.lists(st.integers(1, 4096), max_size=10),
)
def test_fuzz_mutated_streams_never_raise_and_do_not_depend_on_splits(
    mutations: list[tuple[int, int]], sizes: list[int]
) -> None:
    data = bytearray(VALID)
    for at, value in mutations:
        data[at] = value
    events = _chunked(bytes(data), sizes)
    assert events == _chunked(bytes(data), [])
    # Whatever happened, the parser found its way to the last fragment's header or reported why.
    assert events


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(VALID)), st.binary(min_size=1, max_size=64))
def test_fuzz_inserted_garbage_costs_nothing_before_it(at: int, garbage: bytes) -> None:
    data = VALID[:at] + garbage + VALID[at:]
    events = parse(data)
    assert events == parse(data, [at, len(garbage) // 2])
    original = documents(parse(VALID))
    starts = [m.start() for m in re.finditer(re.escape(mkv.EBML_MAGIC), VALID)]
    got = documents(events)
    # A fragment is over once the next one's EBML header has been read: garbage after that
    # header cannot touch it.
    for k in range(len(original) - 1):
        if starts[k + 1] < at:
            assert got[k].blocks == original[k].blocks
            assert got[k].tags == original[k].tags
            assert got[k].ended == "next-document"


def test_the_tool_writes_the_sample_call_as_connect_would(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_connect_stream",
        Path(__file__).resolve().parents[1] / "tools" / "make_connect_stream.py",
    )
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "connect.mkv"
    assert tool.main(["--out", str(out), "--rounds", "1"]) == 0  # parsed back sample-exact
    probe = ffprobe_output(out.read_bytes(), tmp_path, "-show_streams")
    assert probe.count("codec_type=audio") == 2
    assert len(documents(parse(out.read_bytes()))) == 75
