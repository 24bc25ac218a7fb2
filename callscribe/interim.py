"""Interim results: the text so far of an utterance still being spoken, for live viewers.

A call opts in with ``autotranscribeParams.interimResults``. While one of its participants
speaks (the stream's endpointer holds an open utterance), the open utterance's audio so far is
transcribed again every ``interval_ms`` of its audio, from ``min_speech_ms`` of speech on, and
the text goes to the tenant's viewers through ``LiveFeed.interim``; the utterance's final
message replaces it. The webhook sees interim text only where the tenant opted in
(``callscribe.webhooks.delivery``, local mode).

Finals first. An interim decode starts only on a worker of the engine that nothing else needs
(``InterimCapableEngine.start_interim``: fewer decodes in flight than workers, so no final is
waiting); otherwise it is shed (counted in ``InterimStats``) and the next one falls due an
interval of audio later. An interim never waits in the engine's queue, so a final waits at most
for the decodes already running. Per stream at most one interim decode is in flight: one that
falls due meanwhile starts after it, with the audio as it is by then (however many fell due
meanwhile). Nor does one start while the speaker has paused for ``pause_ms``: the utterance
may be ending, and its final would then need a worker within the endpointer's end silence;
what fell due waits for the speech to go on.

Never an interim after its final: a decode's text is published only if its utterance is still
the stream's open one when the decode ends (checked and published in one step on the event
loop). The final is submitted only once the endpointer has closed the utterance, so every
interim of an utterance reaches the viewers before its final does.

``stablePrefix``: the characters of the text, from its start, that the previous interim of the
same utterance had too, to the end of a word in both (the first interim has none).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from callscribe.asr.base import (
    AsrInterimShedError,
    AsrRequest,
    AsrResult,
    InterimCapableEngine,
    whisper_language,
)
from callscribe.audio import MODEL_RATE
from callscribe.config import InterimSettings
from callscribe.endpointing import OpenUtterance
from callscribe.live import LiveFeed
from callscribe.model import AutotranscribeParams
from callscribe.store.base import CallKey

log = logging.getLogger(__name__)

RECENT_DECODES = 1000


class OpenSpeech(Protocol):
    """Where a stream's open utterance is read (``calls.ParticipantStream``)."""

    def open_utterance(self) -> OpenUtterance | None: ...

    def open_audio(self) -> np.ndarray: ...


def stable_prefix(previous: str, text: str) -> int:
    """How many of ``text``'s first characters ``previous`` starts with too, up to the end of
    a word in both: "Hello, this is Sarah." then "Hello, this is Sarah from" gives 14 ("Hello,
    this is"): "Sarah." and "Sarah" are different words."""
    shared = 0
    for a, b in zip(previous, text, strict=False):
        if a != b:
            break
        shared += 1

    def ends_word(s: str, at: int) -> bool:
        return at == len(s) or s[at].isspace()

    while shared > 0 and not (ends_word(text, shared) and ends_word(previous, shared)):
        shared -= 1
    while shared > 0 and text[shared - 1].isspace():
        shared -= 1
    return shared


@dataclass
class InterimStats:
    """What became of the interim results that fell due (``/healthz`` → ``asr.interim``)."""

    decodes: int = 0  # started
    published: int = 0
    # Fell due while no worker was idle: skipped, so that no final waits for them.
    shed: int = 0
    # Decoded after their utterance had ended (its final replaces them): not published.
    stale: int = 0
    failed: int = 0
    decode_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_DECODES))

    def as_dict(self) -> dict[str, Any]:
        return {
            "decodes": self.decodes,
            "published": self.published,
            "shed": self.shed,
            "stale": self.stale,
            "failed": self.failed,
            "recentDecodeP50Ms": round(
                float(np.percentile(self.decode_s, 50)) * 1000 if self.decode_s else 0.0, 1
            ),
        }


class InterimDecoder:
    """The process's interim results: one engine and one live feed, shared by every call."""

    def __init__(
        self, engine: InterimCapableEngine, feed: LiveFeed, settings: InterimSettings
    ) -> None:
        self.engine = engine
        self.feed = feed
        self.interval_samples = settings.interval_ms * MODEL_RATE // 1000
        self.min_speech_ms = settings.min_speech_ms
        self.pause_ms = settings.pause_ms
        self.stats = InterimStats()

    def for_stream(
        self,
        key: CallKey,
        role: str,
        speech: OpenSpeech,
        params: AutotranscribeParams,
        participant: Callable[[], Mapping[str, str] | None] | None = None,
        *,
        vocabulary: tuple[str, ...] = (),
    ) -> StreamInterims:
        return StreamInterims(self, key, role, speech, params, participant, vocabulary=vocabulary)


