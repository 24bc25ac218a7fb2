"""Gateways spread utterances over the ASR workers behind one name and retry the ones a worker
refuses: ``RemoteAsrEngine`` against real worker apps (``callscribe.asr.worker``) on the
loopback addresses 127.0.0.1-3 sharing one port, so that a name the injected resolver answers
with several addresses really is several workers. Behind each worker app, a fast deterministic
stand-in for Whisper says which worker heard the utterance; a closed gate holds its batches, so
the test decides when a worker's queue is full. Interim results go only to an idle worker and
never make a final wait."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette

from callscribe.asr.base import (
    AsrInterimShedError,
    AsrOverloadedError,
    AsrRequest,
    AsrResult,
    AsrUnavailableError,
)
from callscribe.asr.factory import make_asr_engine
from callscribe.asr.remote import RemoteAsrEngine, pcm16_bytes, resolve_addresses
from callscribe.asr.worker import TRANSCRIBE_PATH, create_worker_app, worker_uvicorn_config
from callscribe.auth import create_api_key
from callscribe.config import AsrSettings, AsrWorkerSettings, Settings
from callscribe.endpointing import Utterance
from callscribe.model import AutotranscribeParams, Namespace, RedactionOutput
from callscribe.server import LocalRuntime, healthz_route
from callscribe.store.base import CallKey
from callscribe.transcription import MessageSequence, Speaker

WAIT_S = 60.0  # generous: other test suites share this machine's cores
NAME = "asr.test.internal"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
ONE_SECOND = np.full(16_000, 0.01, dtype=np.float32)
# A full worker's queue: one utterance being transcribed, one waiting; a third is refused.
SMALL_QUEUE = {"max_batch": 1, "max_queue": 1}


class NamedEngine:
    """Answers which worker heard the utterance, at once, unless the test holds its gate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = threading.Event()
        self.gate.set()
        # Each request it transcribed: True for an interim.
        self.interims_heard: list[bool] = []

    @property
    def supported_languages(self) -> list[str]:
        return ["en", "es"]

    def transcribe_batch(self, requests: list[AsrRequest]) -> list[AsrResult]:
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self.interims_heard += [r.interim for r in requests]
        return [
            AsrResult(
                text=f"heard by {self.name}" + (" as an interim" if r.interim else ""),
                language=r.language or "en",
                audio_ms=len(r.audio) * 1000 // 16_000,
                processing_ms=1.0,
            )
            for r in requests
        ]


