"""The ASR worker service and its client, on real loopback sockets with the real Whisper base
model: results, dynamic batching, overload refusal, input errors, health, shutdown, the remote
engine's errors, ``callscribe serve``'s pipeline on a remote worker, and the container
entrypoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from callscribe.asr.base import (
    AsrOverloadedError,
    AsrRequest,
    AsrResult,
    AsrUnavailableError,
)
from callscribe.asr.factory import make_asr_engine
from callscribe.asr.remote import RemoteAsrEngine, pcm16_bytes
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.asr.worker import create_worker_app, worker_uvicorn_config
from callscribe.config import AsrSettings, AsrWorkerSettings, Settings, WebhookSettings
from callscribe.server import LocalRuntime, create_local_app
from callscribe.serving import uvicorn_config
from callscribe.testing.simulate import (
    PlayedCall,
    WebhookReceiver,
    bind_loopback,
    free_port,
    load_sample_call,
    play_call,
)
from tests.speech import SENTENCES, needs_speech_tools, padded_to, speak

pytestmark = needs_speech_tools

WAIT_S = 120.0  # generous: other test suites share this machine's two cores


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Five sentences padded to one length: however the worker groups them into batches, each
    decodes exactly as it does alone (one encoder context width for all)."""
    directory = tmp_path_factory.mktemp("speech")
    audio = [speak(text, directory, f"s{i}") for i, text in enumerate(SENTENCES)]
    longest = max(len(a) for a in audio)
    return [padded_to(a, longest) for a in audio]


