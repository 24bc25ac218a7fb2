"""Reading one call's Kinesis Video Stream: GetMedia, reconnect, resume, hand audio to the call.

Each reader runs its blocking GetMedia reads and the sans-IO demuxer in a thread of its own
(a live response blocks between fragments; a thread per contact keeps the event loop and the
shared thread pool free), and passes batches of :mod:`callscribe.connect.media` outputs to the
event loop through a bounded queue. When the loop does not keep up, the queue fills, the thread
stops reading, TCP pushes back on KVS, and the millis-behind-now of later fragments grows: that
is the metric that says a reader is falling behind.

A response that ends or breaks is followed by another GetMedia *at* the latest fragment read
(``FRAGMENT_NUMBER``), the demuxer skipping what was delivered already. Responses that bring no
new audio ``max_attempts_without_progress`` times in a row mean the producer has stopped: the
stream is over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from callscribe.config import ConnectSettings
from callscribe.connect.media import (
    AudioDiscarded,
    AudioReceived,
    ConnectMediaDemuxer,
    ContactChanged,
    FragmentCompleted,
    Output,
    StreamFailed,
)

log = logging.getLogger(__name__)

# How long a blocked hand-over to the event loop waits before checking for a stop.
_HANDOVER_POLL_S = 0.5
# Batches waiting for the event loop (each at most one read, ~64 KiB of media).
QUEUE_BATCHES = 256


@dataclass(frozen=True)
class StartSelector:
    kind: Literal["NOW", "FRAGMENT_NUMBER"]
    fragment_number: str | None = None

    def as_request(self) -> dict[str, str]:
        """GetMedia's StartSelector. FRAGMENT_NUMBER starts *at* the fragment, included."""
        if self.kind == "NOW":
            return {"StartSelectorType": "NOW"}
        assert self.fragment_number is not None
        return {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": self.fragment_number}


class MediaBody(Protocol):
    def read_some(self, max_bytes: int) -> bytes:
        """What has arrived (blocking until something has); b"" when the response is over."""
        ...

    def close(self) -> None: ...


class MediaSource(Protocol):
    def get_media(self, stream_arn: str, selector: StartSelector) -> MediaBody:
        """Blocking. Raises :class:`KvsAccessError` for what the caller must fix (no access,
        no such stream); anything else is taken as transient."""
        ...


class KvsAccessError(Exception):
    """The stream cannot be read with the tenant's setup (role, trust, stream ARN)."""


class ReaderEnd(StrEnum):
    STOPPED = "stopped"  # stop-streaming, or the call completed
    HANDED_OVER = "handed-over"  # a draining reader gave the call to another at a fragment's end
    CONTACT_CHANGED = "contact-changed"  # the stream now carries another contact
    END_OF_STREAM = "end-of-stream"  # the producer stopped writing
    STREAM_ERROR = "stream-error"  # KVS reported an error, or the audio is not Connect's
    FAILED = "failed"  # the stream could not be read (access lost, repeated errors)


@dataclass(frozen=True)
class ReaderFinished:
    reason: ReaderEnd
    detail: str


@dataclass
class ReaderStats:
    started_at: float = field(default_factory=time.time)
    bytes: int = 0
    fragments: int = 0
    blocks: int = 0
    responses: int = 0
    reconnects: int = 0
    lost_blocks: int = 0
    millis_behind_now: int | None = None
    max_millis_behind_now: int | None = None
    last_fragment: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes": self.bytes,
            "fragments": self.fragments,
            "responses": self.responses,
            "reconnects": self.reconnects,
            "lostBlocks": self.lost_blocks,
            "millisBehindNow": self.millis_behind_now,
            "maxMillisBehindNow": self.max_millis_behind_now,
            "lastFragment": self.last_fragment,
        }


Batch = list[Output | ReaderFinished]


