"""Dynamic batching: utterances from many callers, transcribed together.

Requests wait in a bounded queue. A batcher task takes the first one, then keeps taking more
until it holds ``max_batch`` or ``max_wait_ms`` has passed since it took the first, and runs the
batch in a worker thread while it assembles the next (up to ``concurrency`` batches at once).
When the queue is full a request is refused at once (``QueueFullError``): under overload a
quick refusal lets the caller shed or go elsewhere, where an unbounded queue would make every
utterance late.

Interim decodes (``submit_interim``: the text so far of an utterance still being spoken) take
only room that no final wants. One is taken only while the batcher is assembling a batch (a
batch slot is free) with room left in it and no final waiting; otherwise it is refused at once
(``InterimShedError``). Finals always go first: the queue hands out every waiting final before
any interim, and a final that finds the batch being assembled full takes the place of an
interim in it (that interim is shed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from callscribe.asr.base import AsrRequest, AsrResult

log = logging.getLogger(__name__)

BatchTranscriber = Callable[[list[AsrRequest]], list[AsrResult]]
SAMPLE_RATE = 16_000  # of AsrRequest audio


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests: refused without waiting."""


class InterimShedError(Exception):
    """An interim decode refused (or displaced) so that no final waits for it."""


class BatcherClosedError(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass(frozen=True)
class BatchedResult:
    result: AsrResult
    queue_ms: float  # from submission until its batch started
    batch_size: int


@dataclass
class BatcherStats:
    accepted: int = 0
    rejected_full: int = 0
    interims_accepted: int = 0
    # Interims refused because a final was waiting or no batch had room, or displaced from
    # a batch by a final that arrived after them.
    interims_shed: int = 0
    completed: int = 0
    failed: int = 0
    batches: int = 0
    largest_batch: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0  # summed wall time of batches

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejectedOverloaded": self.rejected_full,
            "interimsAccepted": self.interims_accepted,
            "interimsShed": self.interims_shed,
            "completed": self.completed,
            "failed": self.failed,
            "batches": self.batches,
            "meanBatchSize": round((self.completed + self.failed) / self.batches, 3)
            if self.batches
            else 0.0,
            "largestBatch": self.largest_batch,
            "audioSeconds": round(self.audio_s, 3),
            "busySeconds": round(self.busy_s, 3),
        }


# Queue priorities: every waiting final is handed out before any interim.
_FINAL, _INTERIM = 0, 1


