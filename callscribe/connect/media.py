"""Sans-IO: Amazon Connect's Kinesis Video Streams media → per-direction 16-bit PCM.

:class:`ConnectMediaDemuxer` sits on :class:`~callscribe.connect.mkv.MkvStreamParser` and knows
what Connect and GetMedia put in each fragment:

- Tracks ``AUDIO_FROM_CUSTOMER`` (what the customer says) and ``AUDIO_TO_CUSTOMER`` (what the
  customer hears: the agent, prompts); streams of the old format have one track,
  ``Track_audio/L16``, with the customer's audio only.
- Blocks are raw signed 16-bit little-endian PCM at 8 kHz, mono, whatever the CodecID says
  (Connect writes ``A_AAC``). The fragment's ``MimeType`` tag (``audio/L16;rate=8000;
  channels=1;``) is what decides; a fragment that announces anything else stops the reader
  rather than feeding noise to the transcriber. (RFC 2586's L16 is big-endian; Connect's payload
  is little-endian all the same.)
- Connect writes a fragment's ``ContactId``, ``MimeType`` and other tags *after* its Cluster,
  and GetMedia ends every fragment with ``AWS_KINESISVIDEO_MILLIS_BEHIND_NOW`` and
  ``AWS_KINESISVIDEO_CONTINUATION_TOKEN``. A fragment's audio is therefore held until its
  ContactId and MimeType are known (or the GetMedia trailer or the next fragment arrives): one
  stream is reused for later contacts, and another customer's audio must never reach this
  call's transcript. When the ContactId differs from the first one read, the demuxer reports
  :class:`ContactChanged` and takes nothing more.
- Resuming: GetMedia's ``FRAGMENT_NUMBER`` selector starts *at* the given fragment. The demuxer
  remembers how many blocks of the latest fragment it released, so a reader that reconnects at
  that fragment gets only the blocks it has not delivered yet: no audio twice, none lost. A
  reader that takes a call over from another (a handover) starts at the last fragment the other
  processed and takes nothing of it (:meth:`ConnectMediaDemuxer.resuming_after`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import numpy as np

from callscribe.audio import TELEPHONE_RATE
from callscribe.connect.mkv import (
    BlockFrames,
    Corrupted,
    DocumentEnded,
    DocumentStarted,
    MkvStreamParser,
    TagsParsed,
    TracksParsed,
    Truncated,
)

CUSTOMER_TRACK: Final = "AUDIO_FROM_CUSTOMER"
AGENT_TRACK: Final = "AUDIO_TO_CUSTOMER"
LEGACY_TRACK: Final = "Track_audio/L16"
CHANNELS: Final = (CUSTOMER_TRACK, AGENT_TRACK)

TAG_FRAGMENT_NUMBER: Final = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP: Final = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP: Final = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_MILLIS_BEHIND_NOW: Final = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
TAG_CONTINUATION_TOKEN: Final = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
TAG_ERROR_CODE: Final = "AWS_KINESISVIDEO_ERROR_CODE"
TAG_ERROR_ID: Final = "AWS_KINESISVIDEO_ERROR_ID"
TAG_CONTACT_ID: Final = "ContactId"
TAG_MIME_TYPE: Final = "MimeType"

# Fragments already completed whose blocks are dropped if a source sends them again.
_COMPLETED_MEMORY: Final = 64
_ALL_BLOCKS: Final = 1 << 62


@dataclass(frozen=True)
class AudioReceived:
    channel: str  # CUSTOMER_TRACK or AGENT_TRACK
    pcm16: np.ndarray
    time_ms: float  # the block's time on the producer's clock (Connect: UNIX ms)
    fragment_number: str | None
    block_index: int


@dataclass(frozen=True)
class FragmentCompleted:
    fragment_number: str | None
    producer_timestamp: float | None  # seconds
    server_timestamp: float | None
    millis_behind_now: int | None
    continuation_token: str | None
    contact_id: str | None
    blocks_delivered: int  # audio blocks released from this fragment (resent ones excluded)
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ContactChanged:
    expected: str
    found: str
    fragment_number: str | None


@dataclass(frozen=True)
class StreamFailed:
    """Terminal: KVS reported an error in the stream, or the audio is not what Connect sends."""

    reason: str
    error_code: str | None = None


@dataclass(frozen=True)
class AudioDiscarded:
    """Audio of one fragment was set aside: lost for good when the data was corrupt
    (``lost``), or to be read again when the response ended before the fragment did."""

    reason: str
    fragment_number: str | None
    blocks: int
    lost: bool = False


Output: TypeAlias = (
    AudioReceived | FragmentCompleted | ContactChanged | StreamFailed | AudioDiscarded
)


@dataclass(frozen=True)
class PcmFormat:
    rate: int
    channels: int


def parse_mime_type(value: str) -> PcmFormat:
    """``audio/L16;rate=8000;channels=1;`` → PcmFormat; ValueError for any other audio."""
    parts = [p.strip() for p in value.split(";") if p.strip()]
    if not parts or parts[0].lower() != "audio/l16":
        raise ValueError(f"MimeType {value!r} is not audio/L16")
    params = {}
    for part in parts[1:]:
        name, _, setting = part.partition("=")
        params[name.strip().lower()] = setting.strip()
    try:
        rate = int(params.get("rate", TELEPHONE_RATE))
        channels = int(params.get("channels", 1))
    except ValueError:
        raise ValueError(f"MimeType {value!r} has a malformed rate or channels") from None
    return PcmFormat(rate, channels)


@dataclass
class _Fragment:
    number: str | None = None
    contact_id: str | None = None
    mime_type: str | None = None
    trailer: bool = False
    tags: list[tuple[str, str]] = field(default_factory=list)
    track_channels: dict[int, str] = field(default_factory=dict)
    track_tags: dict[str, int] = field(default_factory=dict)  # "AUDIO_FROM_CUSTOMER": "1"
    held: list[BlockFrames] = field(default_factory=list)
    released: bool = False
    completed: bool = False
    skip_below: int = 0  # block indexes under this were delivered by an earlier body
    delivered: int = 0

    def value(self, name: str) -> str | None:
        for tag_name, value in reversed(self.tags):
            if tag_name == name:
                return value
        return None


def channel_for_track(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    if name in CHANNELS:
        return name
    if name == LEGACY_TRACK:
        return CUSTOMER_TRACK
    return None


class ConnectMediaDemuxer:
    """Feed GetMedia bytes with :meth:`feed`; call :meth:`end_of_body` when a response ends and
    :meth:`new_body` before the next one (a reconnect). Outputs are in stream order."""

    def __init__(self, expected_contact_id: str | None = None) -> None:
        # The first ContactId read becomes the expected one unless the caller knows it.
        self.contact_id = expected_contact_id
        self._parser = MkvStreamParser()
        self._fragment: _Fragment | None = None
        self._last_number: str | None = None
        self._last_delivered = 0
        self._completed: deque[str] = deque(maxlen=_COMPLETED_MEMORY)
        self._leftover: dict[str, bytes] = {}
        self.finished = False  # after ContactChanged or StreamFailed nothing more is taken
        self.fragments_completed = 0
        self.blocks_delivered = 0
        self.bytes_fed = 0

    # where to resume --------------------------------------------------------------------------

    @property
    def resume_fragment(self) -> str | None:
        """The latest fragment whose number was read: reconnect *at* it (FRAGMENT_NUMBER); what
        of it was delivered already is skipped."""
        return self._last_number

    @classmethod
    def resuming_after(
        cls, fragments: Sequence[str], contact_id: str | None
    ) -> ConnectMediaDemuxer:
        """The state of a reader that continues a call another reader gave up (a handover):
        ``fragments`` are those the call has taken, the last one processed whole last. Read
        *at* that one (FRAGMENT_NUMBER), none of them gives audio again and every later one
        gives all of its own; ``contact_id`` (the contact the other read) is expected."""
        if not fragments:
            raise ValueError("a reader resumes after a fragment")
        demuxer = cls(contact_id)
        demuxer._completed.extend(fragments)
        demuxer._last_number = fragments[-1]
        demuxer._last_delivered = _ALL_BLOCKS
        return demuxer

    def carry_over(self, earlier: ConnectMediaDemuxer) -> None:
        """Continue where an earlier reader of the same stream for the same call stopped (a
        start after a stop): what it delivered is not delivered again, and its contact is
        expected."""
        self.contact_id = self.contact_id or earlier.contact_id
        self._completed = deque(earlier._completed, maxlen=_COMPLETED_MEMORY)
        self._last_number = earlier._last_number
        self._last_delivered = earlier._last_delivered

    # input ------------------------------------------------------------------------------------

    def new_body(self) -> None:
        self._parser = MkvStreamParser()
        self._fragment = None
        # A sample split across the old body's end cannot be completed by the new one.
        self._leftover.clear()

    def feed(self, data: bytes) -> list[Output]:
        if self.finished:
            return []
        self.bytes_fed += len(data)
        out: list[Output] = []
        for event in self._parser.feed(data):
            self._apply(event, out)
            if self.finished:
                break
        return out

    def end_of_body(self) -> list[Output]:
        """The GetMedia response ended (cleanly or not). Audio still held is dropped: the
        fragment's tags never came, so it is read again after a reconnect."""
        if self.finished:
            return []
        out: list[Output] = []
        for event in self._parser.close():
            self._apply(event, out)
        if self._fragment is not None:
            self._discard(self._fragment, "the response ended before the fragment did", out)
            self._fragment = None
        return out

    # events -----------------------------------------------------------------------------------

    def _apply(self, event: object, out: list[Output]) -> None:
        if isinstance(event, BlockFrames):
            fragment = self._current()
            if fragment.released:
                self._deliver(fragment, event, out)
            else:
                fragment.held.append(event)
        elif isinstance(event, TagsParsed):
            self._tags(event, out)
        elif isinstance(event, TracksParsed):
            fragment = self._current()
            for track in event.tracks:
                channel = channel_for_track(track.name)
                if channel is not None:
                    fragment.track_channels[track.number] = channel
            if (
                len(event.tracks) == 1
                and not fragment.track_channels
                and event.tracks[0].track_type in (None, 2)
            ):
                # One unnamed audio track: the old customer-only format.
                fragment.track_channels[event.tracks[0].number] = CUSTOMER_TRACK
        elif isinstance(event, DocumentStarted):
            if self._fragment is not None:  # pragma: no cover - DocumentEnded always comes first
                self._discard(self._fragment, "a fragment without its end", out)
            self._fragment = _Fragment()
        elif isinstance(event, DocumentEnded):
            ended = self._fragment
            self._fragment = None
            if ended is None:
                return
            if event.reason == "next-document":
                self._release(ended, out)
                if not self.finished:
                    self._complete(ended, out)
            else:
                self._discard(ended, "the response ended before the fragment did", out)
        elif isinstance(event, (Corrupted, Truncated)):
            broken = self._fragment
            self._fragment = None
            if isinstance(event, Corrupted):
                # Reported even when nothing was held yet: the rest of the fragment is lost.
                number = broken.number if broken is not None else None
                held = len(broken.held) if broken is not None else 0
                out.append(AudioDiscarded(event.reason, number, held, lost=True))
            elif broken is not None:
                self._discard(broken, event.reason, out)

    def _current(self) -> _Fragment:
        if self._fragment is None:  # pragma: no cover - the parser always starts a document
            self._fragment = _Fragment()
        return self._fragment

    def _tags(self, event: TagsParsed, out: list[Output]) -> None:
        fragment = self._current()
        fragment.tags.extend(event.tags)
        for name, value in event.tags:
            if name == TAG_FRAGMENT_NUMBER:
                fragment.number = value
                if value in self._completed:
                    fragment.skip_below = _ALL_BLOCKS
                elif value == self._last_number:
                    # The fragment a reconnect started at: what was delivered is not again.
                    fragment.skip_below = self._last_delivered
                else:
                    self._last_number = value
                    self._last_delivered = 0
            elif name == TAG_CONTACT_ID:
                fragment.contact_id = value
                if self.contact_id is None:
                    self.contact_id = value
                elif value != self.contact_id:
                    out.append(ContactChanged(self.contact_id, value, fragment.number))
                    fragment.held.clear()
                    self.finished = True
                    return
            elif name == TAG_MIME_TYPE:
                fragment.mime_type = value
                try:
                    pcm = parse_mime_type(value)
                except ValueError as exc:
                    self._fail(str(exc), out)
                    return
                if pcm.rate != TELEPHONE_RATE or pcm.channels != 1:
                    self._fail(f"MimeType {value!r}: only 8 kHz mono L16 is Connect's format", out)
                    return
            elif name in (TAG_MILLIS_BEHIND_NOW, TAG_CONTINUATION_TOKEN):
                fragment.trailer = True
            elif name in (TAG_ERROR_CODE, TAG_ERROR_ID):
                code = fragment.value(TAG_ERROR_ID) or event.get(TAG_ERROR_ID)
                text = fragment.value(TAG_ERROR_CODE) or event.get(TAG_ERROR_CODE)
                self._fail(f"Kinesis Video Streams error {code}: {text}", out, code)
                return
            elif name in CHANNELS and value.strip().isdigit():
                fragment.track_tags[name] = int(value.strip())
        known = fragment.contact_id is not None and fragment.mime_type is not None
        if known or fragment.trailer:
            self._release(fragment, out)
        if fragment.trailer:
            # GetMedia writes its trailer last: the fragment is whole.
            self._complete(fragment, out)

    # delivery ---------------------------------------------------------------------------------

    def _release(self, fragment: _Fragment, out: list[Output]) -> None:
        if fragment.released or self.finished:
            return
        fragment.released = True
        for name, number in fragment.track_tags.items():
            fragment.track_channels.setdefault(number, name)
        held, fragment.held = fragment.held, []
        for block in held:
            self._deliver(fragment, block, out)

    def _deliver(self, fragment: _Fragment, block: BlockFrames, out: list[Output]) -> None:
        channel = fragment.track_channels.get(block.track_number)
        if channel is None:
            return
        if block.index < fragment.skip_below:
            return
        payload = self._leftover.pop(channel, b"") + block.payload
        if len(payload) % 2:
            self._leftover[channel] = payload[-1:]
            payload = payload[:-1]
        pcm = np.frombuffer(payload, dtype="<i2").astype(np.int16)
        fragment.delivered += 1
        self.blocks_delivered += 1
        if fragment.number is not None and fragment.number == self._last_number:
            self._last_delivered = max(self._last_delivered, block.index + 1)
        out.append(AudioReceived(channel, pcm, block.time_ms, fragment.number, block.index))

    def _complete(self, fragment: _Fragment, out: list[Output]) -> None:
        if fragment.completed:
            return
        fragment.completed = True
        if fragment.number is not None:
            self._completed.append(fragment.number)
        self.fragments_completed += 1
        out.append(
            FragmentCompleted(
                fragment_number=fragment.number,
                producer_timestamp=_seconds(fragment.value(TAG_PRODUCER_TIMESTAMP)),
                server_timestamp=_seconds(fragment.value(TAG_SERVER_TIMESTAMP)),
                millis_behind_now=_int(fragment.value(TAG_MILLIS_BEHIND_NOW)),
                continuation_token=fragment.value(TAG_CONTINUATION_TOKEN),
                contact_id=fragment.contact_id,
                blocks_delivered=fragment.delivered,
                tags=tuple(fragment.tags),
            )
        )

    def _discard(self, fragment: _Fragment, reason: str, out: list[Output]) -> None:
        if fragment.held:
            out.append(AudioDiscarded(reason, fragment.number, len(fragment.held)))
        fragment.held = []

    def _fail(self, reason: str, out: list[Output], code: str | None = None) -> None:
        out.append(StreamFailed(reason, code))
        if self._fragment is not None:
            self._fragment.held.clear()
        self.finished = True


