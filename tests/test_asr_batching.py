"""``DynamicBatcher`` on its own, with a stand-in transcriber held by a gate: batches close at
``max_batch`` or after ``max_wait_ms``, a full queue refuses, a failing utterance fails alone,
a caller that went away is skipped, closing finishes what was accepted, and interims take only
room no final wants."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.asr.batching import (
    BatcherClosedError,
    DynamicBatcher,
    InterimShedError,
    QueueFullError,
)

WAIT_S = 60.0
POISON = 13  # samples: the stand-in transcriber fails on such a request


class StandIn:
    """Transcribes a request as its sample count; fails a batch holding a poisoned one."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)

    def __call__(self, requests: list[AsrRequest]) -> list[AsrResult]:
        self.started.release()
        assert self.gate.wait(WAIT_S)
        sizes = [len(r.audio) for r in requests]
        self.batches.append(sizes)
        if POISON in sizes:
            raise ValueError("poisoned utterance")
        return [AsrResult(text=str(n)) for n in sizes]

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, WAIT_S)


def request(samples: int, *, interim: bool = False) -> AsrRequest:
    return AsrRequest(np.zeros(samples, dtype=np.float32), language="en", interim=interim)


async def started(**kwargs: float) -> tuple[DynamicBatcher, StandIn]:
    transcriber = StandIn()
    batcher = DynamicBatcher(transcriber, **kwargs)  # type: ignore[arg-type]
    batcher.start()
    return batcher, transcriber


async def wait_for_depth(batcher: DynamicBatcher, depth: int) -> None:
    for _ in range(int(WAIT_S * 100)):
        if batcher.queue_depth == depth:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue depth {batcher.queue_depth}, expected {depth}")


async def test_batches_close_at_max_batch() -> None:
    batcher, transcriber = await started(max_batch=3, max_wait_ms=0, max_queue=10)
    transcriber.gate.clear()
    first = asyncio.ensure_future(batcher.submit(request(100)))
    await transcriber.wait_started()
    rest = [asyncio.ensure_future(batcher.submit(request(101 + i))) for i in range(5)]
    await wait_for_depth(batcher, 5)
    transcriber.gate.set()
    results = [await first, *await asyncio.gather(*rest)]
    await batcher.close()
    assert transcriber.batches == [[100], [101, 102, 103], [104, 105]]
    assert [r.batch_size for r in results] == [1, 3, 3, 3, 2, 2]
    assert [r.result.text for r in results] == [str(n) for n in range(100, 106)]
    assert all(r.queue_ms >= 0 for r in results)
    assert batcher.stats.as_dict()["meanBatchSize"] == 2.0
    assert batcher.stats.largest_batch == 3


async def test_a_batch_waits_for_company_until_max_wait() -> None:
    # A long max_wait and room for two: the second request joins the first one's batch.
    batcher, transcriber = await started(max_batch=2, max_wait_ms=60_000, max_queue=10)
    first = asyncio.ensure_future(batcher.submit(request(1)))
    await asyncio.sleep(0.05)
    assert not first.done()
    second = await batcher.submit(request(2))
    assert (await first).batch_size == second.batch_size == 2
    assert transcriber.batches == [[1, 2]]
    await batcher.close()

    # A short one: a lone request is not kept waiting for a full batch.
    batcher, transcriber = await started(max_batch=8, max_wait_ms=20, max_queue=10)
    assert (await batcher.submit(request(3))).batch_size == 1
    await batcher.close()


async def test_a_full_queue_refuses_at_once() -> None:
    batcher, transcriber = await started(max_batch=1, max_wait_ms=0, max_queue=1)
    transcriber.gate.clear()
    running = asyncio.ensure_future(batcher.submit(request(1)))
    await transcriber.wait_started()
    queued = asyncio.ensure_future(batcher.submit(request(2)))
    await wait_for_depth(batcher, 1)
    with pytest.raises(QueueFullError, match="1 utterances already waiting"):
        await batcher.submit(request(3))
    assert batcher.retry_after_s() >= 1
    transcriber.gate.set()
    assert [(await running).result.text, (await queued).result.text] == ["1", "2"]
    assert batcher.stats.rejected_full == 1
    await batcher.close()


