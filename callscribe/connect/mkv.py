"""Sans-IO reader of Kinesis Video Streams ``GetMedia`` payloads (Matroska / EBML).

A GetMedia response never ends while the stream is live: it is a sequence of Matroska
documents, one per fragment, each an EBML header followed by a Segment whose size — and its
Clusters' — is *unknown* (all ones). :class:`MkvStreamParser` takes the bytes as they arrive
(any split, down to one byte at a time) and returns events: a new document, its tracks, each
block's frames with its absolute time, each ``Tags`` element's name/value pairs, the end of a
document. It does no I/O and keeps no clock.

Why not a library: PyPI's EBML readers (``ebmlite`` 3.4, ``python-ebml`` 0.2, ``enzyme``) parse
files — they seek, or want the whole document in memory — and none takes bytes pushed from a
socket with unknown-size elements that end only when a parent-level element appears; PyAV
(FFmpeg) pulls from a file-like object in a blocking thread and does not surface the per-fragment
tags of concatenated documents. The subset of Matroska that KVS writes is small, so it is read
here, fuzzed by the tests.

Unknown sizes follow the Matroska rule: an unknown-size element ends where an element that
cannot be its child begins (a Cluster ends at the next ``Tags``, ``Cluster`` or ``EBML``
header; a Segment at the next ``EBML`` header). Every size is checked against its parent, leaf
elements are bounded, and on corrupt data the parser reports :class:`Corrupted` and resyncs on
the next EBML header instead of guessing: the caller decides what a lost fragment means.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "BlockFrames",
    "Corrupted",
    "DocumentEnded",
    "DocumentStarted",
    "Event",
    "MkvStreamParser",
    "TagsParsed",
    "TrackInfo",
    "TracksParsed",
    "Truncated",
    "decode_vint",
]

# Element IDs (with their length markers, as written).
EBML: Final = 0x1A45DFA3
EBML_VERSION: Final = 0x4286
EBML_READ_VERSION: Final = 0x42F7
EBML_MAX_ID_LENGTH: Final = 0x42F2
EBML_MAX_SIZE_LENGTH: Final = 0x42F3
DOC_TYPE: Final = 0x4282
DOC_TYPE_VERSION: Final = 0x4287
DOC_TYPE_READ_VERSION: Final = 0x4285
VOID: Final = 0xEC
CRC32: Final = 0xBF

SEGMENT: Final = 0x18538067
SEEK_HEAD: Final = 0x114D9B74
INFO: Final = 0x1549A966
TRACKS: Final = 0x1654AE6B
CLUSTER: Final = 0x1F43B675
CUES: Final = 0x1C53BB6B
ATTACHMENTS: Final = 0x1941A469
CHAPTERS: Final = 0x1043A770
TAGS: Final = 0x1254C367

TIMESTAMP_SCALE: Final = 0x2AD7B1
SEGMENT_UID: Final = 0x73A4
DURATION: Final = 0x4489
DATE_UTC: Final = 0x4461
TITLE: Final = 0x7BA9
MUXING_APP: Final = 0x4D80
WRITING_APP: Final = 0x5741

TRACK_ENTRY: Final = 0xAE
TRACK_NUMBER: Final = 0xD7
TRACK_UID: Final = 0x73C5
TRACK_TYPE: Final = 0x83
TRACK_NAME: Final = 0x536E
CODEC_ID: Final = 0x86
CODEC_PRIVATE: Final = 0x63A2
AUDIO: Final = 0xE1
VIDEO: Final = 0xE0
SAMPLING_FREQUENCY: Final = 0xB5
CHANNELS: Final = 0x9F
BIT_DEPTH: Final = 0x6264

CLUSTER_TIMESTAMP: Final = 0xE7
POSITION: Final = 0xA7
PREV_SIZE: Final = 0xAB
SIMPLE_BLOCK: Final = 0xA3
BLOCK_GROUP: Final = 0xA0
BLOCK: Final = 0xA1

TAG: Final = 0x7373
TARGETS: Final = 0x63C0
SIMPLE_TAG: Final = 0x67C8
TAG_NAME: Final = 0x45A3
TAG_STRING: Final = 0x4487

EBML_MAGIC: Final = b"\x1a\x45\xdf\xa3"
DEFAULT_TIMESTAMP_SCALE_NS: Final = 1_000_000

# Where each element may appear (its possible parents; None = the top level). Used only to end
# unknown-size elements: an element of a known ID that cannot be a child of the innermost
# unknown-size element closes it. IDs not listed are skipped wherever they appear.
_PARENTS: Final[dict[int, frozenset[int | None]]] = {
    EBML: frozenset({None}),
    SEGMENT: frozenset({None}),
    **{
        child: frozenset({EBML})
        for child in (
            EBML_VERSION,
            EBML_READ_VERSION,
            EBML_MAX_ID_LENGTH,
            EBML_MAX_SIZE_LENGTH,
            DOC_TYPE,
            DOC_TYPE_VERSION,
            DOC_TYPE_READ_VERSION,
        )
    },
    **{
        child: frozenset({SEGMENT})
        for child in (SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, ATTACHMENTS, CHAPTERS, TAGS)
    },
    **{
        child: frozenset({INFO})
        for child in (
            TIMESTAMP_SCALE,
            SEGMENT_UID,
            DURATION,
            DATE_UTC,
            TITLE,
            MUXING_APP,
            WRITING_APP,
        )
    },
    TRACK_ENTRY: frozenset({TRACKS}),
    **{
        child: frozenset({TRACK_ENTRY})
        for child in (
            TRACK_NUMBER,
            TRACK_UID,
            TRACK_TYPE,
            TRACK_NAME,
            CODEC_ID,
            CODEC_PRIVATE,
            AUDIO,
            VIDEO,
        )
    },
    **{child: frozenset({AUDIO}) for child in (SAMPLING_FREQUENCY, CHANNELS, BIT_DEPTH)},
    **{
        child: frozenset({CLUSTER})
        for child in (CLUSTER_TIMESTAMP, POSITION, PREV_SIZE, SIMPLE_BLOCK, BLOCK_GROUP)
    },
    BLOCK: frozenset({BLOCK_GROUP}),
    TAG: frozenset({TAGS}),
    TARGETS: frozenset({TAG}),
    SIMPLE_TAG: frozenset({TAG, SIMPLE_TAG}),
    TAG_NAME: frozenset({SIMPLE_TAG}),
    TAG_STRING: frozenset({SIMPLE_TAG}),
}
_GLOBAL: Final = frozenset({VOID, CRC32})
# Master elements the parser descends into; only these may have an unknown size.
_DESCEND: Final = frozenset(
    {EBML, SEGMENT, INFO, TRACKS, TRACK_ENTRY, AUDIO, CLUSTER, BLOCK_GROUP, TAGS, TAG, SIMPLE_TAG}
)
# Leaf elements whose value the parser reads; every other leaf is skipped without buffering.
_READ: Final = frozenset(
    {
        DOC_TYPE,
        TIMESTAMP_SCALE,
        TRACK_NUMBER,
        TRACK_UID,
        TRACK_TYPE,
        TRACK_NAME,
        CODEC_ID,
        SAMPLING_FREQUENCY,
        CHANNELS,
        BIT_DEPTH,
        CLUSTER_TIMESTAMP,
        SIMPLE_BLOCK,
        BLOCK,
        TAG_NAME,
        TAG_STRING,
    }
)
_UINT_ELEMENTS: Final = frozenset(
    {TIMESTAMP_SCALE, TRACK_NUMBER, TRACK_UID, TRACK_TYPE, CHANNELS, BIT_DEPTH, CLUSTER_TIMESTAMP}
)
_STRING_ELEMENTS: Final = frozenset({DOC_TYPE, TRACK_NAME, CODEC_ID, TAG_NAME, TAG_STRING})

# A KVS fragment is at most 50 MB; no single element of a sane stream comes near these.
MAX_READ_ELEMENT_BYTES: Final = 16 * 1024 * 1024
MAX_SKIPPED_ELEMENT_BYTES: Final = 64 * 1024 * 1024
MAX_DEPTH: Final = 16
# Consumed bytes are dropped from the buffer once this many have accumulated.
_COMPACT_AT: Final = 256 * 1024


class _Corrupt(Exception):
    pass


# Events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentStarted:
    """An EBML header began: a new document (in a GetMedia payload, a new fragment)."""

    offset: int


@dataclass(frozen=True)
class TrackInfo:
    number: int
    uid: int | None = None
    track_type: int | None = None  # 1 video, 2 audio
    name: str | None = None
    codec_id: str | None = None
    sampling_frequency: float | None = None
    channels: int | None = None
    bit_depth: int | None = None


@dataclass(frozen=True)
class TracksParsed:
    tracks: tuple[TrackInfo, ...]
    offset: int

    def by_number(self) -> dict[int, TrackInfo]:
        return {track.number: track for track in self.tracks}


@dataclass(frozen=True)
class BlockFrames:
    """A SimpleBlock or a BlockGroup's Block: its frames (more than one only when laced)."""

    track_number: int
    timestamp: int  # cluster timestamp + the block's relative one, in TimestampScale units
    timestamp_scale_ns: int
    keyframe: bool
    frames: tuple[bytes, ...]
    index: int  # blocks of this document before it
    offset: int

    @property
    def time_ns(self) -> int:
        return self.timestamp * self.timestamp_scale_ns

    @property
    def time_ms(self) -> float:
        return self.time_ns / 1_000_000

    @property
    def payload(self) -> bytes:
        return self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)


