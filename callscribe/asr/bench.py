"""``callscribe bench-asr``: ASR latency and throughput per batch size on this device.

The utterances are the agent's and customer's lines of the bundled sample call (the part a
real call transcribes: telephone audio, 8 kHz μ-law, upsampled to 16 kHz as the pipeline does),
each with 200 ms of audio either side as the endpointer leaves it. Each is first transcribed
alone with faster-whisper's own ``transcribe`` (the "single" row: what local mode does), then
in batches of each requested size with ``transcribe_batch`` (what the ASR worker does). Per row:

- latency: the time an utterance waits for its text once its batch starts (the batch's wall
  time; every utterance of a batch gets its result at the end), mean and max;
- compute per utterance: wall time / utterances;
- throughput: utterances per second, and the real-time factor (processing / audio seconds);
- accuracy: word error rate against the call's script, and how many texts equal the single
  decode's.

``vocabularies`` measures what call vocabularies cost (``AsrRequest.vocabulary``): "none"
(no utterance has one), "shared" (every utterance the same one: the calls of one tenant) and
"mixed" (the utterances take the quality corpus's domain vocabularies and none in turn, as
calls of several tenants do). A batch decodes in one group per prompt length
(``FasterWhisperEngine._decode_together``); the "groups" column is their mean per batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.audio import resample_8k_to_16k, ulaw_to_pcm16
from callscribe.config import AsrSettings
from callscribe.quality import word_errors
from callscribe.testing.simulate import load_sample_call
from callscribe.textnorm import normalize

SAMPLE_RATE = 16_000
MARGIN_MS = 200


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray
    script: str


@dataclass(frozen=True)
class BenchRow:
    mode: str  # "single" or "batched"
    batch_size: int
    utterances: int
    wall_s: float
    audio_s: float
    latency_mean_ms: float
    latency_max_ms: float
    word_error_rate: float
    same_as_single: int
    vocabulary: str = "none"
    groups_per_batch: float = 1.0

    @property
    def compute_ms_per_utterance(self) -> float:
        return self.wall_s * 1000 / self.utterances

    @property
    def utterances_per_s(self) -> float:
        return self.utterances / self.wall_s

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / self.audio_s


def sample_utterances(count: int) -> list[Utterance]:
    """``count`` utterances from the sample call's speech, cycling through them if needed."""
    call = load_sample_call()
    speech = [s for s in call.segments if s.transcribed]
    utterances = []
    for index in range(count):
        segment = speech[index % len(speech)]
        start = max(0, (segment.start_ms - MARGIN_MS) * 8)
        end = (segment.end_ms + MARGIN_MS) * 8
        pcm = ulaw_to_pcm16(call.tracks[segment.track][start:end])
        utterances.append(Utterance(resample_8k_to_16k(pcm).astype(np.float32), segment.text))
    return utterances


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over all pairs / reference words, compared as the quality bench compares
    them (``callscribe.quality``: normalised, numbers digit by digit)."""
    errors = total = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref = normalize(reference)
        errors += word_errors(ref, normalize(hypothesis))
        total += len(ref)
    return errors / total if total else 0.0


VOCABULARY_MODES = ("none", "shared", "mixed")


def corpus_vocabularies() -> list[tuple[str, ...]]:
    """The quality corpus's domain calls' vocabularies (``corpus.json``)."""
    from callscribe.quality_bench import corpus_dir

    manifest = json.loads((corpus_dir() / "corpus.json").read_text())
    return [tuple(c["vocabulary"]) for c in manifest["calls"] if "vocabulary" in c]


def vocabularies_for(mode: str, count: int) -> list[tuple[str, ...]]:
    """Each utterance's vocabulary in a ``VOCABULARY_MODES`` mode."""
    if mode == "none":
        return [()] * count
    known = corpus_vocabularies()
    if mode == "shared":
        return [known[0]] * count
    cycle = [*known, ()]
    return [cycle[i % len(cycle)] for i in range(count)]


