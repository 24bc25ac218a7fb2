"""``RemoteAsrEngine``: the ``AsrEngine`` port as a client of the ASR worker service
(``callscribe.asr.worker``), which is how gateway tasks reach the GPU workers in AWS.

Each utterance is one ``POST /v1/transcribe`` carrying 16-bit little-endian PCM at 16 kHz.
Connections are kept alive and pooled, with TCP_NODELAY so a small request is not held back
by Nagle's algorithm waiting for the previous one's acknowledgement.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np

from callscribe.asr.base import (
    AsrOverloadedError,
    AsrRequest,
    AsrResult,
    AsrUnavailableError,
    AsrWord,
)

TRANSCRIBE_PATH = "/v1/transcribe"
# Utterances in flight from one gateway process at once; beyond it they wait for a connection
# (within the request timeout). Far above what one gateway task produces.
MAX_CONNECTIONS = 256


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """float32 in -1..1 → 16-bit little-endian PCM, the worker's wire format."""
    scaled = np.clip(np.round(np.asarray(audio, dtype=np.float32) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


class RemoteAsrEngine:
    def __init__(self, url: str, timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        transport = httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            # Only failed connection attempts are retried: nothing was sent, so no utterance
            # can be transcribed twice. It covers a worker task being replaced.
            retries=1,
        )
        self._client = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            timeout=timeout_s,
            headers={"content-type": "application/octet-stream"},
        )

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        params = {"wordTimestamps": "true" if request.word_timestamps else "false"}
        if request.language:
            params["language"] = request.language
        try:
            response = await self._client.post(
                TRANSCRIBE_PATH, params=params, content=pcm16_bytes(request.audio)
            )
        except httpx.TimeoutException as exc:
            raise AsrUnavailableError(
                f"ASR worker {self.url} did not answer within {self.timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise AsrUnavailableError(f"ASR worker {self.url} unreachable: {exc!r}") from exc

        if response.status_code == 503:
            # The worker's queue is full or it is shutting down (a load balancer with no
            # healthy worker answers 503 too): either way, the caller should back off.
            raise AsrOverloadedError(
                f"ASR worker {self.url} refused the utterance: {_error_text(response)}",
                retry_after_s=_retry_after(response),
            )
        if response.status_code != 200:
            raise AsrUnavailableError(
                f"ASR worker {self.url} answered HTTP {response.status_code}: "
                f"{_error_text(response)}"
            )
        try:
            return _result(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise AsrUnavailableError(
                f"ASR worker {self.url} sent an unreadable answer: {exc!r}"
            ) from exc

    async def close(self) -> None:
        await self._client.aclose()


def _result(body: dict[str, Any]) -> AsrResult:
    return AsrResult(
        text=str(body["text"]),
        words=tuple(
            AsrWord(
                text=str(w["text"]),
                start_ms=int(w["startMs"]),
                end_ms=int(w["endMs"]),
                confidence=float(w["confidence"]),
            )
            for w in body["words"]
        ),
        language=body.get("language"),
        audio_ms=int(body["audioMs"]),
        processing_ms=float(body["processingMs"]),
        queue_ms=float(body["queueMs"]),
        batch_size=int(body["batchSize"]),
    )


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not something our worker sends