class StreamInterims:
    """One participant stream's interim results, for as long as its call's start asks for
    them (``close`` ends them)."""

    def __init__(
        self,
        decoder: InterimDecoder,
        key: CallKey,
        role: str,
        speech: OpenSpeech,
        params: AutotranscribeParams,
        participant: Callable[[], Mapping[str, str] | None] | None = None,
        *,
        vocabulary: tuple[str, ...] = (),
    ) -> None:
        """``participant``: the speaker's ``externalId`` and ``streamId`` as its finals carry
        them, read as each interim is published (a transfer may change them)."""
        self._decoder = decoder
        self._participant = participant
        self.key = key
        self.role = role
        self._speech = speech
        self._language = whisper_language(params.language)
        self._redaction = params.redactionOutput
        # As the utterance's final gets it, so that the interims spell the terms as it will.
        self._vocabulary = vocabulary
        self.closed = False
        # The open utterance the interims below belong to (its start sample), the text of
        # its last interim, and how much audio it must hold for the next to fall due.
        self._utterance: int | None = None
        self._previous_text = ""
        self._next_due = 0
        self._decoding: asyncio.Future[AsrResult] | None = None
        # An interim fell due and has not started: the stream's previous decode is still in
        # flight, or the speaker paused.
        self._due = False

    def close(self) -> None:
        """No more interims (transcription stopped, the call ended, or its start no longer
        asks for them); a decode in flight ends unpublished."""
        self.closed = True

    def audio_arrived(self) -> None:
        """After each chunk of the stream's audio has reached its endpointer."""
        if self.closed:
            return
        utterance = self._speech.open_utterance()
        if utterance is None:
            return
        if utterance.start_sample != self._utterance:
            self._utterance = utterance.start_sample
            self._previous_text = ""
            self._next_due = 0
            self._due = False
        if utterance.speech_ms < self._decoder.min_speech_ms:
            return
        if utterance.samples >= self._next_due:
            self._next_due = utterance.samples + self._decoder.interval_samples
            self._due = True
        if not self._due or self._decoding is not None:
            return  # one in flight: what fell due meanwhile starts after it, from the audio then
        if utterance.pause_ms >= self._decoder.pause_ms:
            # The speaker paused: the utterance may be ending, and then its final takes a worker
            # within end_silence_ms and shows this text anyway. What fell due waits for speech.
            return
        self._due = False
        self._start(utterance)

    def _start(self, utterance: OpenUtterance) -> None:
        stats = self._decoder.stats
        request = AsrRequest(
            audio=self._speech.open_audio(), language=self._language, vocabulary=self._vocabulary
        )
        decoding = self._decoder.engine.start_interim(request)
        if decoding is None:
            stats.shed += 1
            return
        stats.decodes += 1
        self._decoding = decoding
        start_sample = utterance.start_sample
        decoding.add_done_callback(lambda done: self._decoded(done, start_sample))

    def _decoded(self, done: asyncio.Future[AsrResult], start_sample: int) -> None:
        """On the event loop, as the decode ends: its text is published if its utterance is
        still being spoken. (One that fell due meanwhile starts with the next audio.)"""
        self._decoding = None
        stats = self._decoder.stats
        if done.cancelled():
            return
        error = done.exception()
        if isinstance(error, AsrInterimShedError):
            # The engine refused it only once asked (a remote worker with a final waiting):
            # shed, as if no worker had been idle. It was counted as started; it was not.
            stats.decodes -= 1
            stats.shed += 1
        elif error is not None:
            stats.failed += 1
            log.warning("call %s: an interim decode failed: %s", self.key, error)
        else:
            result = done.result()
            stats.decode_s.append(result.processing_ms / 1000)
            self._publish(result.text.strip(), start_sample)

    def _publish(self, text: str, start_sample: int) -> None:
        utterance = self._speech.open_utterance()
        if self.closed or utterance is None or utterance.start_sample != start_sample:
            self._decoder.stats.stale += 1
            return
        if not text:
            return  # nothing heard yet (Whisper's no-speech verdict): nothing to show
        stable = stable_prefix(self._previous_text, text)
        self._previous_text = text
        ids = self._participant() if self._participant is not None else None
        self._decoder.feed.interim(
            self.key,
            self.role,
            utterance.start_ms,
            text,
            stable,
            self._redaction,
            stream_id=ids.get("streamId") if ids else None,
            external_id=ids.get("externalId") if ids else None,
        )
        self._decoder.stats.published += 1
