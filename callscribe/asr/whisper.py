"""faster-whisper behind the ``AsrEngine`` port, run in worker threads off the event loop.

Three ways in: ``transcribe`` / ``transcribe_blocking`` run one utterance through faster-whisper's
own ``transcribe``; ``start_interim`` runs the text so far of an utterance still being spoken,
more cheaply, and only on a worker nobody else needs; ``transcribe_batch`` runs several
utterances through one encoder call and one decoder (``generate``) call of the CTranslate2
model, which is how the GPU ASR worker (``callscribe.asr.worker``) serves many calls at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from callscribe.asr.base import AsrError, AsrRequest, AsrResult, AsrWord
from callscribe.asr.models import resolve_model
from callscribe.asr.vocabulary import (
    DEFAULT_PROMPT_STYLE,
    WHISPER_MAX_LENGTH,
    bounded_prompt,
    echoes_prompt,
    prompt_ids,
)
from callscribe.config import AsrSettings
from callscribe.textnorm import loop_free, normalize, repetition_loop, without_loops

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


FRAMES_PER_SECOND = 100  # mel frames
FULL_CONTEXT_FRAMES = 3000  # Whisper's 30 s window
HOP_SAMPLES = SAMPLE_RATE // FRAMES_PER_SECOND
MAX_BATCHED_SAMPLES = FULL_CONTEXT_FRAMES * SAMPLE_RATE // FRAMES_PER_SECOND

# An interim decode (``start_interim``): greedy only. Its text is replaced by the final's within
# a second or two, so the fallbacks and the full-window retry that make finals accurate would
# only make interims later and take workers from finals.
GREEDY_ONLY = ((1, 0.0),)

# faster-whisper's defaults, which ``transcribe_blocking`` uses too: a decode whose text
# compresses better than this (gzip) is a repetition loop, and is retried at the next
# temperature; sampled retries keep the best of this many hypotheses.
COMPRESSION_RATIO_THRESHOLD = 2.4
SAMPLED_HYPOTHESES = 5


# The suspicion rule for a shortened window's decode (``suspect``): the endpointer leaves about
# this much non-speech around an utterance (pre-roll, trailing silence), and people say more
# than this many words a second of speech (2 to 3 is usual; slow digit strings about 1.5).
UTTERANCE_MARGIN_S = 0.7
MIN_WORDS_PER_SPEECH_S = 1.0


def _max_new_tokens(samples: int) -> int:
    # People say at most ~5 tokens a second; a bound stops a decoding loop early.
    return min(440, 16 + samples * 8 // SAMPLE_RATE)


@dataclass(frozen=True)
class _Decode:
    """One decoder hypothesis for one utterance, with what Whisper's fallback rules look at."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def _windowed_whisper_model_class() -> type:
    """A faster-whisper ``WhisperModel`` whose encoder sees a window shorter than 30 s.

    faster-whisper pads every window to 30 s of mel frames, so the encoder costs the same for
    a 2 s utterance as for 30 s of audio (on a CPU the encoder's attention makes 30 s about 13
    times dearer than 5 s). CTranslate2's Whisper encoder accepts shorter inputs: the engine
    pads the utterance's *audio* with silence up to the window it chose and the encoder is
    given just that window. Which length applies is set per call, in a thread-local.
    """
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):  # type: ignore[misc]
        _context = threading.local()

        def encode(self, features: np.ndarray):  # type: ignore[no-untyped-def]
            frames = getattr(self._context, "frames", None)
            if frames is not None and features.shape[-1] > frames:
                features = np.ascontiguousarray(features[..., :frames])
            return super().encode(features)

    return WindowedWhisperModel