class MediaTimeline:
    """Places a call's KVS audio on its 8 kHz timeline (``CallSession.audio``'s ``at_sample``).

    Block times are the producer's clock in ms. A block within ``tolerance_ms`` of where its
    channel's audio ends continues it seamlessly (millisecond rounding must not insert a few
    samples of silence at every block); a later block leaves a gap (lost audio, a reconnect after
    stop/start), which the call fills with silence or restarts its endpointer at.
    """

    def __init__(self, tolerance_ms: float = 40.0) -> None:
        self.origin_ms: float | None = None
        self.tolerance_samples = int(tolerance_ms * TELEPHONE_RATE / 1000)
        self._next: dict[str, int] = {}

    def channel_end(self, channel: str) -> int | None:
        """Where ``channel``'s audio placed so far ends (8 kHz samples); None before any."""
        return self._next.get(channel)

    def continue_channel(self, channel: str, end: int) -> None:
        """Continue a channel another reader placed up to ``end`` (a handover): its next block
        joins on seamlessly, as if this timeline had placed the earlier ones."""
        self._next[channel] = end

    def place(self, channel: str, time_ms: float, samples: int) -> int:
        if self.origin_ms is None:
            self.origin_ms = time_ms
        at = max(0, round((time_ms - self.origin_ms) * TELEPHONE_RATE / 1000))
        expected = self._next.get(channel)
        if expected is not None and at - expected <= self.tolerance_samples:
            at = expected
        self._next[channel] = at + samples
        return at


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