class KvsStreamReader:
    """One stream, one thread. ``await connect()`` makes the first GetMedia request (so that
    access errors reach the start request), ``start()`` begins reading, :meth:`next_batch`
    returns what was read, ending with a :class:`ReaderFinished`; ``await stop()`` ends it."""

    def __init__(
        self,
        source: MediaSource,
        stream_arn: str,
        selector: StartSelector,
        settings: ConnectSettings,
        *,
        label: str,
        expected_contact_id: str | None = None,
        earlier: ConnectMediaDemuxer | None = None,
    ) -> None:
        self.source = source
        self.stream_arn = stream_arn
        self.selector = selector
        self.settings = settings
        self.label = label
        self.demuxer = ConnectMediaDemuxer(expected_contact_id)
        if earlier is not None:
            self.demuxer.carry_over(earlier)
        self.stats = ReaderStats()
        self.finished: ReaderFinished | None = None
        self._body: MediaBody | None = None
        self._body_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(QUEUE_BATCHES)
        self._lag_warned = False

    # the event loop's side ---------------------------------------------------------------------

    async def connect(self) -> None:
        body = await asyncio.to_thread(self.source.get_media, self.stream_arn, self.selector)
        self.stats.responses += 1
        with self._body_lock:
            self._body = body

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"kvs-reader {self.label}", daemon=True
        )
        self._thread.start()

    async def next_batch(self) -> Batch:
        return await self._queue.get()

    async def stop(self) -> None:
        self._stopping.set()
        self._close_body()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def stop_discarding(self) -> None:
        """Stop, throwing away what was read but not yet taken (a handover: another reader
        reads it again). The thread may wait on a full queue: taking batches frees it."""
        self._stopping.set()
        self._close_body()
        if self._thread is None:
            return
        joined = asyncio.get_running_loop().create_task(asyncio.to_thread(self._thread.join))
        while not joined.done():
            getting = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({joined, getting}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
        await joined
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the reader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            end = self._read()
        except Exception as exc:  # a bug must end this reader, not hang the call
            log.exception("reader %s failed", self.label)
            end = ReaderFinished(ReaderEnd.FAILED, f"internal error: {exc!r}")
        self.finished = end
        self._close_body()
        self._hand_over([end], final=True)

    def _read(self) -> ReaderFinished:
        selector = self.selector
        attempts_without_progress = 0
        while True:
            if self._stopping.is_set():
                return ReaderFinished(ReaderEnd.STOPPED, "stopped")
            body = self._take_body()
            if body is None:
                try:
                    body = self.source.get_media(self.stream_arn, selector)
                except KvsAccessError as exc:
                    return ReaderFinished(ReaderEnd.FAILED, str(exc))
                except Exception as exc:
                    attempts_without_progress += 1
                    log.warning("reader %s: GetMedia failed (%s)", self.label, exc)
                    if attempts_without_progress >= self.settings.max_attempts_without_progress:
                        return ReaderFinished(ReaderEnd.FAILED, f"GetMedia keeps failing: {exc}")
                    self._backoff(attempts_without_progress)
                    continue
                self.stats.responses += 1
                self.stats.reconnects += 1
                with self._body_lock:
                    self._body = body
                if self._stopping.is_set():
                    return ReaderFinished(ReaderEnd.STOPPED, "stopped")
            progress, end = self._read_body(body)
            if end is not None:
                return end
            if self._stopping.is_set():
                return ReaderFinished(ReaderEnd.STOPPED, "stopped")
            attempts_without_progress = 0 if progress else attempts_without_progress + 1
            if attempts_without_progress >= self.settings.max_attempts_without_progress:
                return ReaderFinished(
                    ReaderEnd.END_OF_STREAM,
                    f"{attempts_without_progress} GetMedia responses brought nothing new",
                )
            resume = self.demuxer.resume_fragment
            selector = StartSelector("FRAGMENT_NUMBER", resume) if resume else self.selector
            if not progress:
                self._backoff(attempts_without_progress)

    def _take_body(self) -> MediaBody | None:
        with self._body_lock:
            return self._body

    def _read_body(self, body: MediaBody) -> tuple[bool, ReaderFinished | None]:
        """Read one response to its end. (new audio or fragments came, how the reader ends)."""
        progress = False
        self.demuxer.new_body()
        try:
            while not self._stopping.is_set():
                chunk = body.read_some(self.settings.read_chunk_bytes)
                if not chunk:
                    break
                self.stats.bytes += len(chunk)
                outputs = self.demuxer.feed(chunk)
                if outputs:
                    progress = self._note(outputs) or progress
                    end = self._terminal(outputs)
                    if not self._hand_over(list(outputs)) or end is not None:
                        return progress, end
        except Exception as exc:
            if not self._stopping.is_set():
                log.info("reader %s: the GetMedia response broke (%s); resuming", self.label, exc)
        finally:
            self._close_body()
        outputs = self.demuxer.end_of_body()
        if outputs and not self._stopping.is_set():
            self._note(outputs)
            self._hand_over(list(outputs))
        return progress, None

    def _note(self, outputs: list[Output]) -> bool:
        progress = False
        for output in outputs:
            if isinstance(output, AudioReceived):
                self.stats.blocks += 1
                progress = True
            elif isinstance(output, FragmentCompleted):
                self.stats.fragments += 1
                self.stats.last_fragment = output.fragment_number
                if output.blocks_delivered:
                    progress = True
                behind = output.millis_behind_now
                if behind is not None:
                    self.stats.millis_behind_now = behind
                    self.stats.max_millis_behind_now = max(
                        behind, self.stats.max_millis_behind_now or 0
                    )
                    self._watch_lag(behind)
            elif isinstance(output, AudioDiscarded) and output.lost:
                self.stats.lost_blocks += output.blocks
                log.warning(
                    "reader %s: fragment %s: corrupt data, %d blocks lost (%s)",
                    self.label,
                    output.fragment_number,
                    output.blocks,
                    output.reason,
                )
            elif isinstance(output, AudioDiscarded):
                log.debug(
                    "reader %s: fragment %s: %d blocks to be read again (%s)",
                    self.label,
                    output.fragment_number,
                    output.blocks,
                    output.reason,
                )
        return progress

    def _watch_lag(self, behind: int) -> None:
        if behind > self.settings.lag_warning_ms and not self._lag_warned:
            self._lag_warned = True
            log.warning("reader %s: %d ms behind the stream", self.label, behind)
        elif behind <= self.settings.lag_warning_ms // 2 and self._lag_warned:
            self._lag_warned = False
            log.info("reader %s: caught up (%d ms behind)", self.label, behind)

    @staticmethod
    def _terminal(outputs: list[Output]) -> ReaderFinished | None:
        for output in outputs:
            if isinstance(output, ContactChanged):
                return ReaderFinished(
                    ReaderEnd.CONTACT_CHANGED,
                    f"fragment {output.fragment_number} belongs to contact {output.found}",
                )
            if isinstance(output, StreamFailed):
                return ReaderFinished(ReaderEnd.STREAM_ERROR, output.reason)
        return None

    def _hand_over(self, batch: Batch, final: bool = False) -> bool:
        """Queue a batch for the event loop, waiting while it is full. False if it was given up
        (a stop, or the loop is gone)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(batch), loop)
        except RuntimeError:
            return False
        while True:
            try:
                future.result(timeout=_HANDOVER_POLL_S)
                return True
            except concurrent.futures.TimeoutError:
                if loop.is_closed() or (self._stopping.is_set() and not final):
                    future.cancel()
                    return False
            except (concurrent.futures.CancelledError, RuntimeError):
                return False

    def _backoff(self, attempt: int) -> None:
        self._stopping.wait(self.settings.retry_backoff_s * (2 ** (attempt - 1)))

    def _close_body(self) -> None:
        with self._body_lock:
            body, self._body = self._body, None
        if body is not None:
            # Closing a broken connection may fail; it is closed either way.
            with contextlib.suppress(Exception):
                body.close()