class FasterWhisperEngine:
    def __init__(self, settings: AsrSettings) -> None:
        self.settings = settings
        self.model_path = resolve_model(settings.model, settings.cache_dir)
        started = time.perf_counter()
        workers, threads = settings.parallelism()
        self._model = _windowed_whisper_model_class()(
            self.model_path,
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=threads,
            num_workers=workers,
        )
        log.info(
            "loaded Whisper model %s (%s, %s, %d workers × %d threads) in %.1f s",
            settings.model,
            settings.device,
            settings.compute_type,
            workers,
            threads,
            time.perf_counter() - started,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr")
        self.workers = workers
        # Decodes handed to the pool and not yet answered (running, or waiting for a worker):
        # what tells an interim decode whether a worker is idle. Changed on the event loop only.
        self.decodes_in_flight = 0
        self._tokenizers: dict[str, object] = {}
        # Decodes from a shortened window that looked broken and were done again in 30 s.
        self.full_window_retries = 0
        # Repetition loops that even the full window gave, cut back to one occurrence.
        self.loops_cut = 0
        # How a request's vocabulary is worded for the decoder (``callscribe.asr.vocabulary``).
        self.vocabulary_style = DEFAULT_PROMPT_STYLE
        # Decodes that copied the vocabulary prompt into their text and were done again
        # without it.
        self.prompt_echoes = 0
        # Decoder groups of batched decodes: one per prompt length in each batch (see
        # ``_decode_together``), so batches / groups says what mixed vocabularies cost.
        self.prompt_groups = 0

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        # The port reports an utterance it cannot transcribe as AsrError, as the remote engine
        # does for the worker's refusal (faster-whisper itself raises ValueError).
        try:
            self._check_languages([request])
        except ValueError as exc:
            raise AsrError(str(exc)) from exc
        return await self._in_pool(self.transcribe_blocking, request)

    def _in_pool(
        self, decode: Callable[[AsrRequest], AsrResult], request: AsrRequest
    ) -> asyncio.Future[AsrResult]:
        """``decode(request)`` on a worker, counted in ``decodes_in_flight`` from now until it
        is answered. Counted as it is handed to the pool, not later: an interim decode that
        looks at the count in the meantime must see this one."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, decode, request)
        self.decodes_in_flight += 1
        future.add_done_callback(self._answered)
        return future

    def _answered(self, _: asyncio.Future[AsrResult]) -> None:
        self.decodes_in_flight -= 1

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None:
        """The text so far of an utterance still being spoken, decoded now if a worker is idle
        (fewer decodes in flight than workers, so no final waits for one); None when not: the
        interim is shed. Decided and counted in one step on the event loop, so two streams
        asking at once cannot both take the last idle worker, and an interim never waits in
        the pool: a final that arrives later waits at most for the decodes already running.

        The cheapest decode that reads well enough to be replaced: greedy, no fallback, no
        full-window retry, no word timings, the trimmed window (see
        ``transcribe_interim_blocking``)."""
        if self.decodes_in_flight >= self.workers:
            return None
        return self._in_pool(self.transcribe_interim_blocking, request)

    def transcribe_interim_blocking(self, request: AsrRequest) -> AsrResult:
        started = time.perf_counter()
        request = replace(request, word_timestamps=False)
        if not np.any(request.audio):
            return self._digital_silence(request)
        self._check_languages([request])
        frames = self.window_frames(len(request.audio))
        result = self._transcribe_window(request, frames, rounds=GREEDY_ONLY)
        if self._echoes_vocabulary(request, result.text):
            result = self._transcribe_window(
                replace(request, vocabulary=()), frames, rounds=GREEDY_ONLY
            )
        # A loop ("and and and") is cut as in a final, but not counted among the finals' cuts.
        text = without_loops(result.text)
        return replace(result, text=text, processing_ms=(time.perf_counter() - started) * 1000)

    def window_frames(self, samples: int) -> int | None:
        """The encoder window (mel frames) for an utterance of ``samples``.

        ``encoder_context="full"``: Whisper's 30 s. ``"trimmed"``: the utterance plus
        ``padding_frames`` of silence, at least ``min_window_frames``, rounded up to whole
        seconds (so that utterances of similar length share a window and batch together).
        None: longer than 30 s, faster-whisper's own sliding windows apply.
        """
        content = -(-samples // HOP_SAMPLES)
        if content > FULL_CONTEXT_FRAMES:
            return None
        if self.settings.encoder_context == "full":
            return FULL_CONTEXT_FRAMES
        needed = max(content + self.settings.padding_frames, self.settings.min_window_frames)
        whole_seconds = -(-needed // FRAMES_PER_SECOND) * FRAMES_PER_SECOND
        return min(FULL_CONTEXT_FRAMES, whole_seconds)

    def _padded(self, audio: np.ndarray, frames: int | None) -> np.ndarray:
        """The utterance followed by digital silence up to the window's length.

        Whisper learnt on 30 s windows whose audio was padded with zeros, i.e. mel frames at
        the spectrogram's floor after the speech. faster-whisper instead pads the *features*
        with zeros, a level well above that floor; and a window cut short right after the
        last word leaves the decoder no silence to see the sentence end in. Either way Whisper
        base loops ("and and and") or stops early on voices it finds hard; padding the audio
        itself keeps the window what the model was trained on.
        """
        if frames is None or not self.settings.pad_audio:
            return audio
        target = frames * HOP_SAMPLES
        if len(audio) >= target:
            return audio
        return np.concatenate([audio, np.zeros(target - len(audio), dtype=np.float32)])

    def suspect(self, text: str, samples: int) -> bool:
        """Whether a decode from a shortened window looks broken: a repetition loop, or far
        fewer words than the audio holds speech for (a sentence stopped short)."""
        words = normalize(text)
        if not words:
            return False  # Whisper's "no speech" verdict: a 30 s window would only invent
        if repetition_loop(words) is not None:
            return True
        speech_s = samples / SAMPLE_RATE - UTTERANCE_MARGIN_S
        return len(words) < speech_s * MIN_WORDS_PER_SPEECH_S

    def transcribe_blocking(self, request: AsrRequest) -> AsrResult:
        started = time.perf_counter()
        if not np.any(request.audio):
            return self._digital_silence(request)
        frames = self.window_frames(len(request.audio))
        result = self._transcribe_window(request, frames)
        if (
            frames is not None
            and frames < FULL_CONTEXT_FRAMES
            and self.settings.full_window_retry
            and self.suspect(result.text, len(request.audio))
        ):
            self.full_window_retries += 1
            log.info(
                "re-decoding a %d ms utterance with the full window: %r",
                result.audio_ms,
                result.text[:80],
            )
            result = self._transcribe_window(request, FULL_CONTEXT_FRAMES)
        if self._echoes_vocabulary(request, result.text):
            result = self._transcribe_window(replace(request, vocabulary=()), frames)
        result = self._cut_loops(result)
        return replace(result, processing_ms=(time.perf_counter() - started) * 1000)

    def vocabulary_prompt(self, request: AsrRequest) -> str:
        """The prompt text that carries ``request.vocabulary`` to the decoder, bounded
        (``callscribe.asr.vocabulary``); "" for none."""
        if not request.vocabulary:
            return ""
        return bounded_prompt(
            self._tokenizer(request.language or "en"),
            request.vocabulary,
            self.vocabulary_style,
        )

    def _echoes_vocabulary(self, request: AsrRequest, text: str) -> bool:
        """Whether a decode copied its vocabulary prompt (Whisper's way of filling a window
        it hears nothing in): then it is done again without the vocabulary, counted."""
        if not request.vocabulary or not echoes_prompt(text, request.vocabulary):
            return False
        self.prompt_echoes += 1
        log.info("a decode copied its vocabulary prompt, decoding without: %r", text[:120])
        return True

    def _cut_loops(self, result: AsrResult) -> AsrResult:
        """A loop that no window avoided is cut back to one occurrence of its phrase (and its
        words' timings with it): "and your name and your name" says "and your name"."""
        if repetition_loop(normalize(result.text)) is None:
            return result
        text = without_loops(result.text)
        if text == result.text:
            return result  # a number's own digits ("4111 1111 1111 1111"): nothing to cut
        self.loops_cut += 1
        log.info("cut a repetition loop: %r → %r", result.text[:120], text[:120])
        words = result.words
        if words:
            words = tuple(words[i] for i in loop_free([w.text for w in words]))
        return replace(result, text=text, words=words)

    @staticmethod
    def _digital_silence(request: AsrRequest) -> AsrResult:
        """All-zero audio holds no speech; Whisper, shown a window of nothing but the floor,
        would still say "you"."""
        return AsrResult(
            text="",
            language=request.language,
            audio_ms=int(math.ceil(len(request.audio) * 1000 / SAMPLE_RATE)),
        )

    def _decoding_rounds(self) -> list[tuple[int, float]]:
        """(beam size, temperature) of each decode tried in turn, the next only when the last
        looks like a loop or is improbable (faster-whisper's rule, ``_needs_fallback``).

        After greedy decoding, a beam search (``fallback_beam_size``) comes before any
        sampled temperature: it is deterministic, so the same audio always gives the same
        text, and beam search finds what greedy decoding missed about as often as sampling."""
        rounds: list[tuple[int, float]] = []
        for temperature in self.settings.temperatures:
            if temperature > 0:
                rounds.append((1, temperature))
                continue
            rounds.append((self.settings.beam_size, 0.0))
            if self.settings.fallback_beam_size > self.settings.beam_size:
                rounds.append((self.settings.fallback_beam_size, 0.0))
        return rounds

    def _transcribe_window(
        self,
        request: AsrRequest,
        frames: int | None,
        rounds: Sequence[tuple[int, float]] | None = None,
    ) -> AsrResult:
        """``rounds``: (beam size, temperature) of each decode tried in turn (by default
        ``_decoding_rounds``)."""
        self._model._context.frames = frames
        audio = self._padded(request.audio, frames)
        hotwords = self.vocabulary_prompt(request)
        # faster-whisper refuses a prompt plus token bound longer than Whisper's context;
        # only an utterance over 30 s with a long vocabulary comes near it.
        prompt_length = len(
            prompt_ids(
                self._tokenizer(request.language or "en"),
                hotwords,
                without_timestamps=not request.word_timestamps,
            )
        )
        max_new_tokens = min(
            _max_new_tokens(len(request.audio)), WHISPER_MAX_LENGTH - prompt_length
        )
        tried: list[tuple[_Decode, list[Any], Any]] = []  # with faster-whisper's TranscriptionInfo
        for beam_size, temperature in rounds or self._decoding_rounds():
            segments, info = self._model.transcribe(
                audio,
                language=request.language,
                beam_size=beam_size,
                best_of=SAMPLED_HYPOTHESES,
                word_timestamps=request.word_timestamps,
                without_timestamps=not request.word_timestamps,
                condition_on_previous_text=False,
                vad_filter=False,  # our endpointer already cut the audio at speech
                no_speech_threshold=self.settings.no_speech_threshold,
                log_prob_threshold=self.settings.log_prob_threshold,
                temperature=[temperature],
                max_new_tokens=max_new_tokens,
                # The same prompt on every 30 s window of a longer utterance (an
                # initial_prompt would reach the first window only).
                hotwords=hotwords or None,
            )
            decoded = list(segments)  # lazily decoded: the thread-local context applies here
            quality = _Decode(
                text=" ".join(segment.text.strip() for segment in decoded),
                avg_logprob=min((s.avg_logprob for s in decoded), default=0.0),
                no_speech_prob=max((s.no_speech_prob for s in decoded), default=0.0),
                compression_ratio=max((s.compression_ratio for s in decoded), default=0.0),
            )
            tried.append((quality, decoded, info))
            if not self._needs_fallback(quality):
                break
        chosen = self._choose([quality for quality, _, _ in tried])
        _, segments, info = next(t for t in tried if t[0] is chosen)
        texts: list[str] = []
        words: list[AsrWord] = []
        for segment in segments:
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
        )

    # ------------------------------------------------------------------ batched transcription

    @property
    def supported_languages(self) -> list[str]:
        return list(self._model.supported_languages)

    def batchable(self, request: AsrRequest) -> bool:
        """Whether ``transcribe_batch`` decodes this request in the shared batch.

        Word timings need faster-whisper's alignment pass, a missing language needs its
        language detection, and more than 30 s needs its sliding window: such requests take
        the per-utterance ``transcribe_blocking`` path instead (still inside the same call).
        """
        return (
            request.language is not None
            and not request.word_timestamps
            and 0 < len(request.audio) <= MAX_BATCHED_SAMPLES
        )

    def transcribe_batch(self, requests: list[AsrRequest]) -> list[AsrResult]:
        """Transcribe several utterances; results in the order of ``requests``.

        The batchable ones (see ``batchable``) share one encoder call and one ``generate`` call
        in a common window, the largest ``window_frames`` in the batch, each one's audio padded
        with silence to it (``_features``). Each gets the same decoding rules as
        ``transcribe_blocking``: temperature fallback on loops or improbable text, Whisper's
        no-speech filter, the per-utterance token bound, a retry in the 30 s window of those
        that look broken (``suspect``), loops cut. Their ``processing_ms`` is the time the
        shared batch took, which every one of them waited for. The others are transcribed one
        by one with ``transcribe_blocking``; digital silence is answered without the model.
        """
        self._check_languages(requests)
        requests = [replace(r, word_timestamps=False) if r.interim else r for r in requests]
        results: list[AsrResult | None] = [
            None if np.any(request.audio) else self._digital_silence(request)
            for request in requests
        ]
        batched = [
            i
            for i, request in enumerate(requests)
            if results[i] is None and self.batchable(request)
        ]
        if batched:
            for i, result in zip(
                batched, self._transcribe_together([requests[i] for i in batched]), strict=True
            ):
                results[i] = result
        return [
            result
            if result is not None
            else self.transcribe_interim_blocking(request)
            if request.interim
            else self.transcribe_blocking(request)
            for request, result in zip(requests, results, strict=True)
        ]

    def _check_languages(self, requests: list[AsrRequest]) -> None:
        """Refuse the batch before any work rather than fail it halfway. (An English-only
        model transcribes any language as English, as faster-whisper does.)"""
        if not self._model.model.is_multilingual:
            return
        supported = set(self._model.supported_languages)
        for request in requests:
            if request.language is not None and request.language not in supported:
                raise ValueError(f"language {request.language!r} is not supported")

    def _tokenizer(self, language: str):  # type: ignore[no-untyped-def]
        from faster_whisper.tokenizer import Tokenizer

        multilingual = self._model.model.is_multilingual
        language = language if multilingual else "en"
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = Tokenizer(
                self._model.hf_tokenizer, multilingual, task="transcribe", language=language
            )
            self._tokenizers[language] = tokenizer
        return tokenizer

    def _transcribe_together(self, requests: list[AsrRequest]) -> list[AsrResult]:
        started = time.perf_counter()
        width = max(self.window_frames(len(r.audio)) or FULL_CONTEXT_FRAMES for r in requests)
        texts = self._decode_together(requests, self._features(requests, width))
        if width < FULL_CONTEXT_FRAMES and self.settings.full_window_retry:
            again = [
                i
                for i, (request, (text, _)) in enumerate(zip(requests, texts, strict=True))
                # Interims get no full-window retry: their text is replaced within seconds.
                if not request.interim and self.suspect(text, len(request.audio))
            ]
            if again:
                self.full_window_retries += len(again)
                retried = [requests[i] for i in again]
                redone = self._decode_together(
                    retried, self._features(retried, FULL_CONTEXT_FRAMES)
                )
                for i, text in zip(again, redone, strict=True):
                    texts[i] = text
        echoed = [
            i
            for i, (request, (text, _)) in enumerate(zip(requests, texts, strict=True))
            if self._echoes_vocabulary(request, text)
        ]
        if echoed:
            plain = [replace(requests[i], vocabulary=()) for i in echoed]
            redone = self._decode_together(plain, self._features(plain, width))
            for i, text in zip(echoed, redone, strict=True):
                texts[i] = text
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [
            self._cut_loops(
                AsrResult(
                    text=text,
                    language=language,
                    audio_ms=int(math.ceil(len(request.audio) * 1000 / SAMPLE_RATE)),
                    processing_ms=elapsed_ms,
                )
            )
            for request, (text, language) in zip(requests, texts, strict=True)
        ]

    def _decode_together(
        self, requests: list[AsrRequest], mel: np.ndarray
    ) -> list[tuple[str, str]]:
        """Each request's (text, language), decoded from its own prompt, as faster-whisper
        builds it for a single decode (``get_prompt``): its vocabulary's text after
        <|startofprev|> if it has one, then the start-of-transcript sequence.

        CTranslate2 decodes a batch only when <|startoftranscript|> sits at the same position
        in every prompt, so the requests are decoded in groups of one prompt length (one
        encoder call and one ``generate`` call per round and group): requests without a
        vocabulary form one group, and so do those of one tenant's vocabulary. Padding the
        shorter prompts instead would change what each decodes."""
        tokenizers = [self._tokenizer(request.language or "en") for request in requests]
        prompts = [
            prompt_ids(tokenizer, self.vocabulary_prompt(request))
            for tokenizer, request in zip(tokenizers, requests, strict=True)
        ]
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(len(prompt), []).append(i)
        results: list[tuple[str, str]] = [("", "")] * len(requests)
        for members in groups.values():
            decoded = self._decode_group(
                [requests[i] for i in members],
                mel[members] if len(members) < len(requests) else mel,
                [prompts[i] for i in members],
                [tokenizers[i] for i in members],
            )
            for i, result in zip(members, decoded, strict=True):
                results[i] = result
        self.prompt_groups += len(groups)
        return results

    def _decode_group(
        self,
        requests: list[AsrRequest],
        mel: np.ndarray,
        prompts: list[list[int]],
        tokenizers: list[Any],
    ) -> list[tuple[str, str]]:
        """One encoder call and one ``generate`` call (per temperature round) for requests
        whose prompts have one length: each request's (text, language)."""
        from faster_whisper.transcribe import get_suppressed_tokens

        token_caps = [
            min(_max_new_tokens(len(request.audio)), WHISPER_MAX_LENGTH - len(prompt))
            for request, prompt in zip(requests, prompts, strict=True)
        ]
        # One max_length for the whole group: the longest utterance's bound. Shorter ones are
        # cut back to their own bound afterwards, so their text is what a single decode gives.
        max_length = min(WHISPER_MAX_LENGTH, len(prompts[0]) + max(token_caps))
        suppress_tokens = list(get_suppressed_tokens(tokenizers[0], [-1]))

        decodes: list[list[_Decode]] = [[] for _ in requests]
        pending = list(range(len(requests)))
        for round_index, (beam_size, temperature) in enumerate(self._decoding_rounds()):
            # The first round encodes the whole batch; a retry re-encodes only the utterances
            # being retried (rare), which is simpler and cheaper than slicing the encoder
            # output where it lives (on the GPU).
            encoded = self._encode(mel if round_index == 0 else mel[pending])
            if temperature > 0:
                sampling = {
                    "beam_size": 1,
                    "num_hypotheses": SAMPLED_HYPOTHESES,
                    "sampling_topk": 0,
                    "sampling_temperature": temperature,
                }
            else:
                sampling = {"beam_size": beam_size, "patience": 1.0}
            generated = self._model.model.generate(
                encoded,
                [prompts[i] for i in pending],
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress_tokens,
                **sampling,
            )
            retry = []
            for i, result in zip(pending, generated, strict=True):
                decode = self._decode(result, tokenizers[i], token_caps[i])
                decodes[i].append(decode)
                # Interims share the first round only (greedy with the default beam_size
                # of 1): a fallback would make them later and hold up the finals beside them.
                if self._needs_fallback(decode) and not requests[i].interim:
                    retry.append(i)
            pending = retry
            if not pending:
                break
        results = []
        for tokenizer, tried in zip(tokenizers, decodes, strict=True):
            chosen = self._choose(tried)
            speechless = (
                chosen.no_speech_prob > self.settings.no_speech_threshold
                and not chosen.avg_logprob > self.settings.log_prob_threshold
            )
            results.append(("" if speechless else chosen.text, tokenizer.language_code))
        return results

    def _features(self, requests: list[AsrRequest], width: int) -> np.ndarray:
        """Log-mel features of every request in a window of ``width`` frames: each audio
        padded with silence to the window (see ``_padded``), or its features padded with
        zeros when ``pad_audio`` is off."""
        extractor = self._model.feature_extractor
        features = [extractor(self._padded(request.audio, width)) for request in requests]
        mel = np.zeros((len(requests), features[0].shape[0], width), dtype=np.float32)
        for row, f in enumerate(features):
            # As faster-whisper does: the last frame is the STFT's tail, not content.
            used = min(f.shape[-1] - 1, width)
            mel[row, :, :used] = f[:, :used]
        return mel

    def _encode(self, mel: np.ndarray):  # type: ignore[no-untyped-def]
        import ctranslate2

        model = self._model.model
        # As faster-whisper does: with several GPUs the next call may run on another one.
        to_cpu = model.device == "cuda" and len(model.device_index) > 1
        return model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=to_cpu
        )

    @staticmethod
    def _decode(result, tokenizer, token_cap: int) -> _Decode:  # type: ignore[no-untyped-def]
        from faster_whisper.transcribe import get_compression_ratio

        tokens = list(result.sequences_ids[0])
        # The score covers the whole generated sequence, as faster-whisper reads it; only a
        # decode that ran past this utterance's bound (a loop) has its tokens cut here.
        cumulative_logprob = result.scores[0] * len(tokens)
        avg_logprob = cumulative_logprob / (len(tokens) + 1)
        tokens = tokens[:token_cap]
        text = tokenizer.decode(tokens).strip()
        return _Decode(
            text=text,
            avg_logprob=avg_logprob,
            no_speech_prob=result.no_speech_prob,
            compression_ratio=get_compression_ratio(text),
        )

    def _needs_fallback(self, decode: _Decode) -> bool:
        """faster-whisper's rule for trying the next temperature."""
        looks_silent = (
            decode.no_speech_prob > self.settings.no_speech_threshold
            and decode.avg_logprob < self.settings.log_prob_threshold
        )
        if looks_silent:
            return False
        return (
            decode.compression_ratio > COMPRESSION_RATIO_THRESHOLD
            or decode.avg_logprob < self.settings.log_prob_threshold
        )

    def _choose(self, tried: list[_Decode]) -> _Decode:
        """The last decode if it was accepted; when every temperature failed, the most
        probable one that is not a loop (faster-whisper's choice)."""
        last = tried[-1]
        if not self._needs_fallback(last):
            return last
        not_loops = [d for d in tried if d.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
        return max(not_loops or tried, key=lambda d: d.avg_logprob)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