class GatedEngine:
    """The real engine behind a gate the test holds shut: a batch started while it is shut
    waits, so the test decides what is queued and what is running, not the clock."""

    def __init__(self, engine: FasterWhisperEngine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.batch_sizes: list[int] = []

    @property
    def supported_languages(self) -> list[str]:
        return self.engine.supported_languages

    def transcribe_batch(self, requests: list[AsrRequest]) -> list[AsrResult]:
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self.batch_sizes.append(len(requests))
        return self.engine.transcribe_batch(requests)


@dataclass
class RunningWorker:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            return (await client.get("/healthz")).json()

    async def wait_until(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            health = await self.health()
            if condition(health):
                return health
            await asyncio.sleep(0.02)
        raise AssertionError(f"worker never reached the expected state: {health}")


StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
async def start_worker(asr_engine: FasterWhisperEngine) -> AsyncIterator[StartWorker]:
    """Start ASR workers in this process (uvicorn on a real loopback socket); all are shut
    down gracefully at the end of the test."""
    started: list[RunningWorker] = []

    async def start(engine: Any = None, **overrides: Any) -> RunningWorker:
        settings = AsrWorkerSettings(**overrides)
        app = create_worker_app(engine or asr_engine, settings)
        sock = bind_loopback()
        server = uvicorn.Server(worker_uvicorn_config(app, settings))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        worker = RunningWorker(f"http://127.0.0.1:{sock.getsockname()[1]}", server, task)
        started.append(worker)
        return worker

    yield start

    for worker in started:
        worker.server.should_exit = True
        await worker.task


@pytest.fixture
async def remote(start_worker: StartWorker) -> AsyncIterator[tuple[RunningWorker, RemoteAsrEngine]]:
    worker = await start_worker()
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    yield worker, engine
    await engine.close()


async def test_concurrent_remote_results_equal_local_results(
    remote: tuple[RunningWorker, RemoteAsrEngine],
    asr_engine: FasterWhisperEngine,
    speech: list[np.ndarray],
) -> None:
    worker, engine = remote
    requests = [AsrRequest(audio, language="en") for audio in speech]
    results = await asyncio.gather(*(engine.transcribe(r) for r in requests))
    local = [asr_engine.transcribe_blocking(r) for r in requests]
    assert [r.text for r in results] == [r.text for r in local]
    assert all(r.text for r in results)
    for result in results:
        assert result.language == "en"
        assert result.audio_ms == local[0].audio_ms
        assert result.processing_ms > 0 and result.queue_ms >= 0
        assert 1 <= result.batch_size <= len(requests)
        assert result.words == ()
    health = await worker.health()
    assert health["counters"]["completed"] == len(requests)
    assert health["counters"]["rejectedOverloaded"] == 0


async def test_requests_arriving_together_share_a_batch(
    start_worker: StartWorker, asr_engine: FasterWhisperEngine, speech: list[np.ndarray]
) -> None:
    gated = GatedEngine(asr_engine)
    worker = await start_worker(gated, max_batch=8, max_wait_ms=0, max_queue=64)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    try:
        gated.gate.clear()
        # The first utterance takes the model; the next four arrive while it is busy.
        first = asyncio.ensure_future(engine.transcribe(AsrRequest(speech[0], "en")))
        await worker.wait_until(lambda h: h["batchesInFlight"] == 1 and h["queueDepth"] == 0)
        rest = [
            asyncio.ensure_future(engine.transcribe(AsrRequest(audio, "en")))
            for audio in speech[1:]
        ]
        await worker.wait_until(lambda h: h["queueDepth"] == len(rest))
        gated.gate.set()
        first_result = await first
        results = await asyncio.gather(*rest)
    finally:
        gated.gate.set()
        await engine.close()

    assert first_result.batch_size == 1
    assert [r.batch_size for r in results] == [len(rest)] * len(rest)
    assert gated.batch_sizes[-2:] == [1, len(rest)]
    local = [asr_engine.transcribe_blocking(AsrRequest(a, "en")).text for a in speech[1:]]
    assert [r.text for r in results] == local
    health = await worker.health()
    assert health["counters"]["largestBatch"] == len(rest)
    assert health["counters"]["batches"] == 2


async def test_a_full_queue_is_refused_at_once_with_503(
    start_worker: StartWorker, asr_engine: FasterWhisperEngine, speech: list[np.ndarray]
) -> None:
    gated = GatedEngine(asr_engine)
    worker = await start_worker(gated, max_batch=1, max_wait_ms=0, max_queue=2)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    try:
        gated.gate.clear()
        running = asyncio.ensure_future(engine.transcribe(AsrRequest(speech[0], "en")))
        await worker.wait_until(lambda h: h["batchesInFlight"] == 1 and h["queueDepth"] == 0)
        queued = [
            asyncio.ensure_future(engine.transcribe(AsrRequest(a, "en"))) for a in speech[1:3]
        ]
        await worker.wait_until(lambda h: h["queueDepth"] == 2)

        with pytest.raises(AsrOverloadedError) as refused:
            await engine.transcribe(AsrRequest(speech[3], "en"))
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        async with httpx.AsyncClient(base_url=worker.url) as client:
            response = await client.post(
                "/v1/transcribe",
                params={"language": "en"},
                content=pcm16_bytes(speech[3]),
                headers={"content-type": "application/octet-stream"},
            )
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "overloaded"
        assert "2 utterances already waiting" in response.json()["error"]["message"]

        gated.gate.set()
        accepted = [await running, *await asyncio.gather(*queued)]
    finally:
        gated.gate.set()
        await engine.close()
    assert all(r.text for r in accepted)
    counters = (await worker.health())["counters"]
    assert counters["rejectedOverloaded"] == 2
    assert counters["completed"] == 3


async def _post(
    url: str,
    body: bytes,
    content_type: str = "application/octet-stream",
    **params: str | list[str],
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
        return await client.post(
            "/v1/transcribe", params=params, content=body, headers={"content-type": content_type}
        )


async def test_malformed_and_oversized_requests_get_clear_errors(
    remote: tuple[RunningWorker, RemoteAsrEngine], speech: list[np.ndarray]
) -> None:
    worker, _ = remote
    audio = pcm16_bytes(speech[0])
    cases = [
        (audio + b"\x00", {}, "application/octet-stream", 400, "invalid_audio", "even number"),
        (b"", {}, "application/octet-stream", 400, "invalid_audio", "empty"),
        (
            audio,
            {"language": "en-US"},
            "application/octet-stream",
            400,
            "invalid_parameter",
            "ISO 639-1",
        ),
        (audio, {"language": "xx"}, "application/octet-stream", 400, "invalid_parameter", "'xx'"),
        (
            audio,
            {"wordTimestamps": "maybe"},
            "application/octet-stream",
            400,
            "invalid_parameter",
            "wordTimestamps",
        ),
        (
            audio,
            {"vocabulary": [f"Term {i}" for i in range(51)]},
            "application/octet-stream",
            400,
            "invalid_parameter",
            "51 different terms; at most 50",
        ),
        (
            audio,
            {"vocabulary": ["Kestrel Gold plan", "x" * 51]},
            "application/octet-stream",
            400,
            "invalid_parameter",
            "is 51 characters; at most 50",
        ),
        (
            audio,
            {"vocabulary": [f"{i:02d}" + "y" * 45 for i in range(11)]},
            "application/octet-stream",
            400,
            "invalid_parameter",
            "537 characters (terms joined with ', '); at most 500",
        ),
        (audio, {}, "audio/wav", 415, "unsupported_media_type", "application/octet-stream"),
        (
            bytes(31 * 16_000 * 2),
            {},
            "application/octet-stream",
            413,
            "payload_too_large",
            "at most 30 s",
        ),
    ]
    for body, params, content_type, status, code, text in cases:
        response = await _post(worker.url, body, content_type, **params)
        assert response.status_code == status, (params, content_type, response.text)
        error = response.json()["error"]
        assert error["code"] == code
        assert text in error["message"]
    # Exactly 30 s is allowed, and the worker still serves after all those refusals.
    response = await _post(worker.url, bytes(30 * 16_000 * 2), language="en")
    assert response.status_code == 200
    assert response.json()["audioMs"] == 30_000
    counters = (await worker.health())["counters"]
    assert counters["accepted"] == 1 and counters["failed"] == 0


async def test_word_timestamps_and_language_detection_over_http(
    remote: tuple[RunningWorker, RemoteAsrEngine], speech: list[np.ndarray]
) -> None:
    worker, engine = remote
    result = await engine.transcribe(AsrRequest(speech[1], language=None, word_timestamps=True))
    assert result.language == "en"
    assert "help you with that" in result.text.lower()
    assert len(result.words) >= 6
    assert all(0 <= w.start_ms <= w.end_ms <= result.audio_ms + 20 for w in result.words)
    assert all(0.0 <= w.confidence <= 1.0 for w in result.words)
    assert [w.start_ms for w in result.words] == sorted(w.start_ms for w in result.words)

    raw = (
        await _post(worker.url, pcm16_bytes(speech[1]), wordTimestamps="true", language="en")
    ).json()
    assert set(raw) == {
        "text",
        "words",
        "language",
        "audioMs",
        "processingMs",
        "queueMs",
        "batchSize",
    }
    assert set(raw["words"][0]) == {"text", "startMs", "endMs", "confidence"}


async def test_healthz_reports_model_device_queue_and_counters(
    remote: tuple[RunningWorker, RemoteAsrEngine], speech: list[np.ndarray]
) -> None:
    worker, engine = remote
    await engine.transcribe(AsrRequest(speech[0], "en"))
    health = await worker.health()
    assert health["status"] == "ok"
    assert health["model"] == "packaged:whisper-base"
    assert (health["device"], health["computeType"]) == ("cpu", "int8")
    assert (health["maxBatch"], health["maxWaitMs"], health["maxQueue"]) == (16, 10.0, 256)
    assert health["queueDepth"] == 0 and health["batchesInFlight"] == 0
    counters = health["counters"]
    assert counters["accepted"] == counters["completed"] == counters["batches"] == 1
    assert counters["audioSeconds"] == pytest.approx(len(speech[0]) / 16_000, abs=0.01)


async def test_shutdown_finishes_requests_already_in_flight(
    start_worker: StartWorker, asr_engine: FasterWhisperEngine, speech: list[np.ndarray]
) -> None:
    gated = GatedEngine(asr_engine)
    worker = await start_worker(gated, max_batch=2, max_wait_ms=0)
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    try:
        gated.gate.clear()
        pending = [
            asyncio.ensure_future(engine.transcribe(AsrRequest(a, "en"))) for a in speech[:3]
        ]
        await worker.wait_until(
            lambda h: h["batchesInFlight"] == 1 and h["counters"]["accepted"] == 3
        )
        worker.server.should_exit = True  # what SIGTERM does
        await asyncio.sleep(0.2)
        assert not worker.task.done()  # held open by the requests still being transcribed
        gated.gate.set()
        results = await asyncio.gather(*pending)
        await worker.task
    finally:
        gated.gate.set()
        await engine.close()
    assert all(r.text for r in results)
    with pytest.raises(AsrUnavailableError):  # and now it is gone
        await RemoteAsrEngine(worker.url, timeout_s=5).transcribe(AsrRequest(speech[0], "en"))


async def test_worker_down_or_silent_raises_unavailable(speech: list[np.ndarray]) -> None:
    closed_port = free_port()
    engine = RemoteAsrEngine(f"http://127.0.0.1:{closed_port}", timeout_s=5)
    with pytest.raises(AsrUnavailableError, match="unreachable"):
        await engine.transcribe(AsrRequest(speech[0], "en"))
    await engine.close()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # read until the client gives up, answer nothing
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    engine = RemoteAsrEngine(f"http://127.0.0.1:{port}", timeout_s=0.5)
    try:
        with pytest.raises(AsrUnavailableError, match="did not answer within 0.5 s"):
            await engine.transcribe(AsrRequest(speech[0], "en"))
    finally:
        await engine.close()
        silent.close()
        await silent.wait_closed()


async def test_an_error_answer_raises_unavailable(speech: list[np.ndarray]) -> None:
    async def answer_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error": {"code": "transcription_failed", "message": "the model failed"}}'
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    broken = await asyncio.start_server(answer_500, "127.0.0.1", 0)
    engine = RemoteAsrEngine(f"http://127.0.0.1:{broken.sockets[0].getsockname()[1]}", 10)
    try:
        with pytest.raises(AsrUnavailableError, match="HTTP 500: transcription_failed"):
            await engine.transcribe(AsrRequest(speech[0], "en"))
    finally:
        await engine.close()
        broken.close()
        await broken.wait_closed()


def test_pcm16_round_trip_is_exact_for_16_bit_audio(speech: list[np.ndarray]) -> None:
    pcm = pcm16_bytes(speech[0])
    assert len(pcm) == 2 * len(speech[0])
    back = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    assert np.array_equal(back, speech[0])
    assert pcm16_bytes(np.array([1.5, -1.5], dtype=np.float32)) == b"\xff\x7f\x00\x80"


def test_factory_chooses_remote_when_a_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_asr_engine(AsrSettings(url="http://asr.internal:8000/", timeout_s=3))
    assert isinstance(engine, RemoteAsrEngine)
    assert (engine.url, engine.timeout_s) == ("http://asr.internal:8000", 3)
    monkeypatch.setenv("CALLSCRIBE_ASR_URL", "http://10.0.0.7:8000")
    assert AsrSettings().url == "http://10.0.0.7:8000"
    monkeypatch.delenv("CALLSCRIBE_ASR_URL")
    assert isinstance(make_asr_engine(AsrSettings()), FasterWhisperEngine)
    with pytest.raises(ValueError):
        AsrSettings(url="asr.internal:8000")


# ------------------------------------------------------------------ serve with a remote worker


async def test_serve_pipeline_transcribes_through_a_remote_worker(
    start_worker: StartWorker, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    worker = await start_worker()
    settings = Settings(
        data_dir=tmp_path / "data",
        webhook=WebhookSettings(url=receiver.url),
        asr=AsrSettings(url=worker.url),
    )
    runtime = LocalRuntime.build(settings)  # no engine given: the factory picks the remote one
    assert isinstance(runtime.asr, RemoteAsrEngine)
    app = create_local_app(runtime)
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn_config(app, settings))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        from callscribe.auth import create_api_key
        from callscribe.testing.simulate import ApiClient

        issued = create_api_key(runtime.store, "acme")
        api = ApiClient(
            f"http://127.0.0.1:{sock.getsockname()[1]}", issued.api_id, issued.api_secret
        )
        # The first transcription window of the sample call: the agent's greeting and the
        # customer's request, up to the hold.
        call = load_sample_call()
        first_stop = sorted(c.at_ms for c in call.controls)[1]
        call = replace(
            call,
            duration_ms=first_stop + 500,
            tracks={t: b[: (first_stop + 500) * 8] for t, b in call.tracks.items()},
            controls=tuple(c for c in call.controls if c.at_ms <= first_stop),
        )
        played = await play_call(
            await api.stream_url(), call, api, played=PlayedCall("CAremote", speed=4)
        )
        assert [r.status_code for _, r in played.control_responses] == [200, 200]
        deadline = time.monotonic() + WAIT_S
        while len(receiver.messages) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await api.close()
    finally:
        server.should_exit = True
        await task

    texts = [m.body["autotranscribeResponse"]["utterance"][0]["text"] for m in receiver.messages]
    assert len(texts) >= 4, texts
    assert any("help" in t.lower() and "today" in t.lower() for t in texts), texts
    assert any("premium package" in t.lower() for t in texts), texts
    assert runtime.pipeline.stats.errors == 0
    # Every utterance went through the worker (plus the runtime's warm-up).
    counters = (await worker.health())["counters"]
    assert counters["completed"] >= len(texts) + 1


async def test_serve_starts_even_when_the_remote_worker_is_down(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", asr=AsrSettings(url=f"http://127.0.0.1:{free_port()}")
    )
    runtime = LocalRuntime.build(settings)
    await runtime.warm_up()  # logs a warning rather than failing the start
    with pytest.raises(AsrUnavailableError):
        await runtime.asr.transcribe(AsrRequest(np.zeros(16_000, dtype=np.float32), "en"))
    await runtime.shutdown()


# ------------------------------------------------------------------ entrypoints


def test_container_entrypoint_runs_the_worker_main_with_the_container_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import callscribe.asr.worker as worker_module
    from containers.asr_worker import entrypoint

    seen: list[AsrWorkerSettings] = []
    monkeypatch.setattr(worker_module, "run_worker", lambda s: seen.append(s) or 0)
    # Set, then unset: recorded either way, so the entrypoint's own default is undone too.
    monkeypatch.setenv("CALLSCRIBE_ASR_HOST", "unset")
    monkeypatch.delenv("CALLSCRIBE_ASR_HOST")
    for name, value in {
        "CALLSCRIBE_ASR_MODEL": "large-v3-turbo",
        "CALLSCRIBE_ASR_DEVICE": "cuda",
        "CALLSCRIBE_ASR_COMPUTE_TYPE": "float16",
        "CALLSCRIBE_ASR_PORT": "8000",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["entrypoint.py"])
    assert entrypoint.main() == 0
    (settings,) = seen
    assert (settings.model, settings.device, settings.compute_type) == (
        "large-v3-turbo",
        "cuda",
        "float16",
    )
    # Inside a task the worker must be reachable from the gateways, not just from itself.
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)

    monkeypatch.setenv("CALLSCRIBE_ASR_HOST", "10.1.2.3")
    assert entrypoint.main() == 0
    assert seen[-1].host == "10.1.2.3"


def test_cli_asr_worker_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import callscribe.asr.worker as worker_module
    from callscribe.cli import main

    seen: list[AsrWorkerSettings] = []
    monkeypatch.setattr(worker_module, "run_worker", lambda s: seen.append(s) or 0)
    monkeypatch.setenv("CALLSCRIBE_ASR_PORT", "9000")
    monkeypatch.setenv("CALLSCRIBE_ASR_MAX_BATCH", "4")
    assert main(["asr-worker", "--host", "127.0.0.2", "--port", "9100"]) == 0
    assert (seen[0].host, seen[0].port, seen[0].max_batch) == ("127.0.0.2", 9100, 4)


def test_container_entrypoint_serves_and_stops_on_sigterm(
    speech: list[np.ndarray], tmp_path: Path
) -> None:
    """The worker as the container runs it: its own process, the real model, SIGTERM."""
    port = free_port()
    env = {
        **os.environ,
        "CALLSCRIBE_ASR_HOST": "127.0.0.1",
        "CALLSCRIBE_ASR_PORT": str(port),
        "CALLSCRIBE_ASR_MAX_WAIT_MS": "5",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "containers.asr_worker.entrypoint"],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        response = httpx.post(
            f"{url}/v1/transcribe?language=en",
            content=pcm16_bytes(speech[1]),
            headers={"content-type": "application/octet-stream"},
            timeout=WAIT_S,
        )
        assert response.status_code == 200, response.text
        assert "help you with that" in response.json()["text"].lower()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "CallScribe ASR worker listening" in log_path.read_text()


async def test_the_worker_publishes_its_load_as_cloudwatch_metrics(
    start_worker: StartWorker,
    asr_engine: FasterWhisperEngine,
    speech: list[np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In AWS the worker writes EMF lines (what the stack scales the service on): its queue
    depth, the utterances it transcribed and refused, and the p95 of their waits."""
    gated = GatedEngine(asr_engine)
    worker = await start_worker(
        gated, max_batch=1, max_wait_ms=0, max_queue=1, metrics_interval_s=0.1
    )
    engine = RemoteAsrEngine(worker.url, timeout_s=WAIT_S)
    lines: list[dict[str, Any]] = []

    def published() -> list[dict[str, Any]]:
        for line in capsys.readouterr().out.splitlines():
            if line.startswith("{") and '"_aws"' in line:
                emf = json.loads(line)
                # EMF gives a metric's values as a list (one value an interval here).
                lines.append({k: v[0] if isinstance(v, list) else v for k, v in emf.items()})
        return lines

    async def until(condition: Callable[[list[dict[str, Any]]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition(published()):
            assert time.monotonic() < deadline, lines[-3:]
            await asyncio.sleep(0.05)

    try:
        gated.gate.clear()
        running = asyncio.ensure_future(engine.transcribe(AsrRequest(speech[0], "en")))
        await worker.wait_until(lambda h: h["batchesInFlight"] == 1)
        queued = asyncio.ensure_future(engine.transcribe(AsrRequest(speech[1], "en")))
        await worker.wait_until(lambda h: h["queueDepth"] == 1)
        with pytest.raises(AsrOverloadedError):
            await engine.transcribe(AsrRequest(speech[2], "en"))
        await until(lambda ls: any(line.get("AsrQueueDepth") == 1 for line in ls))
        gated.gate.set()
        await asyncio.gather(running, queued)
        await until(lambda ls: sum(line.get("AsrUtterances", 0) for line in ls) == 2)
    finally:
        gated.gate.set()
        await engine.close()

    (definition,) = lines[0]["_aws"]["CloudWatchMetrics"]
    assert definition["Namespace"] == "CallScribe"
    assert definition["Dimensions"] == [["service"]]
    assert {line["service"] for line in lines} == {"callscribe-asr-worker"}
    assert sum(line["AsrRefused"] for line in lines) == 1
    waits = [line["AsrWaitP95"] for line in lines if "AsrWaitP95" in line]
    # The queued utterance waited for the gate: its wait shows.
    assert waits and max(waits) > 0