@dataclass
class _Pending:
    request: AsrRequest
    future: asyncio.Future[BatchedResult]
    interim: bool = False
    submitted: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        transcribe_batch: BatchTranscriber,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        concurrency: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or concurrency < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, max_queue and concurrency must be >= 1, max_wait_ms >= 0")
        self._transcribe_batch = transcribe_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.concurrency = concurrency
        self.stats = BatcherStats()
        # (priority, arrival, request): finals first, each kind in arrival order.
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Pending]] | None = None
        self._arrivals = 0
        self._finals_waiting = 0
        self._interims_waiting = 0
        # The size of the batch being assembled (a slot is held for it); None while every
        # slot is busy. What tells an interim whether it can start without delaying a final.
        self._assembling: int | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queue_depth(self) -> int:
        """Finals waiting for a batch (interims never wait for one)."""
        return self._finals_waiting

    @property
    def interims_waiting(self) -> int:
        """Interims accepted and not yet taken into a batch."""
        return self._interims_waiting

    @property
    def batches_in_flight(self) -> int:
        return len(self._running)

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the batcher task on the running event loop."""
        if self._loop_task is not None:
            raise RuntimeError("batcher already started")
        # Unbounded: ``max_queue`` bounds the finals (``submit``); interims are bounded by
        # the room in the batch being assembled (``submit_interim``).
        self._queue = asyncio.PriorityQueue()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="asr-batch"
        )
        self._loop_task = asyncio.get_running_loop().create_task(self._assemble_batches())

    async def submit(self, request: AsrRequest) -> BatchedResult:
        """Queue one request and wait for its result; refuse at once when full or closing."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        if self._closing:
            raise BatcherClosedError("the ASR worker is shutting down")
        if self._finals_waiting >= self.max_queue:
            self.stats.rejected_full += 1
            raise QueueFullError(f"{self.max_queue} utterances already waiting for the ASR model")
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self._put(pending)
        self.stats.accepted += 1
        return await pending.future

    async def submit_interim(self, request: AsrRequest) -> BatchedResult:
        """Decode an interim in the batch being assembled and wait for its result; refused
        at once (``InterimShedError``) unless it can start without delaying any final: a batch
        is being assembled, with room for it, and no final is waiting. A final that arrives
        while the batch is still being assembled and finds it full takes the interim's place
        (the interim then fails with ``InterimShedError`` too)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        if self._closing:
            raise BatcherClosedError("the ASR worker is shutting down")
        room = self.max_batch - self._assembling if self._assembling is not None else 0
        if self._finals_waiting or self._interims_waiting >= room:
            self.stats.interims_shed += 1
            raise InterimShedError(
                "a final is waiting for the ASR model"
                if self._finals_waiting
                else "no batch has room for an interim now"
            )
        pending = _Pending(request, asyncio.get_running_loop().create_future(), interim=True)
        self._put(pending)
        self.stats.interims_accepted += 1
        return await pending.future

    def _put(self, pending: _Pending) -> None:
        assert self._queue is not None
        self._arrivals += 1
        if pending.interim:
            self._interims_waiting += 1
        else:
            self._finals_waiting += 1
        self._queue.put_nowait((_INTERIM if pending.interim else _FINAL, self._arrivals, pending))

    def _taken(self, item: tuple[int, int, _Pending]) -> _Pending:
        pending = item[2]
        if pending.interim:
            self._interims_waiting -= 1
        else:
            self._finals_waiting -= 1
        return pending

    def retry_after_s(self) -> int:
        """A whole-second estimate of when the queue will have room again (at least 1 s)."""
        if not self.stats.batches:
            return 1
        mean_batch_s = self.stats.busy_s / self.stats.batches
        batches_ahead = math.ceil(self.queue_depth / self.max_batch) / self.concurrency
        return max(1, math.ceil(batches_ahead * mean_batch_s))

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop."""
        self._closing = True
        if self._queue is None or self._loop_task is None:
            return
        await self._queue.join()  # each item is marked done after its batch completed
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _assemble_batches(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch: list[_Pending] = []
            self._assembling = 0
            try:
                batch.append(self._taken(await self._queue.get()))
                self._assembling = 1
                deadline = loop.time() + self.max_wait_s
                while True:
                    if len(batch) >= self.max_batch:
                        if not self._final_displaces_interim(batch):
                            break
                    elif self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            item = await asyncio.wait_for(self._queue.get(), remaining)
                        except TimeoutError:
                            break
                        batch.append(self._taken(item))
                    else:
                        batch.append(self._taken(self._queue.get_nowait()))
                    self._assembling = len(batch)
            except asyncio.CancelledError:
                # Only close() cancels, once the queue is empty: nothing is dropped.
                self._slots.release()
                raise
            finally:
                self._assembling = None
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _final_displaces_interim(self, batch: list[_Pending]) -> bool:
        """In a full batch, a waiting final takes the place of an interim (which is shed):
        finals first. False when no final waits or the batch holds finals only."""
        assert self._queue is not None
        if not self._finals_waiting:
            return False
        interim = next((p for p in reversed(batch) if p.interim), None)
        if interim is None:
            return False
        batch.remove(interim)
        self._queue.task_done()
        self.stats.interims_shed += 1
        if not interim.future.done():
            interim.future.set_exception(
                InterimShedError("a final took this interim's place in the batch")
            )
        # The queue hands out finals before interims: this is a final.
        batch.append(self._taken(self._queue.get_nowait()))
        return True

    async def _run(self, batch: list[_Pending]) -> None:
        assert self._queue is not None and self._slots is not None
        live = [p for p in batch if not p.future.done()]  # a caller may have gone away
        try:
            if live:
                await self._transcribe(live)
        finally:
            for _ in batch:
                self._queue.task_done()
            self._slots.release()

    async def _transcribe(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        requests = [p.request for p in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._transcribe_batch, requests)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            if len(batch) > 1:
                # One bad utterance must not cost the others their transcripts: retry each
                # alone, so only the one that fails again gets the error.
                log.warning("a batch of %d failed (%r); retrying one by one", len(batch), exc)
                for pending in batch:
                    await self._transcribe([pending])
                return
            self._record(batch, started)
            self.stats.failed += 1
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        self._record(batch, started)
        self.stats.completed += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(
                    BatchedResult(
                        result=result,
                        queue_ms=(started - pending.submitted) * 1000,
                        batch_size=len(batch),
                    )
                )

    def _record(self, batch: list[_Pending], started: float) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.busy_s += time.perf_counter() - started
        self.stats.audio_s += sum(len(p.request.audio) for p in batch) / SAMPLE_RATE
