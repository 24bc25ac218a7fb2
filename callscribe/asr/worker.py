"""The ASR worker service (``callscribe asr-worker``): Whisper behind HTTP, batching utterances
from many calls at once. In AWS it runs on GPU instances; gateways reach it through
``RemoteAsrEngine``.

``POST /v1/transcribe`` takes one utterance as raw 16-bit little-endian PCM at 16 kHz
(``Content-Type: application/octet-stream``) with query parameters ``language`` (ISO 639-1,
optional: detected when absent), ``wordTimestamps`` (bool), ``interim`` (bool) and
``vocabulary`` (repeated, one domain term each: product, plan and agent names the decoder is
biased towards; within the bounds of ``callscribe.vocabulary``, the same as the API's),
and answers
``{"text", "words": [{"text", "startMs", "endMs", "confidence"}], "language", "audioMs",
"processingMs", "queueMs", "batchSize"}``. ``processingMs`` is the time the batch carrying
the utterance took, ``queueMs`` the time it waited for that batch to start.

Errors are ``{"error": {"code", "message"}}``: 400 ``invalid_audio`` / ``invalid_parameter``,
413 ``payload_too_large``, 415 ``unsupported_media_type``, 500 ``transcription_failed``, and
503 ``overloaded`` (the queue is full) or ``shutting_down``, both with ``Retry-After``.

``interim=true`` asks for the text so far of an utterance still being spoken: decoded greedy
only (no fallback, no full-window retry, no word timings), and only if it can start without
delaying a final (``DynamicBatcher.submit_interim``); otherwise 503 ``interim_shed`` at once,
without ``Retry-After``: finals are still welcome.
``GET /healthz`` reports the model, device, queue depth and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.asr.batching import (
    BatcherClosedError,
    DynamicBatcher,
    InterimShedError,
    QueueFullError,
)
from callscribe.asr.vocabulary import VocabularyError, checked
from callscribe.aws.adapters.task_metrics import Sample
from callscribe.config import AsrWorkerSettings
from callscribe.serving import serve_until_stopped
from callscribe.vocabulary import BOUNDS as VOCABULARY_BOUNDS
from callscribe.vocabulary import MAX_TERM_CHARS, MAX_TERMS

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
TRANSCRIBE_PATH = "/v1/transcribe"
# The ``service`` dimension of the worker's metrics (the stack's scaling policy reads it).
METRICS_SERVICE = "callscribe-asr-worker"
# An oversized body is still read (and thrown away) up to this size so that the client reads
# our 413 rather than a connection reset in the middle of its upload.
DISCARD_LIMIT_BYTES = 16 << 20
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class BatchAsrEngine(Protocol):
    """What the worker needs from an engine (``FasterWhisperEngine`` provides it)."""

    @property
    def supported_languages(self) -> list[str]: ...

    def transcribe_batch(self, requests: list[AsrRequest]) -> list[AsrResult]: ...


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _result_json(result: AsrResult, queue_ms: float, batch_size: int) -> dict[str, Any]:
    return {
        "text": result.text,
        "words": [
            {"text": w.text, "startMs": w.start_ms, "endMs": w.end_ms, "confidence": w.confidence}
            for w in result.words
        ],
        "language": result.language,
        "audioMs": result.audio_ms,
        "processingMs": round(result.processing_ms, 1),
        "queueMs": round(queue_ms, 1),
        "batchSize": batch_size,
    }


def create_worker_app(engine: BatchAsrEngine, settings: AsrWorkerSettings) -> FastAPI:
    batcher = DynamicBatcher(
        engine.transcribe_batch,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        concurrency=settings.workers or 1,  # batches at once (a GPU serves one at a time)
    )
    languages = frozenset(engine.supported_languages)
    max_bytes = int(settings.max_audio_s * SAMPLE_RATE) * 2
    load = WorkerLoad(batcher)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # First inference initialises kernels and buffers; pay for it before serving.
        await asyncio.to_thread(
            engine.transcribe_batch, [AsrRequest(np.zeros(SAMPLE_RATE, np.float32), "en")]
        )
        batcher.start()
        publishing = None
        if settings.metrics_interval_s > 0:
            from callscribe.aws.adapters.task_metrics import EmfPublisher, publish_periodically

            publishing = asyncio.get_running_loop().create_task(
                publish_periodically(
                    EmfPublisher(METRICS_SERVICE), load.sample, settings.metrics_interval_s
                )
            )
        yield
        if publishing is not None:
            publishing.cancel()
        # uvicorn has stopped accepting connections and waited for open requests; anything
        # still queued or running is finished before the process exits.
        await batcher.close()

    app = FastAPI(
        title="CallScribe ASR worker",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )

    @app.post(
        TRANSCRIBE_PATH,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                    }
                },
                "description": "16-bit little-endian mono PCM at 16 kHz, "
                f"at most {settings.max_audio_s:g} s",
            },
            "parameters": [
                {
                    "name": "language",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "ISO 639-1 code (en, es…); detected when absent",
                },
                {"name": "wordTimestamps", "in": "query", "schema": {"type": "boolean"}},
                {
                    "name": "interim",
                    "in": "query",
                    "schema": {"type": "boolean"},
                    "description": "an interim result: greedy only, and refused with 503 "
                    "interim_shed unless it can start without delaying a final",
                },
                {
                    "name": "vocabulary",
                    "in": "query",
                    "schema": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": MAX_TERM_CHARS},
                        "maxItems": MAX_TERMS,
                    },
                    "style": "form",
                    "explode": True,
                    "description": "domain terms the speaker may say, one per parameter; "
                    f"{VOCABULARY_BOUNDS}",
                },
            ],
        },
    )
    async def transcribe(request: Request):  # type: ignore[no-untyped-def]
        # The body is read (or, past the limit, drained) before anything is refused, so that
        # the client reads our answer rather than a connection reset mid-upload.
        body = await _read_body(request, max_bytes)
        if body is None:
            return _error(
                413,
                "payload_too_large",
                f"at most {settings.max_audio_s:g} s of audio ({max_bytes} bytes) per request",
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            return _error(
                415,
                "unsupported_media_type",
                "send the audio as Content-Type: application/octet-stream "
                "(16-bit little-endian PCM, 16 kHz, mono)",
            )
        language = request.query_params.get("language")
        if language is not None and language not in languages:
            return _error(
                400,
                "invalid_parameter",
                f"language {language[:16]!r} is not an ISO 639-1 code this model knows "
                "(e.g. 'en'); leave it out to detect the language",
            )
        word_timestamps_text = request.query_params.get("wordTimestamps", "false").lower()
        if word_timestamps_text not in _TRUE | _FALSE:
            return _error(400, "invalid_parameter", "wordTimestamps must be true or false")
        interim_text = request.query_params.get("interim", "false").lower()
        if interim_text not in _TRUE | _FALSE:
            return _error(400, "invalid_parameter", "interim must be true or false")
        interim = interim_text in _TRUE
        try:
            vocabulary = checked(request.query_params.getlist("vocabulary"))
        except VocabularyError as exc:
            return _error(400, "invalid_parameter", str(exc))
        if not body:
            return _error(400, "invalid_audio", "the body is empty: send at least one sample")
        if len(body) % 2:
            return _error(
                400,
                "invalid_audio",
                f"the body has {len(body)} bytes: 16-bit PCM needs an even number",
            )

        audio = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
        asr_request = AsrRequest(
            audio=audio,
            language=language,
            # An interim's text is replaced by its final's: no word timings for it.
            word_timestamps=word_timestamps_text in _TRUE and not interim,
            interim=interim,
            vocabulary=vocabulary,
        )
        try:
            if interim:
                batched = await batcher.submit_interim(asr_request)
            else:
                batched = await batcher.submit(asr_request)
        except InterimShedError as exc:
            # No Retry-After: this worker still takes finals, and the next interim falls due
            # an interval of audio later anyway.
            return _error(503, "interim_shed", str(exc))
        except QueueFullError as exc:
            return _error(
                503, "overloaded", str(exc), {"Retry-After": str(batcher.retry_after_s())}
            )
        except BatcherClosedError as exc:
            return _error(503, "shutting_down", str(exc), {"Retry-After": "1"})
        except Exception as exc:
            log.exception(
                "transcription failed for %d ms of audio", len(audio) * 1000 // SAMPLE_RATE
            )
            return _error(500, "transcription_failed", f"the model failed: {type(exc).__name__}")
        if not interim:
            load.waited(batched.queue_ms)
        return _result_json(batched.result, batched.queue_ms, batched.batch_size)

    @app.get("/healthz")
    async def healthz():  # type: ignore[no-untyped-def]
        body = {
            "status": "draining" if batcher.closing else "ok",
            "model": settings.model,
            "device": settings.device,
            "computeType": settings.compute_type,
            "encoderContext": settings.encoder_context,
            "maxBatch": batcher.max_batch,
            "maxWaitMs": settings.max_wait_ms,
            "maxQueue": batcher.max_queue,
            "queueDepth": batcher.queue_depth,
            "batchesInFlight": batcher.batches_in_flight,
            "counters": batcher.stats.as_dict(),
        }
        # A load balancer stops sending to a draining worker.
        return JSONResponse(body, status_code=503 if batcher.closing else 200)

    return app


class WorkerLoad:
    """What the worker reports each metrics interval: how deep its queue is now, how many
    utterances it transcribed and refused since the last report, and the p95 of their waits
    for a batch (the scarce thing on a GPU: the stack scales the service on the depth)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self._waits_ms: list[float] = []
        self._reported = (0, 0)  # completed, refused at the last report

    def waited(self, queue_ms: float) -> None:
        self._waits_ms.append(queue_ms)

    def sample(self) -> list[Sample]:
        stats = self.batcher.stats
        completed, refused = stats.completed, stats.rejected_full
        samples = [
            Sample("AsrQueueDepth", self.batcher.queue_depth),
            Sample("AsrUtterances", completed - self._reported[0]),
            Sample("AsrRefused", refused - self._reported[1]),
        ]
        self._reported = (completed, refused)
        waits, self._waits_ms = sorted(self._waits_ms), []
        if waits:
            p95 = waits[min(len(waits) - 1, int(len(waits) * 0.95))]
            samples.append(Sample("AsrWaitP95", p95, "Milliseconds"))
        return samples


