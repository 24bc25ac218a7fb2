"""Utterance → message: ASR, redaction, the webhook JSON, persist, then publish.

``TranscriptionPipeline.handle`` is the one entry point, once per finished utterance. Messages
are persisted to the Store before they are published, so a webhook failure never loses a
transcript: the after-call API still has it. A message the bus would not take (after the
adapter's own retries) is recorded as a delivery failure, which the webhook-failures API lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callscribe.asr.base import (
    AsrEngine,
    AsrError,
    AsrOverloadedError,
    AsrRequest,
    AsrResult,
    AsrWord,
    whisper_language,
)
from callscribe.bus import EventBus, TranscriptEvent
from callscribe.endpointing import Utterance
from callscribe.model import AutotranscribeParams, RedactionOutput
from callscribe.redaction import find_sensitive_spans, redact
from callscribe.silencing import RedactedAudio, SampleRange, locate, masked_units
from callscribe.store.base import CallKey, DeliveryFailure, Store, StoredMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speaker:
    """Who said an utterance, frozen when the utterance ended (a transfer may follow)."""

    role: str
    external_id: str
    stream_id: str


RECENT_WAITS = 1000


class MessageSequence:
    """A call's message numbers. Handed out and persisted one at a time, so that delivery
    order is transcription order."""

    def __init__(self, next_seq: int = 0) -> None:
        self.next_seq = next_seq
        self.lock = asyncio.Lock()

    def take(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


@dataclass(frozen=True)
class UtteranceLost:
    """An utterance the ASR could not transcribe, and why (what the tenant is told)."""

    reason: str


@dataclass
class AsrStats:
    utterances: int = 0
    audio_s: float = 0.0
    processing_s: float = 0.0
    empty: int = 0
    # Utterances lost to the ASR (no message went out for them), and of those, how many the
    # ASR service refused for being at capacity (every worker's queue full).
    errors: int = 0
    overloaded: int = 0
    # The most recent utterances' waits for the engine (bounded: a server runs for months).
    queue_wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_WAITS))

    @property
    def real_time_factor(self) -> float:
        return self.processing_s / self.audio_s if self.audio_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "utterances": self.utterances,
            "audioSeconds": round(self.audio_s, 3),
            "processingSeconds": round(self.processing_s, 3),
            "realTimeFactor": round(self.real_time_factor, 4),
            "emptyResults": self.empty,
            "errors": self.errors,
            "overloaded": self.overloaded,
            "recentQueueWaitP95Ms": round(
                float(np.percentile(self.queue_wait_s, 95)) * 1000 if self.queue_wait_s else 0.0,
                1,
            ),
        }


def _redact_words(words: tuple[AsrWord, ...]) -> list[str]:
    """Mask each word that overlaps a sensitive span of the words' joined text."""
    offsets, parts, cursor = [], [], 0
    for word in words:
        offsets.append((cursor, cursor + len(word.text)))
        parts.append(word.text)
        cursor += len(word.text) + 1
    spans = find_sensitive_spans(" ".join(parts))
    masked = []
    for (start, end), text in zip(offsets, parts, strict=True):
        if any(s.start < end and start < s.end for s in spans):
            redacted = redact(text)
            masked.append(redacted if redacted != text else "#" * len(text))
        else:
            masked.append(text)
    return masked


def _tokens(words: tuple[AsrWord, ...], texts: list[str], offset_ms: int) -> list[dict[str, Any]]:
    return [
        {
            "text": text,
            "start": offset_ms + w.start_ms,
            "end": offset_ms + w.end_ms,
            "confidence": w.confidence,
        }
        for w, text in zip(words, texts, strict=True)
    ]


def build_utterance(
    result: AsrResult, params: AutotranscribeParams, offset_ms: int
) -> dict[str, Any]:
    mode = params.redactionOutput
    raw = result.text
    entry: dict[str, Any] = {"text": raw if mode is RedactionOutput.UNREDACTED else redact(raw)}
    if mode is RedactionOutput.BOTH:
        entry["unredactedText"] = raw
    if params.detailedToken:
        raw_words = [w.text for w in result.words]
        if mode is RedactionOutput.UNREDACTED:
            entry["tokens"] = _tokens(result.words, raw_words, offset_ms)
        else:
            entry["tokens"] = _tokens(result.words, _redact_words(result.words), offset_ms)
        if mode is RedactionOutput.BOTH:
            entry["unredactedTokens"] = _tokens(result.words, raw_words, offset_ms)
    return entry


