"""``callscribe bench vocabulary``: what a call's vocabulary does to its transcript.

On one split of the quality corpus (``callscribe/samples/quality/``), each call is transcribed
twice, without and with a vocabulary, on two paths:

- offline: every turn cut generously from its track and decoded alone with faster-whisper's
  own 30 s window, as ``callscribe bench quality`` does (``quality_bench.offline_transcripts``);
- streamed: each track from the call's start to its stop run through a participant stream
  (the real resampler, the Silero endpointer and its settings, as a live call is cut) and each
  utterance decoded by the engine a server runs (``AsrSettings()``, trimmed window), in the
  call's order.

The domain calls (those with a ``vocabulary`` in ``corpus.json``) are given their own
vocabulary: recall of the terms their scripts say, and their word error rate. The general
calls, which say none of those terms, are each given a domain call's vocabulary (taken in
turn over all domain calls of the corpus): a term the transcript holds more often than the
reference is a false insertion, counted with and without the vocabulary (without, Whisper may
still write "PIN" where "pin" or "pen" was said and the reference says otherwise).

A term counts where its words appear in a row in the normalised text (``textnorm.normalize``:
lower case, no punctuation), in its vocabulary's spelling: "Fiber" is not "Fibre". Each group
of turns (``quality.group``) is counted on its own: found = min(said, written), inserted =
max(0, written - said).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callscribe.asr.base import AsrRequest
from callscribe.audio import ulaw_to_pcm16
from callscribe.calls import ParticipantStream
from callscribe.config import AsrSettings, EndpointingSettings
from callscribe.endpointing import SileroVad
from callscribe.quality import Group, Score, Transcript, group, regroup, score
from callscribe.quality_bench import (
    SPLITS,
    CorpusCall,
    load_corpus,
    offline_settings,
    offline_transcripts,
)
from callscribe.textnorm import normalize

PATHS = ("offline", "streamed")
FRAME_SAMPLES = 160  # 20 ms at 8 kHz, as a Twilio media frame


@dataclass
class TermTally:
    said: int = 0  # occurrences in the reference
    found: int = 0  # of those, written in the transcript
    inserted: int = 0  # written more often than said

    @property
    def recall(self) -> float:
        return self.found / self.said if self.said else float("nan")

    def add(self, other: TermTally) -> None:
        self.said += other.said
        self.found += other.found
        self.inserted += other.inserted


def _occurrences(words: Sequence[str], run: Sequence[str]) -> int:
    n = len(run)
    return sum(list(words[i : i + n]) == list(run) for i in range(len(words) - n + 1))


def tally(groups: Iterable[Group], terms: Sequence[str]) -> TermTally:
    total = TermTally()
    runs = [normalize(term) for term in terms]
    for g in groups:
        reference, hypothesis = g.reference, g.hypothesis
        for run in runs:
            said = _occurrences(reference, run)
            written = _occurrences(hypothesis, run)
            total.said += said
            total.found += min(said, written)
            total.inserted += max(0, written - said)
    return total


@dataclass
class Condition:
    """One path, without or with the vocabulary, over a set of calls."""

    score: Score = field(default_factory=Score)
    terms: TermTally = field(default_factory=TermTally)

    def add(self, groups: list[Group], terms: Sequence[str]) -> None:
        self.score.add(score(groups))
        self.terms.add(tally(groups, terms))


@dataclass
class VocabularyReport:
    split: str
    style: str
    # (path, "domain" or "general", "without" or "with") -> condition
    conditions: dict[tuple[str, str, str], Condition]
    echoes: int  # decodes that copied their prompt and were done again without it
    calls: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "style": self.style,
            "calls": self.calls,
            "promptEchoes": self.echoes,
            "conditions": [
                {
                    "path": path,
                    "calls": kind,
                    "vocabulary": which,
                    "referenceWords": c.score.reference_words,
                    "wer": round(c.score.wer, 4),
                    "termsSaid": c.terms.said,
                    "termsFound": c.terms.found,
                    "termsInserted": c.terms.inserted,
                }
                for (path, kind, which), c in self.conditions.items()
            ],
        }


def streamed_transcripts(
    engine: Any, corpus_call: CorpusCall, vocabulary: tuple[str, ...]
) -> list[Transcript]:
    """Each track cut by a participant stream as a live call is, from the start control to
    the stop, and each utterance decoded as the server's pipeline decodes it."""
    call = corpus_call.call
    start = next(c.at_ms for c in call.controls if c.action == "start") * 8
    stop = next(c.at_ms for c in call.controls if c.action == "stop") * 8
    transcripts = []
    for track, data in sorted(call.tracks.items()):
        pcm = ulaw_to_pcm16(data)
        stream = ParticipantStream(track, EndpointingSettings(), SileroVad())
        stream.push(pcm[:start])
        stream.set_transcribing(True)
        utterances = []
        for at in range(start, stop, FRAME_SAMPLES):
            utterances += stream.push(pcm[at : min(at + FRAME_SAMPLES, stop)])
        utterances += stream.set_transcribing(False)
        for utterance in utterances:
            request = AsrRequest(
                utterance.audio.astype(np.float32), language="en", vocabulary=vocabulary
            )
            text = engine.transcribe_blocking(request).text
            if text:
                transcripts.append(Transcript(track, utterance.start_ms, utterance.end_ms, text))
    return transcripts


