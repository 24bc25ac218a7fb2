"""Dynamic batching: utterances from many callers, transcribed together.

Requests wait in a bounded queue. A batcher task takes the first one, then keeps taking more
until it holds ``max_batch`` or ``max_wait_ms`` has passed since it took the first, and runs the
batch in a worker thread while it assembles the next (up to ``concurrency`` batches at once).
When the queue is full a request is refused at once (``QueueFullError``): under overload a
quick refusal lets the caller shed or go elsewhere, where an unbounded queue would make every
utterance late.
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


@dataclass
class _Pending:
    request: AsrRequest
    future: asyncio.Future[BatchedResult]
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
        self._queue: asyncio.Queue[_Pending] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

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
        self._queue = asyncio.Queue(maxsize=self.max_queue)
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
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.stats.rejected_full += 1
            raise QueueFullError(
                f"{self.max_queue} utterances already waiting for the ASR model"
            ) from None
        self.stats.accepted += 1
        return await pending.future

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
            try:
                batch.append(await self._queue.get())
                deadline = loop.time() + self.max_wait_s
                while len(batch) < self.max_batch:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                        except TimeoutError:
                            break
                    else:
                        batch.append(self._queue.get_nowait())
            except asyncio.CancelledError:
                # Only close() cancels, once the queue is empty: nothing is dropped.
                self._slots.release()
                raise
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

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