@dataclass
class Worker:
    address: str
    port: int
    engine: NamedEngine
    server: uvicorn.Server
    task: asyncio.Task[None]
    # The Host header of each transcription request it received.
    hosts: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT_S) as client:
            return (await client.get("/healthz")).json()

    async def completed(self) -> int:
        return int((await self.health())["counters"]["completed"])

    async def wait_until(self, condition: Callable[[dict[str, Any]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition(health := await self.health()):
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.engine.gate.set()
        self.server.should_exit = True
        await self.task


def bind_one_port(count: int) -> list[socket.socket]:
    """Listening-ready sockets on the first ``count`` loopback addresses, all on one port."""
    for _ in range(50):
        sockets: list[socket.socket] = []
        try:
            for address in ADDRESSES[:count]:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.bind((address, sockets[0].getsockname()[1] if len(sockets) > 1 else 0))
        except OSError:  # that port is taken on another address: another one
            for sock in sockets:
                sock.close()
            continue
        return sockets
    raise RuntimeError("no port free on every loopback address")


def recording_hosts(app: Any, hosts: list[str]) -> Any:
    """The ASGI app, noting the Host header of each transcription request."""

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == TRANSCRIBE_PATH:
            hosts.append(dict(scope["headers"]).get(b"host", b"").decode())
        await app(scope, receive, send)

    return recording


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Serve a worker app on a bound socket; every worker is stopped at the end."""
    started: list[Worker] = []

    async def start(sock: socket.socket, **overrides: Any) -> Worker:
        address, port = sock.getsockname()
        settings = AsrWorkerSettings(**{"max_wait_ms": 0, **overrides})
        engine = NamedEngine(address)
        hosts: list[str] = []
        app = recording_hosts(create_worker_app(engine, settings), hosts)
        server = uvicorn.Server(worker_uvicorn_config(app, settings))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        worker = Worker(address, port, engine, server, task, hosts)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if not worker.task.done():
            await worker.stop()


@pytest.fixture
def start_workers(
    start_worker: Callable[..., Awaitable[Worker]],
) -> Callable[..., Awaitable[list[Worker]]]:
    """One worker per settings dict given, on 127.0.0.1, .2, .3 and one port."""

    async def start(*settings: dict[str, Any]) -> list[Worker]:
        sockets = bind_one_port(len(settings))
        return [await start_worker(s, **o) for s, o in zip(sockets, settings, strict=True)]

    return start


class Answer:
    """The name's DNS answer, which the test changes; counts the lookups."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.lookups = 0

    def __call__(self, host: str) -> list[str]:
        if host != NAME:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: Name or service not known")
        self.lookups += 1
        return list(self.addresses)


def engine_for(port: int, answer: Answer, **settings: Any) -> RemoteAsrEngine:
    return RemoteAsrEngine(
        f"http://{NAME}:{port}", **{"timeout_s": WAIT_S, **settings}, resolve=answer
    )


async def transcribe_many(engine: RemoteAsrEngine, count: int) -> Counter[str]:
    """``count`` utterances at once; how many each worker transcribed, by its address."""
    results = await asyncio.gather(
        *(engine.transcribe(AsrRequest(ONE_SECOND, "en")) for _ in range(count))
    )
    return Counter(r.text.removeprefix("heard by ") for r in results)


async def completed(workers: list[Worker]) -> dict[str, int]:
    return {w.address: await w.completed() for w in workers}


async def post(worker: Worker) -> httpx.Response:
    async with httpx.AsyncClient(base_url=worker.url, timeout=WAIT_S) as client:
        return await client.post(
            TRANSCRIBE_PATH,
            params={"language": "en"},
            content=pcm16_bytes(ONE_SECOND),
            headers={"content-type": "application/octet-stream"},
        )


async def fill(worker: Worker) -> list[asyncio.Task[httpx.Response]]:
    """Hold a SMALL_QUEUE worker's model and fill its queue: from now on it answers 503.
    Returns the two requests it holds (they finish once its gate opens)."""
    worker.engine.gate.clear()
    loop = asyncio.get_running_loop()
    running = loop.create_task(post(worker))
    await worker.wait_until(lambda h: h["batchesInFlight"] == 1 and h["queueDepth"] == 0)
    waiting = loop.create_task(post(worker))
    await worker.wait_until(lambda h: h["queueDepth"] == 1)
    return [running, waiting]


# ------------------------------------------------------------------ spreading


async def test_utterances_spread_over_every_worker_behind_the_name(
    start_workers: Callable[..., Awaitable[list[Worker]]],
) -> None:
    workers = await start_workers({}, {}, {})
    port = workers[0].port
    answer = Answer(list(ADDRESSES))
    engine = engine_for(port, answer)
    try:
        heard = await transcribe_many(engine, 60)
        # One after another, where no worker has fewer requests outstanding than another,
        # the worker is drawn at random: still every one gets some.
        one_by_one = Counter[str]()
        for _ in range(30):
            result = await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
            one_by_one[result.text.removeprefix("heard by ")] += 1
    finally:
        await engine.close()

    assert set(heard) == set(ADDRESSES), heard
    assert all(count >= 12 for count in heard.values()), heard  # at least 20 % each
    assert set(one_by_one) == set(ADDRESSES), one_by_one
    # The workers' own counters agree: each transcribed what it said it did.
    assert await completed(workers) == {a: heard[a] + one_by_one[a] for a in ADDRESSES}
    # Sent to each worker's address, named as the service: the Host header of the URL.
    for worker in workers:
        assert set(worker.hosts) == {f"{NAME}:{port}"}, worker.hosts
    # 90 utterances, 60 of them at once, and the name was looked up once.
    assert answer.lookups == 1
    counters = engine.worker_counters()
    assert counters["workers"] == 3 and counters["workersPassedOver"] == 0
    assert (counters["requests"], counters["retried"], counters["givenUp"]) == (90, 0, 0)


async def test_a_worker_added_to_the_name_gets_utterances_after_the_refresh(
    start_workers: Callable[..., Awaitable[list[Worker]]],
) -> None:
    workers = await start_workers({}, {}, {})
    first, second, added = ADDRESSES
    answer = Answer([first, second])
    engine = engine_for(workers[0].port, answer, dns_refresh_s=0.2)

    async def until_workers(count: int) -> None:
        """Utterances go on while the name is looked up again in the background."""
        deadline = time.monotonic() + WAIT_S
        while engine.worker_counters()["workers"] != count:
            assert time.monotonic() < deadline, engine.worker_counters()
            await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
            await asyncio.sleep(0.05)

    try:
        before = await transcribe_many(engine, 20)
        assert before == {first: 10, second: 10}

        answer.addresses = [first, second, added]  # a new worker task registered
        await until_workers(3)
        after = await transcribe_many(engine, 30)
        assert after[added] >= 6, after  # at least 20 %
        assert set(after) == set(ADDRESSES), after

        answer.addresses = [second, added]  # the first one's task stopped
        await until_workers(2)
        without_first = await transcribe_many(engine, 30)
        assert set(without_first) == {second, added}, without_first
    finally:
        await engine.close()
    assert answer.lookups >= 3


# ------------------------------------------------------------------ interim results


async def test_an_interim_goes_to_an_idle_worker_and_is_decoded_as_an_interim(
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    (sock,) = bind_one_port(1)
    worker = await start_worker(sock)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    try:
        decoding = engine.start_interim(AsrRequest(ONE_SECOND, "en"))
        assert decoding is not None
        result = await decoding
        counters = engine.worker_counters()
    finally:
        await engine.close()
    assert result.text == "heard by 127.0.0.1 as an interim"
    assert worker.engine.interims_heard.count(True) == 1  # beside the warm-up's final
    assert (counters["interims"], counters["interimsShed"]) == (1, 0)
    assert (await worker.health())["counters"]["interimsAccepted"] == 1


async def test_with_a_final_waiting_an_interim_is_shed_at_once_and_the_worker_still_takes_finals(
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    (sock,) = bind_one_port(1)
    worker = await start_worker(sock, max_batch=1, max_queue=4)
    # One final being transcribed (held by the gate), one waiting behind it.
    held = await fill(worker)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    try:
        # This client has nothing outstanding there, so it asks; the worker refuses while
        # its gate is still closed: the interim never waited for the finals.
        decoding = engine.start_interim(AsrRequest(ONE_SECOND, "en"))
        assert decoding is not None
        with pytest.raises(AsrInterimShedError, match="interim_shed: a final is waiting"):
            await decoding
        async with httpx.AsyncClient(base_url=worker.url, timeout=WAIT_S) as client:
            refused = await client.post(
                TRANSCRIBE_PATH,
                params={"language": "en", "interim": "true"},
                content=pcm16_bytes(ONE_SECOND),
                headers={"content-type": "application/octet-stream"},
            )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "interim_shed"
        assert "retry-after" not in refused.headers
        counters = engine.worker_counters()
        # The worker is not passed over: it still takes finals.
        assert (counters["interimsShed"], counters["workersPassedOver"]) == (1, 0)
        worker.engine.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await engine.transcribe(AsrRequest(ONE_SECOND, "en"))).text == (
            "heard by 127.0.0.1"
        )
    finally:
        await engine.close()
    assert True not in worker.engine.interims_heard
    health = await worker.health()
    assert (health["counters"]["interimsAccepted"], health["counters"]["interimsShed"]) == (0, 2)


async def test_start_interim_sheds_when_every_worker_has_this_clients_requests(
    start_workers: Callable[..., Awaitable[list[Worker]]],
) -> None:
    workers = await start_workers({}, {})
    engine = engine_for(workers[0].port, Answer(list(ADDRESSES[:2])))
    try:
        assert engine.start_interim(AsrRequest(ONE_SECOND, "en")) is None  # none known yet
        await transcribe_many(engine, 2)  # the name is looked up; both workers known
        for worker in workers:
            worker.engine.gate.clear()
        # Two finals: one to each worker (the fewest outstanding), both held there.
        finals = [
            asyncio.ensure_future(engine.transcribe(AsrRequest(ONE_SECOND, "en"))) for _ in workers
        ]
        for worker in workers:
            await worker.wait_until(lambda h: h["batchesInFlight"] == 1)
        assert engine.start_interim(AsrRequest(ONE_SECOND, "en")) is None
        for worker in workers:
            worker.engine.gate.set()
        await asyncio.gather(*finals)
        decoding = engine.start_interim(AsrRequest(ONE_SECOND, "en"))
        assert decoding is not None
        assert (await decoding).text.endswith(" as an interim")
        counters = engine.worker_counters()
    finally:
        await engine.close()
    assert (counters["interims"], counters["interimsShed"]) == (1, 2)
    assert sorted(sum(w.engine.interims_heard) for w in workers) == [0, 1]


async def test_a_process_with_a_remote_asr_decodes_interims(
    start_worker: Callable[..., Awaitable[Worker]], tmp_path: Path
) -> None:
    (sock,) = bind_one_port(1)
    worker = await start_worker(sock)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    runtime = LocalRuntime.build(Settings(data_dir=tmp_path / "data"), asr=engine)
    try:
        assert runtime.interims is not None and runtime.interims.engine is engine
    finally:
        await runtime.shutdown()
        await engine.close()


# ------------------------------------------------------------------ refusals and failures


async def test_a_worker_with_a_full_queue_passes_the_utterance_to_another(
    start_workers: Callable[..., Awaitable[list[Worker]]],
) -> None:
    full_a, full_b, free = await start_workers(SMALL_QUEUE, SMALL_QUEUE, {})
    held = [*await fill(full_a), *await fill(full_b)]
    refused = await post(full_a)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1

    engine = engine_for(free.port, Answer(list(ADDRESSES)))
    try:
        # Three at once: one is first sent to each worker (the fewest outstanding), so both
        # full workers refuse one, and the free worker takes all three.
        heard = await transcribe_many(engine, 3)
        counters = engine.worker_counters()
    finally:
        await engine.close()
    assert heard == {free.address: 3}
    assert counters["refused"] >= 2 and counters["retried"] >= 2
    assert counters["givenUp"] == 0
    assert counters["workersPassedOver"] == 2  # the full ones, for their Retry-After
    for worker in (full_a, full_b):
        # The test's own refused request to full_a counts too.
        rejected = (await worker.health())["counters"]["rejectedOverloaded"]
        assert rejected >= (2 if worker is full_a else 1)
        worker.engine.gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 4


async def test_when_every_worker_refuses_the_utterance_is_lost_and_counted_where_the_tenant_sees_it(
    start_workers: Callable[..., Awaitable[list[Worker]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = await start_workers(SMALL_QUEUE, SMALL_QUEUE, SMALL_QUEUE)
    held = [task for worker in workers for task in await fill(worker)]
    engine = engine_for(workers[0].port, Answer(list(ADDRESSES)))
    runtime = LocalRuntime.build(Settings(data_dir=tmp_path / "data"), asr=engine)
    issued = create_api_key(runtime.store, "acme")
    healthz = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Starlette(routes=[healthz_route(runtime)])),
        base_url="http://gateway",
        headers={"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret},
    )
    key = CallKey("acme", Namespace.TWILIO, "CAoverloaded")
    speaker = Speaker("customer", "+15550100", "MZ1")
    sequence = MessageSequence()
    try:
        with pytest.raises(
            AsrOverloadedError, match=r"every ASR worker refused the utterance \(3 tried\)"
        ) as refused:
            await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        for worker in workers:
            assert (await worker.health())["counters"]["rejectedOverloaded"] == 1

        # Through the pipeline: no message, and the loss is counted and logged.
        with caplog.at_level(logging.ERROR, logger="callscribe.transcription"):
            sent = await runtime.pipeline.handle(
                key, speaker, Utterance(0, ONE_SECOND), AutotranscribeParams(), sequence
            )
        assert sent is False
        assert runtime.store.list_messages(key, 100, time.time()) == []
        # The tenant sees it among its failures, named by the call, speaker and time.
        (lost,) = runtime.store.list_delivery_failures("acme")
        assert (lost.conversation_id, lost.status_code) == ("CAoverloaded", None)
        assert lost.message_id == "untranscribed:customer:0-1000"
        assert lost.reason.startswith("not transcribed: the speech recognition service refused")
        assert any(
            str(key) in r.getMessage() and "refused by the ASR service" in r.getMessage()
            for r in caplog.records
        ), caplog.records
        asr = (await healthz.get("/healthz")).json()["asr"]
        assert (asr["utterances"], asr["errors"], asr["overloaded"]) == (0, 1, 1)
        remote = asr["remoteWorkers"]
        assert (remote["workers"], remote["workersPassedOver"]) == (3, 3)
        assert (remote["refused"], remote["givenUp"]) == (6, 2)

        # The queues drain: the next utterance is transcribed (by a worker passed over or not,
        # as its Retry-After has run out or not) and is the call's first message.
        for worker in workers:
            worker.engine.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 6
        sent = await runtime.pipeline.handle(
            key,
            speaker,
            Utterance(16_000, ONE_SECOND),
            AutotranscribeParams(redactionOutput=RedactionOutput.UNREDACTED),
            sequence,
        )
        assert sent is True
        (message,) = runtime.store.list_messages(key, 100, time.time())
        assert message.seq == 0
        utterance = message.body["autotranscribeResponse"]["utterance"][0]
        assert utterance["text"].startswith("heard by 127.0.0.")
        asr = (await healthz.get("/healthz")).json()["asr"]
        assert (asr["utterances"], asr["errors"], asr["overloaded"]) == (1, 1, 1)
        assert (asr["remoteWorkers"]["refused"], asr["remoteWorkers"]["givenUp"]) == (6, 2)
    finally:
        await healthz.aclose()
        await runtime.shutdown()
        await engine.close()


async def test_a_worker_that_is_gone_is_passed_over_and_others_take_its_utterances(
    start_workers: Callable[..., Awaitable[list[Worker]]],
) -> None:
    workers = await start_workers({}, {}, {})
    gone = workers[1]
    await gone.stop()  # its port is closed: connections are refused
    engine = engine_for(gone.port, Answer(list(ADDRESSES)))
    try:
        # Nine at once: the gone worker is sent some (it has the fewest outstanding), and each
        # of those goes on to another worker; no exception reaches the caller.
        heard = await transcribe_many(engine, 9)
        unanswered = engine.worker_counters()["unanswered"]
        assert 1 <= unanswered <= 3
        assert engine.worker_counters()["workersPassedOver"] == 1
        # While it is passed over, utterances go straight to the others.
        for _ in range(5):
            await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
        counters = engine.worker_counters()
    finally:
        await engine.close()
    assert set(heard) == {ADDRESSES[0], ADDRESSES[2]} and sum(heard.values()) == 9
    assert counters["unanswered"] == unanswered
    assert counters["retried"] == unanswered and counters["givenUp"] == 0
    live = [workers[0], workers[2]]
    assert sum((await completed(live)).values()) == 14


async def test_the_retry_budget_bounds_how_long_an_utterance_is_tried(
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    silent_sock, worker_sock = bind_one_port(2)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # until the client gives up
        writer.close()

    silent = await asyncio.start_server(never_answer, sock=silent_sock)
    worker = await start_worker(worker_sock)
    answer = Answer([ADDRESSES[0], worker.address])
    try:
        # Two at once: one goes to the silent address first. Its answer is overdue after
        # 1 s, when a 0.5 s budget is spent: that utterance is given up.
        tight = engine_for(worker.port, answer, timeout_s=1.0, retry_budget_s=0.5)
        try:
            outcomes = await asyncio.gather(
                *(tight.transcribe(AsrRequest(ONE_SECOND, "en")) for _ in range(2)),
                return_exceptions=True,
            )
        finally:
            await tight.close()
        (error,) = [o for o in outcomes if isinstance(o, BaseException)]
        assert isinstance(error, AsrUnavailableError)
        assert "retry budget of 0.5 s ran out after 1 of 2 workers" in str(error)
        assert "did not answer within 1 s" in str(error)
        assert [o.text for o in outcomes if isinstance(o, AsrResult)] == ["heard by 127.0.0.2"]

        # With budget left after the timeout, the other worker takes it.
        roomy = engine_for(worker.port, answer, timeout_s=1.0, retry_budget_s=5)
        try:
            heard = await transcribe_many(roomy, 2)
            counters = roomy.worker_counters()
        finally:
            await roomy.close()
        assert heard == {worker.address: 2}
        assert (counters["unanswered"], counters["retried"], counters["givenUp"]) == (1, 1, 0)
    finally:
        silent.close()
        await silent.wait_closed()


# ------------------------------------------------------------------ names and lookups


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_url_with_an_address_or_localhost_is_one_worker_never_looked_up(
    start_worker: Callable[..., Awaitable[Worker]], host: str
) -> None:
    (sock,) = bind_one_port(1)
    worker = await start_worker(sock)
    answer = Answer([])
    engine = RemoteAsrEngine(f"http://{host}:{worker.port}/", timeout_s=WAIT_S, resolve=answer)
    try:
        heard = await transcribe_many(engine, 4)
        counters = engine.worker_counters()
    finally:
        await engine.close()
    assert heard == {"127.0.0.1": 4}
    assert answer.lookups == 0
    assert counters["workers"] == 1
    assert set(worker.hosts) == {f"{host}:{worker.port}"}


async def test_looking_the_name_up_never_holds_the_event_loop(
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    (sock,) = bind_one_port(1)
    worker = await start_worker(sock)
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    def slow_resolver(host: str) -> list[str]:
        entered.set()
        release.wait(WAIT_S)
        returned.set()
        return [worker.address]

    engine = RemoteAsrEngine(
        f"http://{NAME}:{worker.port}", timeout_s=WAIT_S, dns_refresh_s=0.05, resolve=slow_resolver
    )
    try:
        # The first utterance must wait for the first answer, but the loop does not: this test
        # runs on while the lookup is blocked.
        first = asyncio.get_running_loop().create_task(
            engine.transcribe(AsrRequest(ONE_SECOND, "en"))
        )
        assert await asyncio.to_thread(entered.wait, WAIT_S)
        assert not returned.is_set() and not first.done()
        release.set()
        assert (await first).text == "heard by 127.0.0.1"

        # Later lookups are made in the background: an utterance does not wait for them.
        await asyncio.sleep(0.1)
        for event in (entered, release, returned):
            event.clear()
        result = await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
        assert result.text == "heard by 127.0.0.1"
        assert await asyncio.to_thread(entered.wait, WAIT_S)
        assert not returned.is_set()
    finally:
        release.set()
        await engine.close()


async def test_a_name_that_does_not_resolve_is_an_unavailable_error() -> None:
    engine = engine_for(8000, Answer([]))
    try:
        with pytest.raises(AsrUnavailableError, match=f"{NAME} resolved to no address"):
            await engine.transcribe(AsrRequest(ONE_SECOND, "en"))
    finally:
        await engine.close()
    unknown = RemoteAsrEngine("http://asr.unknown.invalid:8000", resolve=Answer([]))
    try:
        with pytest.raises(AsrUnavailableError, match="resolved to no address"):
            await unknown.transcribe(AsrRequest(ONE_SECOND, "en"))
    finally:
        await unknown.close()


def test_the_system_resolver_gives_every_address_once() -> None:
    addresses = resolve_addresses("localhost")
    assert "127.0.0.1" in addresses or "::1" in addresses
    assert len(addresses) == len(set(addresses))


def test_the_retry_and_lookup_settings_reach_the_remote_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = make_asr_engine(AsrSettings(url=f"http://{NAME}:8000"))
    assert isinstance(defaults, RemoteAsrEngine)
    assert (defaults.retry_budget_s, defaults.dns_refresh_s, defaults.connect_timeout_s) == (
        2.0,
        5.0,
        0.5,
    )
    monkeypatch.setenv("CALLSCRIBE_ASR_URL", f"http://{NAME}:8000")
    monkeypatch.setenv("CALLSCRIBE_ASR_RETRY_BUDGET_S", "1.5")
    monkeypatch.setenv("CALLSCRIBE_ASR_DNS_REFRESH_S", "2")
    monkeypatch.setenv("CALLSCRIBE_ASR_CONNECT_TIMEOUT_S", "0.25")
    engine = make_asr_engine(AsrSettings())
    assert isinstance(engine, RemoteAsrEngine)
    assert (engine.retry_budget_s, engine.dns_refresh_s, engine.connect_timeout_s) == (
        1.5,
        2.0,
        0.25,
    )
    monkeypatch.setenv("CALLSCRIBE_ASR_DNS_REFRESH_S", "0")
    with pytest.raises(ValueError):
        AsrSettings()
