"""faster-whisper behind the ``AsrEngine`` port, run in worker threads off the event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from callscribe.asr.base import AsrRequest, AsrResult, AsrWord
from callscribe.asr.models import resolve_model
from callscribe.config import AsrSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


FRAMES_PER_SECOND = 100  # mel frames
FULL_CONTEXT_FRAMES = 3000  # Whisper's 30 s window


def _trimmed_whisper_model_class() -> type:
    """A faster-whisper ``WhisperModel`` whose encoder sees only the utterance, not 30 s.

    faster-whisper pads every window to 30 s of mel frames, so the encoder costs the same for
    a 2 s utterance as for 30 s of audio. CTranslate2's Whisper encoder accepts shorter inputs:
    we cut the padding down to the utterance plus ``padding_frames`` of silence (rounded up to
    whole seconds), which makes a short utterance's encoding several times cheaper on a CPU.
    Which length applies is set per call, in a thread-local, by ``FasterWhisperEngine``.
    """
    from faster_whisper import WhisperModel

    class TrimmedContextWhisperModel(WhisperModel):  # type: ignore[misc]
        _context = threading.local()

        def encode(self, features: np.ndarray):  # type: ignore[no-untyped-def]
            frames = getattr(self._context, "frames", None)
            if frames is not None and features.shape[-1] > frames:
                features = np.ascontiguousarray(features[..., :frames])
            return super().encode(features)

    return TrimmedContextWhisperModel


class FasterWhisperEngine:
    def __init__(self, settings: AsrSettings) -> None:
        self.settings = settings
        self.model_path = resolve_model(settings.model, settings.cache_dir)
        started = time.perf_counter()
        self._model = _trimmed_whisper_model_class()(
            self.model_path,
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=settings.workers,
        )
        log.info(
            "loaded Whisper model %s (%s, %s) in %.1f s",
            settings.model,
            settings.device,
            settings.compute_type,
            time.perf_counter() - started,
        )
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="asr")

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transcribe_blocking, request)

    def _context_frames(self, samples: int) -> int | None:
        if self.settings.encoder_context == "full":
            return None
        needed = samples * FRAMES_PER_SECOND // SAMPLE_RATE + self.settings.padding_frames
        whole_seconds = -(-needed // FRAMES_PER_SECOND) * FRAMES_PER_SECOND
        return min(FULL_CONTEXT_FRAMES, whole_seconds)

    def transcribe_blocking(self, request: AsrRequest) -> AsrResult:
        started = time.perf_counter()
        self._model._context.frames = self._context_frames(len(request.audio))
        segments, info = self._model.transcribe(
            request.audio,
            language=request.language,
            beam_size=self.settings.beam_size,
            word_timestamps=request.word_timestamps,
            without_timestamps=not request.word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,  # our endpointer already cut the audio at speech
            no_speech_threshold=self.settings.no_speech_threshold,
            log_prob_threshold=self.settings.log_prob_threshold,
            temperature=self.settings.temperatures,
            # People say at most ~5 tokens a second; a bound stops a decoding loop early.
            max_new_tokens=min(440, 16 + len(request.audio) * 8 // SAMPLE_RATE),
        )
        texts: list[str] = []
        words: list[AsrWord] = []
        for segment in segments:  # lazily decoded: the thread-local context applies here
            if (
                segment.no_speech_prob > self.settings.no_speech_threshold
                and segment.avg_logprob < self.settings.log_prob_threshold
            ):
                continue  # Whisper's own "this was not speech" verdict
            texts.append(segment.text.strip())
            for word in segment.words or ():
                words.append(
                    AsrWord(
                        text=word.word.strip(),
                        start_ms=int(round(word.start * 1000)),
                        end_ms=int(round(word.end * 1000)),
                        confidence=round(float(word.probability), 4),
                    )
                )
        return AsrResult(
            text=" ".join(t for t in texts if t),
            words=tuple(w for w in words if w.text),
            language=info.language,
            audio_ms=int(math.ceil(len(request.audio) * 1000 / SAMPLE_RATE)),
            processing_ms=(time.perf_counter() - started) * 1000,
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
