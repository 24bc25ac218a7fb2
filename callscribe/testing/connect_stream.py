"""A simulated Amazon Connect media stream in Kinesis Video Streams, for tests and tools.

:func:`connect_fragments` cuts a two-party call (customer and agent PCM) into Connect-shaped
fragments (:mod:`callscribe.testing.mkv_writer`). :class:`SimulatedKvsStream` plays them as a
live stream: fragment *i* exists once the producer has written it (paced at ``speed`` × real
time from the moment the stream starts), and :meth:`SimulatedKvsStream.get_media` answers a
GetMedia request the way KVS does: from the fragment being produced (``NOW``) or *at* a given
fragment (``FRAGMENT_NUMBER``), each fragment followed by GetMedia's trailer with the
millis-behind-now measured when it is sent, the response blocking while the next fragment is
not written yet. A response can be made to break after a number of bytes (a dropped
connection).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from callscribe.audio import TELEPHONE_RATE
from callscribe.testing.mkv_writer import FragmentAudio, connect_fragment

# Real fragment numbers are 47-digit decimals that grow by a large, irregular step.
FIRST_FRAGMENT_NUMBER = 91343852333181432392682062607743920146159169392
FRAGMENT_NUMBER_STEP = 4951760157141521099585009664


@dataclass(frozen=True)
class SimulatedFragment:
    index: int
    number: str
    producer_time_ms: int
    duration_ms: int
    contact_id: str | None
    audio: FragmentAudio
    legacy: bool = False
    mime_type: str | None = "audio/L16;rate=8000;channels=1;"

    def encode(self, trailer: tuple[int, str] | None) -> bytes:
        return connect_fragment(
            fragment_number=self.number,
            producer_time_ms=self.producer_time_ms,
            server_time_ms=self.producer_time_ms + 120,
            audio=self.audio,
            contact_id=self.contact_id,
            mime_type=self.mime_type,
            legacy=self.legacy,
            trailer=trailer,
        )

    @property
    def end_ms(self) -> int:
        return self.producer_time_ms + self.duration_ms


def fragment_number(index: int) -> str:
    return str(FIRST_FRAGMENT_NUMBER + index * FRAGMENT_NUMBER_STEP)


def connect_fragments(
    customer: np.ndarray,
    agent: np.ndarray | None,
    *,
    contact_id: str | None,
    start_time_ms: int = 1_726_677_688_724,
    fragment_ms: int = 1000,
    block_ms: int = 64,
    first_index: int = 0,
    legacy: bool = False,
) -> list[SimulatedFragment]:
    """Cut 8 kHz int16 audio into fragments of ``fragment_ms`` holding blocks of ``block_ms``
    (the last block of a fragment is shorter when the two do not divide)."""
    samples_per_ms = TELEPHONE_RATE // 1000
    total = len(customer) if agent is None else max(len(customer), len(agent))
    fragments = []
    for n, start in enumerate(range(0, total, fragment_ms * samples_per_ms)):
        end = min(total, start + fragment_ms * samples_per_ms)
        tracks: list[list[tuple[int, bytes]]] = [[], []]
        for track, pcm in enumerate((customer, agent)):
            if pcm is None:
                continue
            for block_start in range(start, end, block_ms * samples_per_ms):
                block_end = min(end, block_start + block_ms * samples_per_ms)
                block = pcm[block_start:block_end]
                if len(block):
                    relative_ms = (block_start - start) // samples_per_ms
                    tracks[track].append((relative_ms, block.astype("<i2").tobytes()))
        index = first_index + n
        fragments.append(
            SimulatedFragment(
                index=index,
                number=fragment_number(index),
                producer_time_ms=start_time_ms + start // samples_per_ms,
                duration_ms=(end - start) // samples_per_ms,
                contact_id=contact_id,
                audio=FragmentAudio(customer=tracks[0], agent=tracks[1]),
                legacy=legacy,
            )
        )
    return fragments


class ConnectionDropped(Exception):
    """Raised by a simulated response that breaks (replaced by urllib3's error when present)."""


def _protocol_error(message: str) -> Exception:
    try:
        from urllib3.exceptions import ProtocolError
    except ImportError:  # pragma: no cover - urllib3 comes with botocore
        return ConnectionDropped(message)
    return ProtocolError(message)


@dataclass
class GetMediaRequest:
    selector: dict[str, str]
    first_index: int
    at: float


class SimulatedKvsStream:
    """A live stream of fragments; thread-safe (each response is read by its own thread)."""

    def __init__(
        self,
        fragments: Sequence[SimulatedFragment],
        *,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        started_at: float | None = None,
        ends: bool = True,
    ) -> None:
        if not fragments:
            raise ValueError("a stream needs fragments")
        self.fragments = list(fragments)
        self.speed = speed
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        # True: a response ends after the last fragment (the producer stopped); False: it waits.
        self.ends = ends
        self.requests: list[GetMediaRequest] = []
        self.millis_behind_now: list[int] = []
        self._lock = threading.Lock()

    @property
    def start_ms(self) -> int:
        return self.fragments[0].producer_time_ms

    def stream_time_ms(self) -> float:
        return self.start_ms + (self.clock() - self.started_at) * self.speed * 1000

    def available_at(self, fragment: SimulatedFragment) -> float:
        """When (on ``clock``) the producer has written the whole fragment."""
        return self.started_at + (fragment.end_ms - self.start_ms) / 1000 / self.speed

    def index_of(self, number: str) -> int:
        for fragment in self.fragments:
            if fragment.number == number:
                return fragment.index - self.fragments[0].index
        raise KeyError(number)

    def get_media(
        self, selector: dict[str, str], *, drop_after_bytes: int | None = None
    ) -> SimulatedResponse:
        kind = selector["StartSelectorType"]
        if kind == "NOW":
            now = self.stream_time_ms()
            first = next(
                (i for i, f in enumerate(self.fragments) if f.end_ms > now), len(self.fragments)
            )
        elif kind == "FRAGMENT_NUMBER":
            first = self.index_of(selector["AfterFragmentNumber"])
        else:
            raise ValueError(f"unsupported StartSelectorType {kind}")
        with self._lock:
            self.requests.append(GetMediaRequest(dict(selector), first, self.clock()))
        return SimulatedResponse(self, first, drop_after_bytes)

    def trailer_for(self, fragment: SimulatedFragment) -> tuple[int, str]:
        behind = max(0, round(self.stream_time_ms() - fragment.end_ms))
        with self._lock:
            self.millis_behind_now.append(behind)
        return behind, fragment.number


@dataclass
class SimulatedResponse:
    """A GetMedia response body (what botocore's StreamingBody wraps): blocking ``read`` and,
    like urllib3's response, ``read1`` that returns what has arrived."""

    stream: SimulatedKvsStream
    next_index: int
    drop_after_bytes: int | None
    sent: int = 0
    closed: bool = False
    _pending: bytes = b""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next_bytes(self) -> bytes:
        if self._pending:
            return self._pending
        if self.next_index >= len(self.stream.fragments):
            if self.stream.ends:
                return b""
            while not self.closed:  # the producer is silent: KVS keeps the response open
                time.sleep(0.05)
            return b""
        fragment = self.stream.fragments[self.next_index]
        while not self.closed:
            wait = self.stream.available_at(fragment) - self.stream.clock()
            if wait <= 0:
                break
            time.sleep(min(wait, 0.05))
        if self.closed:
            return b""
        self.next_index += 1
        self._pending = fragment.encode(self.stream.trailer_for(fragment))
        return self._pending

    def read1(self, amt: int = -1) -> bytes:
        with self._lock:
            data = self._next_bytes()
            if not data:
                return b""
            if amt is not None and amt > 0:
                data = data[:amt]
            if self.drop_after_bytes is not None and self.sent + len(data) > self.drop_after_bytes:
                data = data[: self.drop_after_bytes - self.sent]
                if not data:
                    self.closed = True
                    raise _protocol_error("Connection broken: simulated drop")
            self._pending = self._pending[len(data) :]
            self.sent += len(data)
            return data

    def read(self, amt: int | None = None) -> bytes:
        if amt is None or amt < 0:
            chunks = []
            while chunk := self.read1():
                chunks.append(chunk)
            return b"".join(chunks)
        return self.read1(amt)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def two_party_pcm(customer: np.ndarray, agent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad the shorter track with silence so both cover the call."""
    length = max(len(customer), len(agent))
    pad = lambda pcm: np.concatenate([pcm, np.zeros(length - len(pcm), dtype=np.int16)])  # noqa: E731
    return pad(customer.astype(np.int16)), pad(agent.astype(np.int16))
