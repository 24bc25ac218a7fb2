"""A small Matroska writer for Connect-shaped Kinesis Video Streams fragments (tests, tools).

It writes what Amazon Connect's producer and GetMedia put on the wire: per fragment an EBML
header and a Segment of unknown size holding Info, two audio Tracks named
``AUDIO_FROM_CUSTOMER`` / ``AUDIO_TO_CUSTOMER`` whose CodecID says ``A_AAC`` while the blocks
are raw 16-bit little-endian PCM at 8 kHz, the KVS fragment tags, a Cluster of unknown size
whose timestamp is the producer time in ms, the contact's tags after the Cluster (each in its
own ``Tags``, as Connect writes them), and GetMedia's trailer (millis-behind-now, continuation
token). The old customer-only format (one ``Track_audio/L16`` track) can be written too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from callscribe.connect import mkv
from callscribe.connect.media import (
    AGENT_TRACK,
    CUSTOMER_TRACK,
    LEGACY_TRACK,
    TAG_CONTACT_ID,
    TAG_CONTINUATION_TOKEN,
    TAG_FRAGMENT_NUMBER,
    TAG_MILLIS_BEHIND_NOW,
    TAG_MIME_TYPE,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
)

CONNECT_MIME_TYPE = "audio/L16;rate=8000;channels=1;"
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
# Connect's AAC AudioSpecificConfig for 8 kHz mono, though the blocks are PCM.
AAC_8K_MONO_CONFIG = bytes.fromhex("1588")


def encode_id(element_id: int) -> bytes:
    length = (element_id.bit_length() + 7) // 8
    return element_id.to_bytes(length, "big")


def encode_size(size: int, length: int | None = None) -> bytes:
    """EBML size vint, shortest unless ``length`` is given (1-8 bytes)."""
    if length is None:
        length = 1
        while size >= (1 << (7 * length)) - 1:
            length += 1
    if length > 8 or size >= (1 << (7 * length)) - 1:
        raise ValueError(f"{size} does not fit an EBML size of {length} bytes")
    return ((1 << (7 * length)) | size).to_bytes(length, "big")


def element(element_id: int, payload: bytes, size_length: int | None = None) -> bytes:
    return encode_id(element_id) + encode_size(len(payload), size_length) + payload


def uint_element(element_id: int, value: int) -> bytes:
    length = max(1, (value.bit_length() + 7) // 8)
    return element(element_id, value.to_bytes(length, "big"))


def string_element(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


def float_element(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))


def unknown_size_header(element_id: int) -> bytes:
    return encode_id(element_id) + UNKNOWN_SIZE


def ebml_header() -> bytes:
    return element(
        mkv.EBML,
        uint_element(mkv.EBML_VERSION, 1)
        + uint_element(mkv.EBML_READ_VERSION, 1)
        + uint_element(mkv.EBML_MAX_ID_LENGTH, 4)
        + uint_element(mkv.EBML_MAX_SIZE_LENGTH, 8)
        + string_element(mkv.DOC_TYPE, "matroska")
        + uint_element(mkv.DOC_TYPE_VERSION, 2)
        + uint_element(mkv.DOC_TYPE_READ_VERSION, 2),
    )


def tags_element(tags: Iterable[tuple[str, str]]) -> bytes:
    simple = b"".join(
        element(
            mkv.SIMPLE_TAG,
            string_element(mkv.TAG_NAME, name) + string_element(mkv.TAG_STRING, value),
        )
        for name, value in tags
    )
    return element(mkv.TAGS, element(mkv.TAG, simple))


def audio_track_entry(number: int, name: str, codec_id: str = "A_AAC") -> bytes:
    return element(
        mkv.TRACK_ENTRY,
        uint_element(mkv.TRACK_NUMBER, number)
        + uint_element(mkv.TRACK_UID, number)
        + uint_element(mkv.TRACK_TYPE, 2)
        + string_element(mkv.TRACK_NAME, name)
        + string_element(mkv.CODEC_ID, codec_id)
        + element(mkv.CODEC_PRIVATE, AAC_8K_MONO_CONFIG)
        + element(
            mkv.AUDIO,
            float_element(mkv.SAMPLING_FREQUENCY, 8000.0) + uint_element(mkv.CHANNELS, 1),
        ),
    )


def simple_block(
    track_number: int, relative_ms: int, payload: bytes, keyframe: bool = True
) -> bytes:
    header = encode_size(track_number) + struct.pack(">hB", relative_ms, 0x80 if keyframe else 0)
    return element(mkv.SIMPLE_BLOCK, header + payload)


@dataclass(frozen=True)
class FragmentAudio:
    """The PCM of one fragment: per track, (time from the fragment start in ms, bytes) blocks."""

    customer: Sequence[tuple[int, bytes]]
    agent: Sequence[tuple[int, bytes]] = ()


def connect_fragment(
    *,
    fragment_number: str,
    producer_time_ms: int,
    server_time_ms: int,
    audio: FragmentAudio,
    contact_id: str | None,
    instance_id: str = "d5b716a2-10bb-45cb-bf7f-01a9864be591",
    mime_type: str | None = CONNECT_MIME_TYPE,
    legacy: bool = False,
    trailer: tuple[int, str] | None = None,
    extra_tags: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One fragment as GetMedia returns it. ``trailer``: (millis behind now, continuation
    token) that GetMedia appends; None for the fragment as the producer wrote it."""
    if legacy:
        tracks = audio_track_entry(1, LEGACY_TRACK, codec_id="A_PCM/INT/LIT")
    else:
        tracks = audio_track_entry(1, CUSTOMER_TRACK) + audio_track_entry(2, AGENT_TRACK)
    info = element(
        mkv.INFO,
        element(mkv.SEGMENT_UID, fragment_number.encode()[:16].ljust(16, b"\0"))
        + uint_element(mkv.TIMESTAMP_SCALE, 1_000_000)
        + string_element(mkv.TITLE, "Kinesis Video SDK")
        + string_element(mkv.MUXING_APP, "Kinesis Video SDK 1.1.0 JNI 2.0")
        + string_element(mkv.WRITING_APP, "Kinesis Video SDK 1.1.0 JNI 2.0"),
    )
    kvs_tags = tags_element(
        [
            (TAG_FRAGMENT_NUMBER, fragment_number),
            (TAG_SERVER_TIMESTAMP, f"{server_time_ms / 1000:.3f}"),
            (TAG_PRODUCER_TIMESTAMP, f"{producer_time_ms / 1000:.3f}"),
        ]
    )
    blocks = [(ms, 1, pcm) for ms, pcm in audio.customer]
    if not legacy:
        blocks += [(ms, 2, pcm) for ms, pcm in audio.agent]
    blocks.sort(key=lambda block: (block[0], block[1]))
    cluster = (
        unknown_size_header(mkv.CLUSTER)
        + uint_element(mkv.CLUSTER_TIMESTAMP, producer_time_ms)
        + uint_element(mkv.POSITION, 0)
        + b"".join(simple_block(track, ms, pcm) for ms, track, pcm in blocks)
    )
    contact_tags: list[tuple[str, str]] = []
    if contact_id is not None:
        contact_tags.append((TAG_CONTACT_ID, contact_id))
    contact_tags.append(("InstanceId", instance_id))
    if mime_type is not None:
        contact_tags.append((TAG_MIME_TYPE, mime_type))
    if not legacy:
        contact_tags += [(CUSTOMER_TRACK, "1"), (AGENT_TRACK, "2")]
    contact_tags.append(("Events", "[]"))
    contact_tags += list(extra_tags)
    after = b"".join(tags_element([tag]) for tag in contact_tags)
    if trailer is not None:
        millis_behind_now, token = trailer
        after += tags_element(
            [(TAG_MILLIS_BEHIND_NOW, str(millis_behind_now)), (TAG_CONTINUATION_TOKEN, token)]
        )
    return (
        ebml_header()
        + unknown_size_header(mkv.SEGMENT)
        + info
        + element(mkv.TRACKS, tracks)
        + kvs_tags
        + cluster
        + after
    )


def error_fragment(error_id: int, error_code: str) -> bytes:
    """What GetMedia sends when it stops on an error: a document with only the error tags."""
    return (
        ebml_header()
        + unknown_size_header(mkv.SEGMENT)
        + tags_element(
            [
                ("AWS_KINESISVIDEO_ERROR_ID", str(error_id)),
                ("AWS_KINESISVIDEO_ERROR_CODE", error_code),
            ]
        )
    )