@dataclass(frozen=True)
class TagsParsed:
    """One ``Tags`` element: every SimpleTag's (name, string value) in order (nested ones
    flattened; binary values are not read)."""

    tags: tuple[tuple[str, str], ...]
    offset: int

    def get(self, name: str) -> str | None:
        for tag_name, value in self.tags:
            if tag_name == name:
                return value
        return None


@dataclass(frozen=True)
class DocumentEnded:
    """The document is over: another EBML header began (``next-document``), or the bytes ended
    at an element boundary (``end-of-stream``: there is no telling whether more was to come)."""

    offset: int
    reason: str


@dataclass(frozen=True)
class Corrupted:
    """Bytes that are not this Matroska subset; the parser skips to the next EBML header."""

    reason: str
    offset: int


@dataclass(frozen=True)
class Truncated:
    """The bytes ended inside an element (a dropped connection, a cut file)."""

    reason: str
    offset: int


Event: TypeAlias = (
    DocumentStarted
    | TracksParsed
    | BlockFrames
    | TagsParsed
    | DocumentEnded
    | Corrupted
    | Truncated
)


# EBML variable-length integers ------------------------------------------------------------------


def decode_vint(
    data: bytes | bytearray | memoryview,
    pos: int,
    *,
    max_length: int = 8,
    keep_marker: bool = False,
) -> tuple[int, int, bool] | None:
    """(value, length, all value bits set) of the vint at ``pos``; None if more bytes are
    needed. Raises ValueError for a first byte with no length marker within ``max_length``."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= max_length and not first & mask:
        length += 1
        mask >>= 1
    if length > max_length:
        raise ValueError(f"invalid EBML variable-length integer (first byte 0x{first:02x})")
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & (mask - 1)
    all_ones = (first & (mask - 1)) == mask - 1
    for i in range(1, length):
        byte = data[pos + i]
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    return value, length, all_ones


# The parser -------------------------------------------------------------------------------------


@dataclass
class _Open:
    id: int
    end: int | None  # absolute offset where it ends; None while its size is unknown
    offset: int


@dataclass
class _TrackBuilder:
    number: int | None = None
    uid: int | None = None
    track_type: int | None = None
    name: str | None = None
    codec_id: str | None = None
    sampling_frequency: float | None = None
    channels: int | None = None
    bit_depth: int | None = None


@dataclass
class _Document:
    timestamp_scale_ns: int = DEFAULT_TIMESTAMP_SCALE_NS
    cluster_timestamp: int = 0
    blocks: int = 0
    tracks: list[TrackInfo] = field(default_factory=list)
    track: _TrackBuilder | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    # SimpleTags may nest; each level collects its name and value until it ends.
    simple_tags: list[list[str | None]] = field(default_factory=list)


class MkvStreamParser:
    """Feed bytes with :meth:`feed` as they arrive; call :meth:`close` when they stop."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0  # absolute offset of self._buf[0]
        self._pos = 0  # index in self._buf of the next byte to parse
        self._stack: list[_Open] = []
        self._skip = 0  # bytes of a skipped element still to pass over
        self._resyncing = False
        self._doc: _Document | None = None
        self._closed = False
        self.bytes_fed = 0
        self.corruptions = 0

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to parse."""
        return self._start + self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._closed:
            raise RuntimeError("the parser is closed")
        self.bytes_fed += len(data)
        self._buf += data
        events: list[Event] = []
        self._run(events)
        if self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._start += self._pos
            self._pos = 0
        return events

    def close(self) -> list[Event]:
        """The bytes ended. Reports a truncated element, or ends the open document."""
        if self._closed:
            return []
        self._closed = True
        events: list[Event] = []
        pending = len(self._buf) - self._pos
        if self._resyncing:
            return events
        if self._skip or pending:
            where = self._stack[-1].id if self._stack else None
            events.append(
                Truncated(
                    f"the data ended inside an element ({pending + self._skip} bytes missing or "
                    f"unparsed, within {_name(where)})",
                    self.offset,
                )
            )
            return events
        for open_ in self._stack:
            if open_.end is not None and open_.end > self.offset:
                events.append(
                    Truncated(
                        f"the data ended inside {_name(open_.id)} "
                        f"({open_.end - self.offset} bytes missing)",
                        self.offset,
                    )
                )
                return events
        if self._doc is not None:
            self._end_all(events)
            events.append(DocumentEnded(self.offset, "end-of-stream"))
            self._doc = None
        return events

    # parsing ------------------------------------------------------------------------------

    def _run(self, events: list[Event]) -> None:
        while True:
            if self._resyncing and not self._find_magic():
                return
            try:
                if not self._step(events):
                    return
            except _Corrupt as exc:
                self._corrupt(str(exc), events)

    def _corrupt(self, reason: str, events: list[Event]) -> None:
        self.corruptions += 1
        events.append(Corrupted(reason, self.offset))
        self._stack.clear()
        self._doc = None
        self._skip = 0
        self._resyncing = True
        self._pos += 1  # never find the same bad header again

    def _find_magic(self) -> bool:
        found = self._buf.find(EBML_MAGIC, self._pos)
        if found < 0:
            # Keep a possible start of the magic split across feeds.
            self._pos = max(self._pos, len(self._buf) - (len(EBML_MAGIC) - 1))
            return False
        self._pos = found
        self._resyncing = False
        return True

    def _step(self, events: list[Event]) -> bool:
        """Parse one element header or value; False when more bytes are needed."""
        if self._skip:
            available = len(self._buf) - self._pos
            if available == 0:
                return False
            taken = min(available, self._skip)
            self._pos += taken
            self._skip -= taken
            return True
        if self._close_finished(events):
            return True
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            return False
        try:
            id_vint = decode_vint(buf, pos, max_length=4, keep_marker=True)
            if id_vint is None:
                return False
            element_id, id_length, _ = id_vint
            size_vint = decode_vint(buf, pos + id_length)
        except ValueError as exc:
            raise _Corrupt(str(exc)) from None
        if size_vint is None:
            return False
        size, size_length, unknown = size_vint
        header = id_length + size_length
        offset = self._start + pos

        self._close_unknown_for(element_id, events)
        if element_id in (EBML, SEGMENT) and self._stack:
            raise _Corrupt(f"{_name(element_id)} inside {_name(self._stack[-1].id)}")
        parent = self._stack[-1] if self._stack else None
        if parent is None and element_id not in (EBML, SEGMENT):
            raise _Corrupt(f"{_name(element_id)} at the top level: not a Matroska document")
        if parent is None and element_id == SEGMENT and self._doc is None:
            raise _Corrupt("a Segment without an EBML header")
        if unknown and element_id not in _DESCEND:
            raise _Corrupt(f"{_name(element_id)} has an unknown size")
        end = None if unknown else offset + header + size
        if end is not None and parent is not None and parent.end is not None and end > parent.end:
            raise _Corrupt(
                f"{_name(element_id)} ({size} bytes) overruns its parent {_name(parent.id)}"
            )

        if element_id in _DESCEND:
            if len(self._stack) >= MAX_DEPTH:
                raise _Corrupt("elements nested too deeply")
            self._pos = pos + header
            self._open(element_id, end, offset, events)
            return True
        if element_id in _READ and self._reads_here(element_id, parent):
            if size > MAX_READ_ELEMENT_BYTES:
                raise _Corrupt(f"{_name(element_id)} of {size} bytes is too large")
            if pos + header + size > len(buf):
                return False  # wait for the whole value
            value = bytes(buf[pos + header : pos + header + size])
            self._pos = pos + header + size
            self._leaf(element_id, value, offset, events)
            return True
        if size > MAX_SKIPPED_ELEMENT_BYTES:
            raise _Corrupt(f"{_name(element_id)} of {size} bytes is too large")
        self._pos = pos + header
        self._skip = size
        return True

    def _reads_here(self, element_id: int, parent: _Open | None) -> bool:
        parents = _PARENTS.get(element_id)
        return parent is not None and (parents is None or parent.id in parents)

    def _close_finished(self, events: list[Event]) -> bool:
        """Pop known-size elements whose end has been reached."""
        if self._stack and self._stack[-1].end is not None and self.offset >= self._stack[-1].end:
            if self.offset > self._stack[-1].end:  # pragma: no cover - sizes are checked on entry
                raise _Corrupt("parsed past the end of an element")
            self._end(self._stack.pop(), events)
            return True
        return False

    def _close_unknown_for(self, element_id: int, events: list[Event]) -> None:
        """An element that cannot be a child of the innermost unknown-size element ends it."""
        parents = _PARENTS.get(element_id)
        if parents is None or element_id in _GLOBAL:
            return
        while self._stack and self._stack[-1].end is None and self._stack[-1].id not in parents:
            self._end(self._stack.pop(), events)
        if not self._stack and self._doc is not None and element_id == EBML:
            self._finish_document(events, "next-document")

    # element starts and ends ------------------------------------------------------------------

    def _open(self, element_id: int, end: int | None, offset: int, events: list[Event]) -> None:
        if element_id == EBML:
            if self._doc is not None:
                self._finish_document(events, "next-document")
            self._doc = _Document()
            events.append(DocumentStarted(offset))
        elif self._doc is None:  # pragma: no cover - guarded in _step
            raise _Corrupt(f"{_name(element_id)} outside a document")
        elif element_id == TRACK_ENTRY:
            self._doc.track = _TrackBuilder()
        elif element_id == CLUSTER:
            self._doc.cluster_timestamp = 0
        elif element_id == SIMPLE_TAG:
            self._doc.simple_tags.append([None, None])
        self._stack.append(_Open(element_id, end, offset))

    def _end(self, open_: _Open, events: list[Event]) -> None:
        doc = self._doc
        if doc is None:
            return
        if open_.id == TRACK_ENTRY and doc.track is not None:
            track = doc.track
            doc.track = None
            if track.number is None:
                raise _Corrupt("a TrackEntry without a TrackNumber")
            doc.tracks.append(
                TrackInfo(
                    number=track.number,
                    uid=track.uid,
                    track_type=track.track_type,
                    name=track.name,
                    codec_id=track.codec_id,
                    sampling_frequency=track.sampling_frequency,
                    channels=track.channels,
                    bit_depth=track.bit_depth,
                )
            )
        elif open_.id == TRACKS:
            events.append(TracksParsed(tuple(doc.tracks), open_.offset))
        elif open_.id == SIMPLE_TAG and doc.simple_tags:
            name, value = doc.simple_tags.pop()
            if name is not None:
                doc.tags.append((name, value or ""))
        elif open_.id == TAGS:
            events.append(TagsParsed(tuple(doc.tags), open_.offset))
            doc.tags = []

    def _end_all(self, events: list[Event]) -> None:
        while self._stack:
            self._end(self._stack.pop(), events)

    def _finish_document(self, events: list[Event], reason: str) -> None:
        self._end_all(events)
        events.append(DocumentEnded(self.offset, reason))
        self._doc = None

    def _leaf(self, element_id: int, value: bytes, offset: int, events: list[Event]) -> None:
        doc = self._doc
        if doc is None:  # pragma: no cover - leaves only appear inside a document
            return
        if element_id in (SIMPLE_BLOCK, BLOCK):
            events.append(self._block(element_id, value, offset, doc))
            return
        if element_id == SAMPLING_FREQUENCY:
            if doc.track is not None:
                doc.track.sampling_frequency = _float(value)
            return
        number: int | None = None
        text: str | None = None
        if element_id in _UINT_ELEMENTS:
            if len(value) > 8:
                raise _Corrupt(f"{_name(element_id)} of {len(value)} bytes is not an integer")
            number = int.from_bytes(value, "big")
        elif element_id in _STRING_ELEMENTS:
            text = value.rstrip(b"\x00").decode("utf-8", errors="replace")
        if element_id == DOC_TYPE:
            if text not in ("matroska", "webm"):
                raise _Corrupt(f"DocType {text!r} is not matroska")
        elif element_id == TIMESTAMP_SCALE:
            if not number:
                raise _Corrupt("TimestampScale of 0")
            doc.timestamp_scale_ns = number
        elif element_id == CLUSTER_TIMESTAMP:
            assert number is not None
            doc.cluster_timestamp = number
        elif element_id in (TAG_NAME, TAG_STRING):
            if doc.simple_tags:
                doc.simple_tags[-1][0 if element_id == TAG_NAME else 1] = text
        elif doc.track is not None:
            track = doc.track
            if element_id == TRACK_NUMBER:
                track.number = number
            elif element_id == TRACK_UID:
                track.uid = number
            elif element_id == TRACK_TYPE:
                track.track_type = number
            elif element_id == TRACK_NAME:
                track.name = text
            elif element_id == CODEC_ID:
                track.codec_id = text
            elif element_id == CHANNELS:
                track.channels = number
            elif element_id == BIT_DEPTH:
                track.bit_depth = number

    def _block(self, element_id: int, value: bytes, offset: int, doc: _Document) -> BlockFrames:
        try:
            track_vint = decode_vint(value, 0)
        except ValueError as exc:
            raise _Corrupt(f"block track number: {exc}") from None
        if track_vint is None or track_vint[1] + 3 > len(value):
            raise _Corrupt(f"a block of {len(value)} bytes is too short for its header")
        track_number, length, _ = track_vint
        relative = int.from_bytes(value[length : length + 2], "big", signed=True)
        flags = value[length + 2]
        frames = _unlace(value, length + 3, (flags >> 1) & 0x03)
        block = BlockFrames(
            track_number=track_number,
            timestamp=doc.cluster_timestamp + relative,
            timestamp_scale_ns=doc.timestamp_scale_ns,
            keyframe=element_id == SIMPLE_BLOCK and bool(flags & 0x80),
            frames=frames,
            index=doc.blocks,
            offset=offset,
        )
        doc.blocks += 1
        return block


def _unlace(value: bytes, pos: int, lacing: int) -> tuple[bytes, ...]:
    if lacing == 0:
        return (value[pos:],)
    if pos >= len(value):
        raise _Corrupt("a laced block without its frame count")
    count = value[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph: each size is a run of 255s ended by a smaller byte
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= len(value):
                    raise _Corrupt("a Xiph lace runs past its block")
                byte = value[pos]
                pos += 1
                size += byte
                if byte != 255:
                    break
            sizes.append(size)
    elif lacing == 3:  # EBML: the first size, then signed differences
        try:
            first = decode_vint(value, pos)
            if first is None:
                raise _Corrupt("an EBML lace runs past its block")
            size, length, _ = first
            pos += length
            sizes.append(size)
            for _ in range(count - 2):
                delta = decode_vint(value, pos)
                if delta is None:
                    raise _Corrupt("an EBML lace runs past its block")
                raw, length, _ = delta
                pos += length
                size += raw - ((1 << (7 * length - 1)) - 1)
                if size < 0:
                    raise _Corrupt("an EBML lace has a negative frame size")
                sizes.append(size)
        except ValueError as exc:
            raise _Corrupt(f"EBML lace: {exc}") from None
    else:  # fixed-size lacing
        remaining = len(value) - pos
        if remaining % count:
            raise _Corrupt(f"{remaining} bytes cannot be {count} equal frames")
        sizes = [remaining // count] * (count - 1)
    last = len(value) - pos - sum(sizes)
    if last < 0:
        raise _Corrupt("laced frames overrun their block")
    frames = []
    for size in (*sizes, last):
        frames.append(value[pos : pos + size])
        pos += size
    return tuple(frames)


def _float(value: bytes) -> float:
    if len(value) == 4:
        return float(struct.unpack(">f", value)[0])
    if len(value) == 8:
        return float(struct.unpack(">d", value)[0])
    if len(value) == 0:
        return 0.0
    raise _Corrupt(f"a float of {len(value)} bytes")


_NAMES: Final = {
    EBML: "EBML",
    SEGMENT: "Segment",
    SEEK_HEAD: "SeekHead",
    INFO: "Info",
    TRACKS: "Tracks",
    TRACK_ENTRY: "TrackEntry",
    CLUSTER: "Cluster",
    CUES: "Cues",
    TAGS: "Tags",
    TAG: "Tag",
    SIMPLE_TAG: "SimpleTag",
    TAG_NAME: "TagName",
    TAG_STRING: "TagString",
    SIMPLE_BLOCK: "SimpleBlock",
    BLOCK_GROUP: "BlockGroup",
    BLOCK: "Block",
    CLUSTER_TIMESTAMP: "Timestamp",
    TRACK_NAME: "Name",
    CODEC_ID: "CodecID",
    CODEC_PRIVATE: "CodecPrivate",
    VOID: "Void",
    AUDIO: "Audio",
}


def _name(element_id: int | None) -> str:
    if element_id is None:
        return "the top level"
    return _NAMES.get(element_id, f"element 0x{element_id:X}")