async def _read_body(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None when it is longer than ``max_bytes`` (then drained, up to a limit,
    without being kept)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DISCARD_LIMIT_BYTES:
        return None
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received <= max_bytes:
            body += chunk
        elif received > DISCARD_LIMIT_BYTES:
            break
    return bytes(body) if received <= max_bytes else None


def worker_uvicorn_config(app: FastAPI, settings: AsrWorkerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Open requests are waiting on batches: give them time to finish on SIGTERM.
        timeout_graceful_shutdown=60,
        log_level="warning",
        lifespan="on",
        # Gateways keep connections open between utterances of a call.
        timeout_keep_alive=75,
    )


async def serve_worker(settings: AsrWorkerSettings) -> None:
    from callscribe.asr.whisper import FasterWhisperEngine

    engine = FasterWhisperEngine(settings)
    try:
        app = create_worker_app(engine, settings)

        def announce(server: uvicorn.Server) -> None:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(
                f"CallScribe ASR worker listening on "
                f"http://{settings.host}:{port}{TRANSCRIBE_PATH} "
                f"({settings.model} on {settings.device}, {settings.compute_type}; "
                f"batches of up to {settings.max_batch}, {settings.max_wait_ms:g} ms wait, "
                f"queue {settings.max_queue})",
                flush=True,
            )

        await serve_until_stopped(worker_uvicorn_config(app, settings), on_started=announce)
    finally:
        await engine.close()


def run_worker(settings: AsrWorkerSettings) -> int:
    """Run the worker until SIGINT/SIGTERM; in-flight batches finish first."""
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: let that end
    # the process with status 0, as a requested stop is not a failure.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_worker(settings))
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