async def test_a_failing_utterance_fails_alone() -> None:
    batcher, transcriber = await started(max_batch=4, max_wait_ms=0, max_queue=10)
    transcriber.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(request(1)))
    await transcriber.wait_started()
    batch = [asyncio.ensure_future(batcher.submit(request(n))) for n in (20, POISON, 30)]
    await wait_for_depth(batcher, 3)
    transcriber.gate.set()
    await blocker
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert outcomes[0].result.text == "20" and outcomes[2].result.text == "30"
    assert isinstance(outcomes[1], ValueError)
    # The shared batch failed, then each was retried alone.
    assert transcriber.batches[1:] == [[20, POISON, 30], [20], [POISON], [30]]
    assert (batcher.stats.completed, batcher.stats.failed) == (3, 1)
    await batcher.close()


async def test_a_caller_that_went_away_is_not_transcribed() -> None:
    batcher, transcriber = await started(max_batch=4, max_wait_ms=0, max_queue=10)
    transcriber.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(request(1)))
    await transcriber.wait_started()
    gone = asyncio.ensure_future(batcher.submit(request(2)))
    kept = asyncio.ensure_future(batcher.submit(request(3)))
    await wait_for_depth(batcher, 2)
    gone.cancel()
    transcriber.gate.set()
    await blocker
    assert (await kept).result.text == "3"
    assert transcriber.batches == [[1], [3]]
    await batcher.close()


async def test_close_finishes_accepted_requests_and_refuses_new_ones() -> None:
    batcher, transcriber = await started(max_batch=2, max_wait_ms=0, max_queue=10)
    transcriber.gate.clear()
    accepted = [asyncio.ensure_future(batcher.submit(request(n))) for n in (1, 2, 3)]
    await transcriber.wait_started()
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.05)
    assert batcher.closing and not closing.done()
    with pytest.raises(BatcherClosedError):
        await batcher.submit(request(4))
    transcriber.gate.set()
    await closing
    assert [r.result.text for r in await asyncio.gather(*accepted)] == ["1", "2", "3"]
    assert sorted(n for b in transcriber.batches for n in b) == [1, 2, 3]


async def test_an_interim_is_taken_only_with_batch_room_and_no_final_waiting() -> None:
    batcher, transcriber = await started(max_batch=1, max_wait_ms=0, max_queue=10)
    transcriber.gate.clear()
    running = asyncio.ensure_future(batcher.submit(request(1)))
    await transcriber.wait_started()
    # The one batch slot is busy: an interim would wait for it, and so delay a later final.
    with pytest.raises(InterimShedError, match="no batch has room"):
        await batcher.submit_interim(request(50, interim=True))
    queued = asyncio.ensure_future(batcher.submit(request(2)))
    await wait_for_depth(batcher, 1)
    with pytest.raises(InterimShedError, match="a final is waiting"):
        await batcher.submit_interim(request(51, interim=True))
    transcriber.gate.set()
    assert [(await running).result.text, (await queued).result.text] == ["1", "2"]
    # Idle again: the interim is decoded at once.
    assert (await batcher.submit_interim(request(52, interim=True))).result.text == "52"
    assert transcriber.batches == [[1], [2], [52]]
    assert (batcher.stats.interims_accepted, batcher.stats.interims_shed) == (1, 2)
    await batcher.close()


async def test_a_final_takes_an_interims_place_in_a_full_batch() -> None:
    # A long max_wait: the batch the interim started waits for company.
    batcher, transcriber = await started(max_batch=2, max_wait_ms=60_000, max_queue=10)
    interim = asyncio.ensure_future(batcher.submit_interim(request(50, interim=True)))
    for _ in range(int(WAIT_S * 100)):
        if batcher.stats.interims_accepted == 1 and batcher.interims_waiting == 0:
            break
        await asyncio.sleep(0.01)
    assert batcher.interims_waiting == 0, "the interim was never taken into a batch"
    # Two finals arrive together: the first fills the batch, the second takes the interim's
    # place rather than wait for the next batch.
    finals = [asyncio.ensure_future(batcher.submit(request(n))) for n in (1, 2)]
    assert [r.batch_size for r in await asyncio.gather(*finals)] == [2, 2]
    with pytest.raises(InterimShedError, match="took this interim's place"):
        await interim
    assert transcriber.batches == [[1, 2]]
    assert batcher.stats.interims_shed == 1
    await batcher.close()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(StandIn(), max_batch=0, max_wait_ms=0, max_queue=1)
    with pytest.raises(ValueError):
        DynamicBatcher(StandIn(), max_batch=1, max_wait_ms=-1, max_queue=1)
