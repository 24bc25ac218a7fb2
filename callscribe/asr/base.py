"""The ``AsrEngine`` port: utterance audio in, text (and optionally word timings) out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class AsrWord:
    text: str
    start_ms: int  # relative to the start of the utterance audio
    end_ms: int
    confidence: float


@dataclass(frozen=True)
class AsrResult:
    text: str
    words: tuple[AsrWord, ...] = ()
    language: str | None = None
    audio_ms: int = 0
    processing_ms: float = 0.0
    # How a batching ASR service (``callscribe.asr.worker``) served the utterance: the time it
    # waited in the service's queue and how many utterances shared its batch. An engine that
    # transcribes one utterance at a time leaves the defaults.
    queue_ms: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class AsrRequest:
    audio: np.ndarray = field(repr=False)  # float32 mono at 16 kHz, -1..1
    language: str | None = None  # ISO 639-1 ("en"), or None to detect
    word_timestamps: bool = False
    # The text so far of an utterance still being spoken: decoded greedy only (no fallback,
    # no full-window retry, no word timings), as its final replaces it within seconds.
    interim: bool = False
    # Domain words the speaker may say (product, plan and agent names): the tenant's
    # vocabulary merged with the call's, already bounded. The engine biases its decoding
    # towards them; an empty tuple decodes as before.
    vocabulary: tuple[str, ...] = ()


class AsrError(RuntimeError):
    """The engine could not transcribe an utterance (the pipeline counts it and moves on)."""


class AsrOverloadedError(AsrError):
    """A remote ASR service refused the utterance because it is at capacity: HTTP 503 from
    every worker tried."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AsrUnavailableError(AsrError):
    """A remote ASR service could not be reached, timed out, or answered with an error."""


class AsrInterimShedError(AsrError):
    """An interim decode that the engine did not start, so that no final waits for it (a
    remote worker answered 503 ``interim_shed``): counted as shed, not as failed."""


# The languages Whisper transcribes, as ``AsrRequest.language`` codes (ISO 639-1, and 639-3
# where Whisper has no two-letter code): the list faster-whisper's tokenizer knows. The API
# accepts these in start-streaming without asking an engine: the API Lambda has none, and an
# engine's own list says less (an English-only model lists "en" alone, yet is given any
# language and transcribes it as English).
WHISPER_LANGUAGES = frozenset(
    {
        "af",
        "am",
        "ar",
        "as",
        "az",
        "ba",
        "be",
        "bg",
        "bn",
        "bo",
        "br",
        "bs",
        "ca",
        "cs",
        "cy",
        "da",
        "de",
        "el",
        "en",
        "es",
        "et",
        "eu",
        "fa",
        "fi",
        "fo",
        "fr",
        "gl",
        "gu",
        "ha",
        "haw",
        "he",
        "hi",
        "hr",
        "ht",
        "hu",
        "hy",
        "id",
        "is",
        "it",
        "ja",
        "jw",
        "ka",
        "kk",
        "km",
        "kn",
        "ko",
        "la",
        "lb",
        "ln",
        "lo",
        "lt",
        "lv",
        "mg",
        "mi",
        "mk",
        "ml",
        "mn",
        "mr",
        "ms",
        "mt",
        "my",
        "ne",
        "nl",
        "nn",
        "no",
        "oc",
        "pa",
        "pl",
        "ps",
        "pt",
        "ro",
        "ru",
        "sa",
        "sd",
        "si",
        "sk",
        "sl",
        "sn",
        "so",
        "sq",
        "sr",
        "su",
        "sv",
        "sw",
        "ta",
        "te",
        "tg",
        "th",
        "tk",
        "tl",
        "tr",
        "tt",
        "uk",
        "ur",
        "uz",
        "vi",
        "yi",
        "yo",
        "zh",
        "yue",
    }
)


class AsrEngine(Protocol):
    """Implementations must be safe to call from several threads or tasks at once."""

    async def transcribe(self, request: AsrRequest) -> AsrResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class InterimCapableEngine(Protocol):
    """An engine that also decodes the text so far of utterances still being spoken (interim
    results), without ever making a finished utterance wait for one: it knows its workers.

    ``start_interim`` starts the decode at once, on a worker no finished utterance is waiting
    for, and returns its future; or returns None (the interim is shed) when it knows no worker
    is idle. The future may also fail with ``AsrInterimShedError`` when the worker found out
    only then that it had no room for it (a remote worker with a final waiting). In-process
    Whisper is one, and so is the remote GPU workers' client (``RemoteAsrEngine``)."""

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None: ...


def whisper_language(locale: str | None) -> str | None:
    """'en-US' -> 'en'. The API speaks BCP-47 locales; Whisper takes ISO 639-1 codes."""
    if not locale:
        return None
    return locale.split("-")[0].split("_")[0].lower() or None