class TranscriptionPipeline:
    def __init__(
        self,
        asr: AsrEngine,
        store: Store,
        bus: EventBus,
        retention_s: float,
    ) -> None:
        self.asr = asr
        self.store = store
        self.bus = bus
        self.retention_s = retention_s  # how long messages are kept after their call ends
        self.stats = AsrStats()
        self.publish_failures = 0  # persisted, but not handed to delivery (recorded)

    async def handle(
        self,
        key: CallKey,
        speaker: Speaker,
        utterance: Utterance,
        params: AutotranscribeParams,
        sequence: MessageSequence,
        *,
        vocabulary: tuple[str, ...] = (),
        redacted_audio: RedactedAudio | None = None,
    ) -> bool:
        """One finished utterance of call ``key``: transcribe, build the message, persist and
        publish it under the call's next number. True when a message went out.
        ``vocabulary``: the call's merged with its tenant's (``CallSession.vocabulary``).
        ``redacted_audio``: where the utterance's redacted spans are silenced (a recording
        that keeps them as silence)."""
        endpointed_at = time.time()
        result = await self.transcribe(utterance, params, key, vocabulary=vocabulary)
        if redacted_audio is not None:
            await self.locate_redacted_audio(
                utterance, params, result, redacted_audio, key, vocabulary=vocabulary
            )
        if isinstance(result, UtteranceLost):
            await self.record_lost(key, speaker, utterance, result)
            return False
        if result is None:
            return False
        body = self.message_body(key, speaker, utterance, result, params)
        async with sequence.lock:
            seq = sequence.take()
            try:
                await self.persist_and_publish(key, seq, body, endpointed_at)
            except Exception:
                log.exception("call %s: could not persist message %d", key, seq)
                return False
        return True

    async def locate_redacted_audio(
        self,
        utterance: Utterance,
        params: AutotranscribeParams,
        result: AsrResult | UtteranceLost | None,
        redacted_audio: RedactedAudio,
        key: CallKey | None = None,
        *,
        vocabulary: tuple[str, ...] = (),
    ) -> None:
        """Tell ``redacted_audio`` where the utterance's redacted spans are (``silencing``).

        The message's text is always the call's own decode. When it has no word timings (the
        call did not ask for detailed tokens) and redacts something, the audio is decoded
        again with word timings, only to locate the spans: a timed decode may read a little
        differently (timestamp tokens change Whisper's decoding), so what it finds is only
        used when it holds at least as many redacted digits as the message; otherwise, as when
        the ASR failed (we cannot know what was said), the whole utterance is silenced."""
        whole = redacted_audio.whole
        ranges: list[SampleRange] | None = []
        try:
            if isinstance(result, UtteranceLost):
                ranges = None
            elif result is not None:
                words = result.words
                if not words and masked_units(result.text):
                    timed = await self.asr.transcribe(
                        AsrRequest(
                            audio=utterance.audio,
                            language=whisper_language(params.language),
                            word_timestamps=True,
                            # The call's own vocabulary, so the timed decode reads as the
                            # message did and places its spans.
                            vocabulary=vocabulary,
                        )
                    )
                    words = timed.words
                ranges = locate(
                    result.text,
                    words,
                    whole,
                    redacted_audio.margin_ms,
                    redacted_audio.margin_after_ms,
                )
                log.debug(
                    "call %s: redacted audio of %r at %s: %s",
                    key,
                    redact(result.text),
                    [(w.start_ms, w.end_ms) for w in words],
                    ranges,
                )
        except Exception:
            log.exception("call %s: could not locate an utterance's redacted audio", key)
            ranges = None
        redacted_audio.resolve([whole] if ranges is None else ranges)

    async def expire_messages(self, key: CallKey, ended_at: float) -> None:
        """Retention counts from the end of the call, so every message of it expires
        together."""
        await asyncio.to_thread(self.store.set_message_expiry, key, ended_at + self.retention_s)

    async def record_lost(
        self, key: CallKey, speaker: Speaker, utterance: Utterance, lost: UtteranceLost
    ) -> None:
        """What the tenant sees of an utterance no message went out for: an entry in its
        failures (``GET /callscribe/v1/webhook-failures``, ``callscribe webhooks failures``),
        named by the call, the speaker and where in the call the speech was."""
        failure = DeliveryFailure(
            tenant=key.tenant,
            conversation_id=key.guid,
            message_id=f"untranscribed:{speaker.role}:{utterance.start_ms}-{utterance.end_ms}",
            reason=f"not transcribed: {lost.reason}",
            status_code=None,
            at=time.time(),
        )
        try:
            await asyncio.to_thread(self.store.put_delivery_failure, failure)
        except Exception:
            log.exception("call %s: could not record an untranscribed utterance", key)

    async def transcribe(
        self,
        utterance: Utterance,
        params: AutotranscribeParams,
        key: CallKey | None = None,
        *,
        vocabulary: tuple[str, ...] = (),
    ) -> AsrResult | UtteranceLost | None:
        """The utterance's text; None when it has none; ``UtteranceLost`` when it could not
        be transcribed (also counted in ``stats``, which ``/healthz`` shows)."""
        queued = time.perf_counter()
        duration_ms = utterance.end_ms - utterance.start_ms
        try:
            result = await self.asr.transcribe(
                AsrRequest(
                    audio=utterance.audio,
                    language=whisper_language(params.language),
                    word_timestamps=params.detailedToken,
                    vocabulary=vocabulary,
                )
            )
        except AsrOverloadedError as exc:
            self.stats.errors += 1
            self.stats.overloaded += 1
            log.error(
                "call %s: an utterance of %d ms was refused by the ASR service: %s",
                key,
                duration_ms,
                exc,
            )
            return UtteranceLost(f"the speech recognition service refused it ({exc})")
        except AsrError as exc:
            self.stats.errors += 1
            log.error("call %s: ASR failed for an utterance of %d ms: %s", key, duration_ms, exc)
            return UtteranceLost(f"speech recognition failed ({exc})")
        except Exception as exc:
            self.stats.errors += 1
            log.exception("call %s: ASR failed for an utterance of %d ms", key, duration_ms)
            return UtteranceLost(f"speech recognition failed ({type(exc).__name__})")
        self.stats.utterances += 1
        self.stats.audio_s += result.audio_ms / 1000
        self.stats.processing_s += result.processing_ms / 1000
        self.stats.queue_wait_s.append(time.perf_counter() - queued - result.processing_ms / 1000)
        if not result.text.strip():
            self.stats.empty += 1
            return None
        return result

    def message_body(
        self,
        key: CallKey,
        speaker: Speaker,
        utterance: Utterance,
        result: AsrResult,
        params: AutotranscribeParams,
    ) -> dict[str, Any]:
        return {
            "type": "transcript",
            "externalConversationId": key.guid,
            "streamId": speaker.stream_id,
            "sender": {"externalId": speaker.external_id, "role": speaker.role},
            "autotranscribeResponse": {
                "message": "transcript",
                "start": utterance.start_ms,
                "end": utterance.end_ms,
                "utterance": [build_utterance(result, params, utterance.start_ms)],
            },
        }

    async def persist_and_publish(
        self, key: CallKey, seq: int, body: dict[str, Any], endpointed_at: float | None = None
    ) -> str:
        now = time.time()
        message_id = str(uuid.uuid4())
        stored = StoredMessage(
            key=key,
            seq=seq,
            message_id=message_id,
            body=body,
            created_at=now,
            expires_at=now + self.retention_s,
        )
        await asyncio.to_thread(self.store.put_message, stored)
        event = TranscriptEvent(
            tenant=key.tenant,
            namespace=key.namespace,
            conversation_id=key.guid,
            message_id=message_id,
            seq=seq,
            body=body,
            endpointed_at=endpointed_at,
        )
        try:
            await self.bus.publish(event)
        except Exception as exc:
            await self.record_publish_failure(event, exc)
        return message_id

    async def record_publish_failure(self, event: TranscriptEvent, exc: Exception) -> None:
        """The message is persisted (the after-call API has it) but no webhook will carry it:
        the customer sees that in the webhook failures, as any other undelivered message."""
        self.publish_failures += 1
        log.error("message %s persisted but not published: %s", event.message_id, exc)
        failure = DeliveryFailure(
            tenant=event.tenant,
            conversation_id=event.conversation_id,
            message_id=event.message_id,
            reason=f"not queued for delivery: {type(exc).__name__}: {exc}"[:500],
            status_code=None,
            at=time.time(),
        )
        try:
            await asyncio.to_thread(self.store.put_delivery_failure, failure)
        except Exception:
            log.exception("could not record the delivery failure of %s", event.message_id)
