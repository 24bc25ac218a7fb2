"""Sans-IO protocol for Twilio Media Streams, plus encoders for the same frames.

Twilio opens a WebSocket to us and sends one JSON *text* message per frame.
:class:`TwilioStreamProtocol` turns those messages (``str`` in) into typed
events (out). It does no I/O: no sockets, no asyncio, no clock. The WebSocket
layer calls :meth:`TwilioStreamProtocol.receive` for every message and, when
it raises :class:`TwilioProtocolError`, closes the socket with the error's
``close_code`` and ``reason``.

Frames (from Twilio's "Media Streams - WebSocket Messages" reference)
---------------------------------------------------------------------
``connected``  ``{"event":"connected","protocol":"Call","version":"1.0.0"}``
    First message on the socket. Has no ``sequenceNumber`` or ``streamSid``.
``start``      ``{"event":"start","sequenceNumber":"1","streamSid":"MZ..",
                 "start":{"accountSid":"AC..","streamSid":"MZ..","callSid":"CA..",
                 "tracks":["inbound","outbound"],"customParameters":{..},
                 "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}``
    Stream metadata, sent once.
``media``      ``{"event":"media","sequenceNumber":"3","streamSid":"MZ..",
                 "media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"<base64>"}}``
    Audio. ``payload`` is base64 of raw 8 kHz mono G.711 mu-law, normally 160
    bytes (20 ms). ``chunk`` counts frames per track from 1; ``timestamp`` is
    milliseconds since the stream started.
``dtmf``       ``{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ..",
                 "dtmf":{"track":"inbound_track","digit":"1"}}``
``mark``       ``{"event":"mark","sequenceNumber":"4","streamSid":"MZ..","mark":{"name":".."}}``
    Echo of a mark the server sent (bidirectional streams).
``stop``       ``{"event":"stop","sequenceNumber":"5","streamSid":"MZ..",
                 "stop":{"accountSid":"AC..","callSid":"CA.."}}``
    Last message; Twilio closes the socket after it.

Twilio writes ``sequenceNumber``, ``chunk`` and ``timestamp`` as decimal
strings; plain JSON integers are accepted too (other senders, our own tests).
Only ASCII digits are accepted (no sign, no float, no bool), and values are
capped at 2**63-1 so that a hostile 4,000-digit number cannot cost CPU.
``sequenceNumber`` is one counter shared by every frame type after ``connected``.

Rules and why they exist
------------------------
Every violation raises :class:`TwilioProtocolError` carrying the WebSocket
close code to use and a short ASCII reason (at most 120 bytes; the WebSocket
limit for a close reason is 123) that names the offending field. Values taken
from the frame are shown with :func:`ascii` and clipped, so a reason can never
be oversized or carry control characters.

* Binary message -> ``UNSUPPORTED_DATA`` (1003). Twilio only ever sends text
  frames; a binary one means the peer is not Twilio (or not this protocol).
* Message over ``max_frame_bytes`` -> ``MESSAGE_TOO_BIG`` (1009), checked on
  the raw size *before* JSON parsing so an oversized message costs nothing. A
  20 ms frame is ~350 bytes; the 16 KiB default leaves room for large
  ``customParameters`` in ``start`` and for up to ~1.5 s of audio per frame.
* Not JSON, not an object, a required field missing or of the wrong type, an
  unknown ``event``, invalid base64, a decoded payload over
  ``max_payload_bytes``, an unknown track name, a DTMF digit outside the 16
  DTMF symbols -> ``INVALID_PAYLOAD`` (1007). The message is well-formed
  WebSocket text but its content is not a Twilio frame; accepting it would push
  garbage (or ``None``) into the transcription pipeline.
* A well-formed ``mediaFormat`` other than ``audio/x-mulaw``, 8000 Hz, 1
  channel -> ``UNSUPPORTED_DATA`` (1003), not 1007: the frame is valid, we just
  cannot decode that audio, and 1003 ("cannot accept this type of data") says
  exactly that. A *malformed* ``mediaFormat`` (wrong types) is still 1007.
* Order -> ``PROTOCOL_ERROR`` (1002):

  - ``media``/``dtmf``/``mark`` before ``start``: there is no stream to attach
    audio to, and the audio format is not known yet.
  - a second ``start``: one WebSocket carries exactly one stream; a second
    start would silently swap call identity mid-transcript.
  - any frame after ``stop``: the stream is finished and its transcript may
    already be finalised.
  - ``connected`` after ``start`` (or twice): it is defined as the first message.
  - a ``streamSid`` other than the started stream's: frames of another call
    must never be mixed into this call's transcript.
  - ``stop.callSid`` other than the started call's, for the same reason.
  - ``sequenceNumber`` repeated or going backwards: duplicated or reordered
    audio would corrupt the transcript; WebSocket over TCP never reorders, so
    this can only be a broken or replaying sender.
  - ``media.timestamp`` going backwards within a track: downstream aligns
    words to call time using it. Equal timestamps are allowed.
  - ``media`` on a track not listed in ``start.tracks``: downstream allocates
    per-track state from ``StreamStarted.tracks``.

* ``start.callSid`` must be a guid as the API accepts it
  (:data:`callscribe.model.GUID_PATTERN`, matched whole) -> ``INVALID_PAYLOAD``
  (1007). It becomes the call's key in the Store and its id in the API, webhooks and
  file names, so NUL, control or bidi characters, ``/`` and ``..`` never get that far.
  Twilio's own CallSids (``CA`` + 32 hex digits) always match.

* A *forward* ``sequenceNumber`` gap is not an error: Twilio may drop frames
  under load and the right reaction is to keep transcribing. Each jump counts
  once in :attr:`TwilioStreamProtocol.sequence_gaps`; the number of skipped
  sequence numbers is summed in :attr:`TwilioStreamProtocol.frames_lost`.
  ``chunk`` is parsed but not checked for order: ``sequenceNumber`` already
  detects loss and reordering, and checking both would only double-report.
* ``connected`` is optional (``start`` may come first); ``customParameters``
  defaults to ``{}``; ``tracks`` defaults to ``("inbound",)`` (Twilio's
  default ``track="inbound_track"``). ``start`` may carry ``streamSid`` at the
  top level, inside ``start``, or both (then they must agree).
* Once an error has been raised the object is failed: every later
  :meth:`~TwilioStreamProtocol.receive` raises :class:`TwilioProtocolError`
  with the original close code and reason ``"stream already failed"``. The
  connection must be closed anyway; this stops a caller that ignores the first
  error from processing a half-validated stream.

Encoders
--------
:func:`encode_connected`, :func:`encode_start`, :func:`encode_media`,
:func:`encode_dtmf`, :func:`encode_mark` and :func:`encode_stop` build the
same frames the way Twilio does (numbers as strings, compact JSON). They do
not validate their arguments, so tests can also build wrong frames.
:class:`TwilioStreamWriter` numbers ``sequenceNumber`` and per-track
``chunk`` itself and is what the simulated Twilio client uses.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeAlias

from callscribe.model import GUID_PATTERN

__all__ = [
    "CloseCode",
    "Connected",
    "DtmfReceived",
    "Event",
    "MarkReceived",
    "MediaReceived",
    "StreamStarted",
    "StreamStopped",
    "TwilioProtocolError",
    "TwilioStreamProtocol",
    "TwilioStreamWriter",
    "encode_connected",
    "encode_dtmf",
    "encode_mark",
    "encode_media",
    "encode_start",
    "encode_stop",
]

MEDIA_TRACKS: Final[frozenset[str]] = frozenset({"inbound", "outbound"})
DTMF_TRACKS: Final[frozenset[str]] = frozenset({"inbound_track", "outbound_track"})
DTMF_DIGITS: Final[frozenset[str]] = frozenset("0123456789*#ABCD")
SUPPORTED_ENCODING: Final[str] = "audio/x-mulaw"
SUPPORTED_SAMPLE_RATE: Final[int] = 8000
SUPPORTED_CHANNELS: Final[int] = 1

MAX_REASON_BYTES: Final[int] = 120
_MAX_UINT: Final[int] = 2**63 - 1
_UINT_RE: Final[re.Pattern[str]] = re.compile(r"[0-9]{1,19}")


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455, section 7.4.1) this protocol can ask for."""

    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