def measure(
    split: str,
    paths: Sequence[str] = PATHS,
    style: str | None = None,
    general: bool = True,
) -> VocabularyReport:
    from callscribe.asr.whisper import FasterWhisperEngine

    domain_calls = load_corpus(split=split, kind="domain")
    every_domain_call = load_corpus(kind="domain")
    general_calls = load_corpus(split=split) if general else []
    engines = {
        "offline": FasterWhisperEngine(offline_settings()) if "offline" in paths else None,
        "streamed": FasterWhisperEngine(AsrSettings()) if "streamed" in paths else None,
    }
    for engine in engines.values():
        if engine is not None and style is not None:
            engine.vocabulary_style = style
    conditions: dict[tuple[str, str, str], Condition] = {}
    # What each call is given, and the terms counted in it.
    plan: list[tuple[CorpusCall, str, tuple[str, ...]]] = [
        (c, "domain", c.vocabulary) for c in domain_calls
    ] + [
        (c, "general", every_domain_call[i % len(every_domain_call)].vocabulary)
        for i, c in enumerate(general_calls)
    ]
    for path in paths:
        engine = engines[path]
        transcribe = streamed_transcripts if path == "streamed" else offline_transcripts
        for corpus_call, kind, vocabulary in plan:
            without = transcribe(engine, corpus_call, ())
            with_ = transcribe(engine, corpus_call, vocabulary)
            groups = group(corpus_call.turns, without)
            for which, transcripts in (("without", without), ("with", with_)):
                # Both scored on the groups of the run without: the same turns either way.
                scored = regroup(groups, transcripts) if which == "with" else groups
                conditions.setdefault((path, kind, which), Condition()).add(scored, vocabulary)
            print(f"  {path:<8} {corpus_call.id:<18} done", flush=True)
    echoes = sum(e.prompt_echoes for e in engines.values() if e is not None)
    used_style = next(e.vocabulary_style for e in engines.values() if e is not None)
    return VocabularyReport(split, used_style, conditions, echoes, [c.id for c, _, _ in plan])


def format_report(report: VocabularyReport) -> str:
    header = (
        f"{'split: ' + report.split:<22} {'path':<9} {'vocabulary':<10} {'words':>6} "
        f"{'WER':>6} {'terms':>6} {'found':>6} {'recall':>7} {'inserted':>8}"
    )
    lines = [f"prompt style: {report.style}", header, "-" * len(header)]
    for (path, kind, which), c in sorted(
        report.conditions.items(), key=lambda item: (item[0][1], item[0][0], item[0][2] == "with")
    ):
        label = "domain calls" if kind == "domain" else "calls without the terms"
        recall = f"{c.terms.recall:.1%}" if c.terms.said else "–"
        lines.append(
            f"{label:<22} {path:<9} {which:<10} {c.score.reference_words:>6} "
            f"{c.score.wer:>6.1%} {c.terms.said:>6} {c.terms.found:>6} {recall:>7} "
            f"{c.terms.inserted:>8}"
        )
    lines.append(f"decodes that copied the prompt (decoded again without it): {report.echoes}")
    return "\n".join(lines)


async def run_vocabulary_bench(
    split: str,
    paths: Sequence[str] = PATHS,
    style: str | None = None,
    json_path: Path | None = None,
) -> int:
    if split not in SPLITS:
        print(f"split must be one of {SPLITS}")
        return 2
    print(f"bench vocabulary: split {split}, paths {', '.join(paths)}", flush=True)
    report = await asyncio.to_thread(measure, split, paths, style)
    print()
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_dict(), indent=2))
    return 0