def measure(
    engine,  # type: ignore[no-untyped-def]
    utterances: list[Utterance],
    batch_size: int | None,
    single_texts: list[str] | None,
    vocabulary: str = "none",
) -> tuple[BenchRow, list[str]]:
    """Transcribe every utterance alone (``batch_size=None``) or in batches of ``batch_size``,
    each with its vocabulary in the ``vocabulary`` mode."""
    vocabularies = vocabularies_for(vocabulary, len(utterances))
    requests = [
        AsrRequest(u.audio, language="en", vocabulary=v)
        for u, v in zip(utterances, vocabularies, strict=True)
    ]
    size = batch_size or 1
    groups_before = getattr(engine, "prompt_groups", 0)
    results: list[AsrResult] = []
    latencies_ms: list[float] = []
    started = time.perf_counter()
    for first in range(0, len(requests), size):
        chunk = requests[first : first + size]
        batch_started = time.perf_counter()
        if batch_size is None:
            results.append(engine.transcribe_blocking(chunk[0]))
        else:
            results.extend(engine.transcribe_batch(chunk))
        latencies_ms.extend([(time.perf_counter() - batch_started) * 1000] * len(chunk))
    wall_s = time.perf_counter() - started
    batches = -(-len(requests) // size)
    groups = getattr(engine, "prompt_groups", 0) - groups_before
    texts = [r.text for r in results]
    row = BenchRow(
        mode="single" if batch_size is None else "batched",
        batch_size=size,
        utterances=len(requests),
        wall_s=wall_s,
        audio_s=sum(len(u.audio) for u in utterances) / SAMPLE_RATE,
        latency_mean_ms=float(np.mean(latencies_ms)),
        latency_max_ms=float(np.max(latencies_ms)),
        word_error_rate=word_error_rate([u.script for u in utterances], texts),
        same_as_single=sum(a == b for a, b in zip(texts, single_texts or texts, strict=True)),
        vocabulary=vocabulary,
        groups_per_batch=groups / batches if batch_size is not None else 1.0,
    )
    return row, texts


def bench_rows(
    engine,  # type: ignore[no-untyped-def]
    batch_sizes: list[int],
    count: int,
    vocabularies: tuple[str, ...] = ("none",),
) -> list[BenchRow]:
    utterances = sample_utterances(count)
    # Warm-up: the first inference of each shape pays for allocations.
    engine.transcribe_batch([AsrRequest(utterances[0].audio, language="en")])
    rows = []
    for vocabulary in vocabularies:
        single, single_texts = measure(engine, utterances, None, None, vocabulary)
        rows.append(single)
        for size in batch_sizes:
            rows.append(measure(engine, utterances, size, single_texts, vocabulary)[0])
    return rows


def format_table(rows: list[BenchRow]) -> str:
    lines = [
        (
            f"{'vocabulary':<10} {'mode':<8} {'batch':>5} {'groups':>6} {'latency mean ms':>15} {'latency max ms':>14} "
            f"{'compute ms/utt':>14} {'utt/s':>7} {'RTF':>7} {'WER':>6} {'same as single':>14}"
        )
    ]
    for row in rows:
        lines.append(
            f"{row.vocabulary:<10} {row.mode:<8} {row.batch_size:>5} "
            f"{row.groups_per_batch:>6.2f} {row.latency_mean_ms:>15.0f} "
            f"{row.latency_max_ms:>14.0f} {row.compute_ms_per_utterance:>14.0f} "
            f"{row.utterances_per_s:>7.2f} {row.real_time_factor:>7.3f} "
            f"{row.word_error_rate:>6.3f} {row.same_as_single:>9}/{row.utterances}"
        )
    return "\n".join(lines)


def run_asr_bench(
    batch_sizes: list[int],
    count: int,
    encoder_context: str | None = None,
    vocabularies: tuple[str, ...] = ("none",),
) -> int:
    from callscribe.asr.whisper import FasterWhisperEngine

    settings = AsrSettings()
    if encoder_context is not None:
        settings = settings.model_copy(update={"encoder_context": encoder_context})
    engine = FasterWhisperEngine(settings)
    rows = bench_rows(engine, batch_sizes, count, vocabularies)
    audio_s = rows[0].audio_s
    print(
        f"ASR benchmark: {settings.model} on {settings.device} ({settings.compute_type}), "
        f"encoder context {settings.encoder_context}, {count} utterances "
        f"({audio_s:.1f} s of audio, mean {audio_s / count:.1f} s)"
    )
    print(format_table(rows))
    return 0