def _clip_reason(reason: str) -> str:
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


class TwilioProtocolError(Exception):
    """A frame broke the protocol; close the WebSocket with ``close_code`` and ``reason``."""

    close_code: CloseCode
    reason: str

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        self.close_code = CloseCode(close_code)
        self.reason = _clip_reason(reason)
        super().__init__(self.close_code, self.reason)

    def __str__(self) -> str:
        return f"{self.reason} (close code {int(self.close_code)} {self.close_code.name})"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class StreamStarted:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str] = field(hash=False)
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class MediaReceived:
    track: str  # "inbound" | "outbound"
    chunk: int
    timestamp_ms: int  # since stream start
    payload: bytes = field(repr=False)  # decoded mu-law bytes


@dataclass(frozen=True)
class DtmfReceived:
    track: str  # as Twilio sends it: "inbound_track" (or "outbound_track")
    digit: str  # one of 0-9 * # A-D


@dataclass(frozen=True)
class MarkReceived:
    name: str


@dataclass(frozen=True)
class StreamStopped:
    call_sid: str


Event: TypeAlias = (
    Connected | StreamStarted | MediaReceived | DtmfReceived | MarkReceived | StreamStopped
)


# --------------------------------------------------------------------------- field helpers


def _show(value: object, limit: int = 24) -> str:
    """A safe, short rendering of an untrusted value for use in a close reason."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _invalid(reason: str) -> TwilioProtocolError:
    return TwilioProtocolError(CloseCode.INVALID_PAYLOAD, reason)


def _order(reason: str) -> TwilioProtocolError:
    return TwilioProtocolError(CloseCode.PROTOCOL_ERROR, reason)


def _obj(container: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = container.get(key)
    if value is None:
        raise _invalid(f"missing {path}")
    if not isinstance(value, dict):
        raise _invalid(f"{path} must be an object")
    return value


def _str(container: Mapping[str, Any], key: str, path: str, *, allow_empty: bool = False) -> str:
    value = container.get(key)
    if value is None:
        raise _invalid(f"missing {path}")
    if not isinstance(value, str):
        raise _invalid(f"{path} must be a string")
    if not value and not allow_empty:
        raise _invalid(f"{path} must not be empty")
    return value


def _uint(container: Mapping[str, Any], key: str, path: str) -> int:
    """A non-negative integer sent as a decimal string (Twilio) or a JSON integer."""
    value = container.get(key)
    if value is None:
        raise _invalid(f"missing {path}")
    if isinstance(value, str):
        if not _UINT_RE.fullmatch(value):
            raise _invalid(f"{path} must be a non-negative integer, got {_show(value)}")
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise _invalid(f"{path} must be an integer or a decimal string")
    if number < 0 or number > _MAX_UINT:
        raise _invalid(f"{path} out of range")
    return number


def _decode_payload(text: str, max_payload_bytes: int) -> bytes:
    # Reject before decoding: base64 of n bytes is 4*ceil(n/3) characters.
    if len(text) > 4 * -(-max_payload_bytes // 3):
        raise _invalid(f"media.payload of ~{len(text) * 3 // 4} bytes exceeds {max_payload_bytes}")
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("invalid base64 in media.payload") from None
    if len(payload) > max_payload_bytes:
        raise _invalid(f"media.payload of {len(payload)} bytes exceeds {max_payload_bytes}")
    return payload


# --------------------------------------------------------------------------- protocol


class TwilioStreamProtocol:
    """State machine for one Twilio Media Streams WebSocket connection.

    Feed every WebSocket message to :meth:`receive`; it returns the events the
    message produced (always exactly one today; a list so the contract can grow)
    or raises :class:`TwilioProtocolError`, after which the object is failed.
    """

    def __init__(self, *, max_frame_bytes: int = 16_384, max_payload_bytes: int = 8_000) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        self._max_frame_bytes = max_frame_bytes
        self._max_payload_bytes = max_payload_bytes
        self._connected = False
        self._started: StreamStarted | None = None
        self._stopped = False
        self._error: TwilioProtocolError | None = None
        self._last_sequence: int | None = None
        self._last_timestamp: dict[str, int] = {}
        self._frames_received = 0
        self._sequence_gaps = 0
        self._frames_lost = 0

    # ----------------------------------------------------------------- state

    @property
    def started(self) -> bool:
        return self._started is not None

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> TwilioProtocolError | None:
        """The first error raised, if any."""
        return self._error

    @property
    def stream(self) -> StreamStarted | None:
        """The ``start`` event, once received."""
        return self._started

    @property
    def stream_sid(self) -> str | None:
        return self._started.stream_sid if self._started else None

    @property
    def call_sid(self) -> str | None:
        return self._started.call_sid if self._started else None

    @property
    def frames_received(self) -> int:
        """Messages accepted so far (a message that raised is not counted)."""
        return self._frames_received

    @property
    def sequence_gaps(self) -> int:
        """How many times ``sequenceNumber`` jumped forward by more than one."""
        return self._sequence_gaps

    @property
    def frames_lost(self) -> int:
        """Total sequence numbers skipped by those jumps."""
        return self._frames_lost

    @property
    def last_sequence_number(self) -> int | None:
        return self._last_sequence

    # ----------------------------------------------------------------- input

    def receive(self, frame: str | bytes) -> list[Event]:
        """Process one WebSocket message. Raises :class:`TwilioProtocolError`."""
        if not isinstance(frame, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"frame must be str or bytes, not {type(frame).__name__}")
        if self._error is not None:
            raise TwilioProtocolError(self._error.close_code, "stream already failed")
        try:
            event = self._receive(frame)
        except TwilioProtocolError as exc:
            self._error = exc
            raise
        self._frames_received += 1
        return [event]

    def _receive(self, frame: str | bytes | bytearray | memoryview) -> Event:
        if self._stopped:
            raise _order("frame after stop")
        if not isinstance(frame, str):
            raise TwilioProtocolError(
                CloseCode.UNSUPPORTED_DATA, "binary frame not supported; Twilio sends JSON text"
            )
        self._check_size(frame)
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError and Python's int-digit limit.
            raise _invalid("frame is not valid JSON") from None
        if not isinstance(message, dict):
            raise _invalid("frame is not a JSON object")
        kind = message.get("event")
        if kind is None:
            raise _invalid("missing event")
        if not isinstance(kind, str):
            raise _invalid("event must be a string")
        if kind == "media":  # by far the most frequent; test it first
            return self._on_media(message)
        if kind == "start":
            return self._on_start(message)
        if kind == "connected":
            return self._on_connected(message)
        if kind == "dtmf":
            return self._on_dtmf(message)
        if kind == "mark":
            return self._on_mark(message)
        if kind == "stop":
            return self._on_stop(message)
        raise _invalid(f"unknown event {_show(kind)}")

    def _check_size(self, frame: str) -> None:
        limit = self._max_frame_bytes
        # UTF-8 size is between len(frame) and 4*len(frame): avoid encoding when possible.
        if len(frame) > limit:
            size = len(frame.encode("utf-8", "surrogatepass"))
        elif len(frame) * 4 <= limit:
            return
        else:
            size = len(frame.encode("utf-8", "surrogatepass"))
            if size <= limit:
                return
        raise TwilioProtocolError(
            CloseCode.MESSAGE_TOO_BIG, f"frame of {size} bytes exceeds {limit}"
        )

    # ----------------------------------------------------------------- per event

    def _on_connected(self, message: dict[str, Any]) -> Connected:
        if self._started is not None:
            raise _order("connected after start")
        if self._connected:
            raise _order("duplicate connected")
        event = Connected(
            protocol=_str(message, "protocol", "protocol"),
            version=_str(message, "version", "version"),
        )
        self._connected = True
        return event

    def _on_start(self, message: dict[str, Any]) -> StreamStarted:
        if self._started is not None:
            raise _order("duplicate start")
        sequence = _uint(message, "sequenceNumber", "sequenceNumber")
        start = _obj(message, "start", "start")

        outer_sid = message.get("streamSid")
        inner_sid = start.get("streamSid")
        if outer_sid is None and inner_sid is None:
            raise _invalid("missing streamSid")
        stream_sid = (
            _str(message, "streamSid", "streamSid")
            if outer_sid is not None
            else _str(start, "streamSid", "start.streamSid")
        )
        if inner_sid is not None and _str(start, "streamSid", "start.streamSid") != stream_sid:
            raise _invalid("start.streamSid does not match streamSid")

        call_sid = _str(start, "callSid", "start.callSid")
        if not GUID_PATTERN.fullmatch(call_sid):
            # The callSid becomes the call's guid (Store key, API, webhook, file names): refuse
            # what the API would refuse as a guid, so it can never carry NUL, bidi controls or
            # path separators. Real CallSids ("CA" + 32 hex digits) always match.
            raise _invalid(f"invalid start.callSid {_show(call_sid)}: not a call guid")
        account_sid = _str(start, "accountSid", "start.accountSid")

        raw_tracks = start.get("tracks")
        if raw_tracks is None:
            tracks: tuple[str, ...] = ("inbound",)
        else:
            if not isinstance(raw_tracks, list) or not raw_tracks:
                raise _invalid("start.tracks must be a non-empty array")
            for track in raw_tracks:
                if not isinstance(track, str) or track not in MEDIA_TRACKS:
                    raise _invalid(f"invalid track {_show(track)} in start.tracks")
            if len(set(raw_tracks)) != len(raw_tracks):
                raise _invalid("duplicate track in start.tracks")
            tracks = tuple(raw_tracks)

        raw_params = start.get("customParameters")
        custom_parameters: dict[str, str] = {}
        if raw_params is not None:
            if not isinstance(raw_params, dict):
                raise _invalid("start.customParameters must be an object")
            for key, value in raw_params.items():
                if not isinstance(value, str):
                    raise _invalid(f"start.customParameters[{_show(key)}] must be a string")
                custom_parameters[key] = value

        fmt = _obj(start, "mediaFormat", "start.mediaFormat")
        encoding = _str(fmt, "encoding", "start.mediaFormat.encoding")
        sample_rate = _uint(fmt, "sampleRate", "start.mediaFormat.sampleRate")
        channels = _uint(fmt, "channels", "start.mediaFormat.channels")
        if (encoding, sample_rate, channels) != (
            SUPPORTED_ENCODING,
            SUPPORTED_SAMPLE_RATE,
            SUPPORTED_CHANNELS,
        ):
            raise TwilioProtocolError(
                CloseCode.UNSUPPORTED_DATA,
                f"unsupported mediaFormat {_show(encoding, 32)} {sample_rate} Hz {channels} ch;"
                f" need {SUPPORTED_ENCODING} {SUPPORTED_SAMPLE_RATE} Hz 1 ch",
            )

        event = StreamStarted(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            tracks=tracks,
            custom_parameters=custom_parameters,
            encoding=encoding,
            sample_rate=sample_rate,
            channels=channels,
        )
        # A stream's sequence numbering starts at its start frame: no gap before it.
        self._last_sequence = sequence
        self._started = event
        return event

    def _require_started(self, kind: str) -> StreamStarted:
        if self._started is None:
            raise _order(f"{kind} frame before start")
        return self._started

    def _check_stream_sid(self, message: dict[str, Any], started: StreamStarted) -> None:
        sid = _str(message, "streamSid", "streamSid")
        if sid != started.stream_sid:
            raise _order(f"streamSid {_show(sid)} does not match started stream")

    def _check_sequence(self, sequence: int) -> None:
        """Raise on repeat/backwards; return normally if it may be committed."""
        last = self._last_sequence
        if last is not None and sequence <= last:
            if sequence == last:
                raise _order(f"sequenceNumber {sequence} repeated")
            raise _order(f"sequenceNumber {sequence} goes backwards from {last}")

    def _commit_sequence(self, sequence: int) -> None:
        last = self._last_sequence
        if last is not None and sequence > last + 1:
            self._sequence_gaps += 1
            self._frames_lost += sequence - last - 1
        self._last_sequence = sequence

    def _on_media(self, message: dict[str, Any]) -> MediaReceived:
        started = self._require_started("media")
        sequence = _uint(message, "sequenceNumber", "sequenceNumber")
        self._check_stream_sid(message, started)
        media = _obj(message, "media", "media")
        track = _str(media, "track", "media.track")
        if track not in MEDIA_TRACKS:
            raise _invalid(f"invalid media.track {_show(track)}")
        chunk = _uint(media, "chunk", "media.chunk")
        timestamp = _uint(media, "timestamp", "media.timestamp")
        payload = _decode_payload(
            _str(media, "payload", "media.payload", allow_empty=True), self._max_payload_bytes
        )
        if track not in started.tracks:
            raise _order(f"media on track {track} not announced in start.tracks")
        self._check_sequence(sequence)
        last_ts = self._last_timestamp.get(track)
        if last_ts is not None and timestamp < last_ts:
            raise _order(f"media.timestamp {timestamp} goes backwards from {last_ts} on {track}")
        self._commit_sequence(sequence)
        self._last_timestamp[track] = timestamp
        return MediaReceived(track=track, chunk=chunk, timestamp_ms=timestamp, payload=payload)

    def _on_dtmf(self, message: dict[str, Any]) -> DtmfReceived:
        started = self._require_started("dtmf")
        sequence = _uint(message, "sequenceNumber", "sequenceNumber")
        self._check_stream_sid(message, started)
        dtmf = _obj(message, "dtmf", "dtmf")
        track = _str(dtmf, "track", "dtmf.track")
        if track not in DTMF_TRACKS:
            raise _invalid(f"invalid dtmf.track {_show(track)}")
        digit = _str(dtmf, "digit", "dtmf.digit")
        if digit not in DTMF_DIGITS:
            raise _invalid(f"invalid dtmf.digit {_show(digit)}")
        self._check_sequence(sequence)
        self._commit_sequence(sequence)
        return DtmfReceived(track=track, digit=digit)

    def _on_mark(self, message: dict[str, Any]) -> MarkReceived:
        started = self._require_started("mark")
        sequence = _uint(message, "sequenceNumber", "sequenceNumber")
        self._check_stream_sid(message, started)
        mark = _obj(message, "mark", "mark")
        name = _str(mark, "name", "mark.name", allow_empty=True)
        self._check_sequence(sequence)
        self._commit_sequence(sequence)
        return MarkReceived(name=name)

    def _on_stop(self, message: dict[str, Any]) -> StreamStopped:
        started = self._require_started("stop")
        sequence = _uint(message, "sequenceNumber", "sequenceNumber")
        self._check_stream_sid(message, started)
        stop = _obj(message, "stop", "stop")
        call_sid = _str(stop, "callSid", "stop.callSid")
        if "accountSid" in stop:
            _str(stop, "accountSid", "stop.accountSid")
        if call_sid != started.call_sid:
            raise _order(f"stop.callSid {_show(call_sid)} does not match started call")
        self._check_sequence(sequence)
        self._commit_sequence(sequence)
        self._stopped = True
        return StreamStopped(call_sid=call_sid)


# --------------------------------------------------------------------------- encoders


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def encode_connected(*, protocol: str = "Call", version: str = "1.0.0") -> str:
    return _dumps({"event": "connected", "protocol": protocol, "version": version})


def encode_start(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    tracks: Iterable[str] = ("inbound", "outbound"),
    custom_parameters: Mapping[str, str] | None = None,
    sequence_number: int,
    encoding: str = SUPPORTED_ENCODING,
    sample_rate: int = SUPPORTED_SAMPLE_RATE,
    channels: int = SUPPORTED_CHANNELS,
) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "customParameters": dict(custom_parameters or {}),
                "mediaFormat": {
                    "encoding": encoding,
                    "sampleRate": sample_rate,
                    "channels": channels,
                },
            },
            "streamSid": stream_sid,
        }
    )


def encode_media(
    *,
    stream_sid: str,
    track: str,
    chunk: int,
    timestamp_ms: int,
    payload: bytes,
    sequence_number: int,
) -> str:
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": stream_sid,
        }
    )


def encode_dtmf(
    *, stream_sid: str, digit: str, sequence_number: int, track: str = "inbound_track"
) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": track, "digit": digit},
        }
    )


def encode_mark(*, stream_sid: str, name: str, sequence_number: int) -> str:
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def encode_stop(*, stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> str:
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )


class TwilioStreamWriter:
    """Produces one stream's frames in order, numbering them like Twilio does.

    ``sequenceNumber`` starts at 1 on ``start`` and is shared by all later
    frames; ``chunk`` starts at 1 per track. If ``media`` is given no
    ``timestamp_ms``, it is the track's audio duration so far (8 mu-law bytes
    per millisecond at 8 kHz), i.e. what Twilio reports for a gap-free stream.
    """

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self._sequence = 0
        self._chunks: dict[str, int] = {}
        self._audio_bytes: dict[str, int] = {}

    @property
    def sequence_number(self) -> int:
        """The last sequence number written (0 before ``start``)."""
        return self._sequence

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def skip(self, count: int = 1) -> None:
        """Burn ``count`` sequence numbers, as if frames were lost in transit."""
        self._sequence += count

    def connected(self) -> str:
        return encode_connected()

    def start(
        self,
        tracks: Iterable[str] = ("inbound", "outbound"),
        custom_parameters: Mapping[str, str] | None = None,
    ) -> str:
        return encode_start(
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            tracks=tuple(tracks),
            custom_parameters=custom_parameters,
            sequence_number=self._next_sequence(),
        )

    def media(self, track: str, payload: bytes, timestamp_ms: int | None = None) -> str:
        chunk = self._chunks.get(track, 0) + 1
        self._chunks[track] = chunk
        elapsed_bytes = self._audio_bytes.get(track, 0)
        self._audio_bytes[track] = elapsed_bytes + len(payload)
        if timestamp_ms is None:
            timestamp_ms = elapsed_bytes // (SUPPORTED_SAMPLE_RATE // 1000)
        return encode_media(
            stream_sid=self.stream_sid,
            track=track,
            chunk=chunk,
            timestamp_ms=timestamp_ms,
            payload=payload,
            sequence_number=self._next_sequence(),
        )

    def dtmf(self, digit: str, track: str = "inbound_track") -> str:
        return encode_dtmf(
            stream_sid=self.stream_sid,
            digit=digit,
            track=track,
            sequence_number=self._next_sequence(),
        )

    def mark(self, name: str) -> str:
        return encode_mark(
            stream_sid=self.stream_sid, name=name, sequence_number=self._next_sequence()
        )

    def stop(self) -> str:
        return encode_stop(
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            sequence_number=self._next_sequence(),
        )
