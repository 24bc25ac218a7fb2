"""Transcript quality against a reference script: word errors, loops, truncations, timing.

The quality corpus (``callscribe/samples/quality/``) gives every turn of every call its exact
words and where it lies on its track. Streaming transcripts are cut by the endpointer, not by
turn, so a message may cover two turns (a short pause it did not end on) and a turn may come in
two messages (a long pause inside it). Scoring therefore works on *groups*: the smallest sets of
turns and messages of one track such that no message overlaps a turn outside its group. Each
group's reference words are scored against its messages' words; offline transcripts of the same
turns are scored on the same groups, so the two word error rates are comparable.

Text is normalised before it is compared: lower case, no punctuation, numbers read digit by
digit ("4729" and "four seven two nine" are the same words), e-mail addresses read aloud.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import jiwer

from callscribe.textnorm import normalize, repetition_loop


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions turning ``reference`` into ``hypothesis``."""
    if not reference:
        return len(hypothesis)
    if not hypothesis:
        return len(reference)
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return out.substitutions + out.deletions + out.insertions


@dataclass(frozen=True)
class Turn:
    """One line of the script: a speaker's words and where they lie on the track (ms)."""

    track: str
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class Transcript:
    """One transcribed utterance: streamed (a webhook message) or offline (a cut turn)."""

    track: str
    start_ms: int
    end_ms: int
    text: str


@dataclass
class Group:
    """Turns and the transcripts that overlap them (see the module's docstring)."""

    track: str
    turns: list[Turn] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)

    @property
    def reference(self) -> list[str]:
        return [w for t in self.turns for w in normalize(t.text)]

    @property
    def hypothesis(self) -> list[str]:
        return [
            w for t in sorted(self.transcripts, key=lambda t: t.start_ms) for w in normalize(t.text)
        ]


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    return min(a_end, b_end) - max(a_start, b_start)


def group(turns: Iterable[Turn], transcripts: Iterable[Transcript]) -> list[Group]:
    """Groups of one track's turns and transcripts: a transcript joins the turns it overlaps
    (or, overlapping none, the nearest turn), and groups sharing a transcript merge."""
    turns = sorted(turns, key=lambda t: (t.track, t.start_ms))
    parent = list(range(len(turns)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: list[tuple[int, Transcript]] = []
    for transcript in transcripts:
        mine = [i for i, t in enumerate(turns) if t.track == transcript.track]
        if not mine:
            continue
        hit = [
            i
            for i in mine
            if _overlap(turns[i].start_ms, turns[i].end_ms, transcript.start_ms, transcript.end_ms)
            > 0
        ]
        if not hit:
            hit = [
                min(
                    mine,
                    key=lambda i: max(
                        turns[i].start_ms - transcript.end_ms, transcript.start_ms - turns[i].end_ms
                    ),
                )
            ]
        for i in hit[1:]:
            parent[root(i)] = root(hit[0])
        owner.append((hit[0], transcript))
    groups: dict[int, Group] = {}
    for i, turn in enumerate(turns):
        groups.setdefault(root(i), Group(turn.track)).turns.append(turn)
    for i, transcript in owner:
        groups[root(i)].transcripts.append(transcript)
    return sorted(groups.values(), key=lambda g: (g.track, g.turns[0].start_ms))


def regroup(groups: Sequence[Group], transcripts: Iterable[Transcript]) -> list[Group]:
    """The same groups (same turns) holding other transcripts, each put in the group of the
    turn it overlaps most: offline transcripts of each turn, scored like the streamed ones."""
    regrouped = [Group(g.track, list(g.turns)) for g in groups]
    for transcript in transcripts:
        candidates = [g for g in regrouped if g.track == transcript.track]
        if not candidates:
            continue
        best = max(
            candidates,
            key=lambda g: max(
                _overlap(t.start_ms, t.end_ms, transcript.start_ms, transcript.end_ms)
                for t in g.turns
            ),
        )
        best.transcripts.append(transcript)
    return regrouped


@dataclass
class Score:
    """Totals over groups: WER = errors / reference words."""

    groups: int = 0
    reference_words: int = 0
    errors: int = 0
    loops: list[str] = field(default_factory=list)  # the looping transcripts' texts
    truncations: list[str] = field(default_factory=list)  # the truncated groups' references
    start_errors_ms: list[int] = field(default_factory=list)
    end_errors_ms: list[int] = field(default_factory=list)

    @property
    def wer(self) -> float:
        return self.errors / self.reference_words if self.reference_words else 0.0

    def add(self, other: Score) -> None:
        self.groups += other.groups
        self.reference_words += other.reference_words
        self.errors += other.errors
        self.loops += other.loops
        self.truncations += other.truncations
        self.start_errors_ms += other.start_errors_ms
        self.end_errors_ms += other.end_errors_ms


def score(groups: Iterable[Group]) -> Score:
    """Word errors, loops (transcripts with a repetition loop), truncations (groups whose
    transcripts hold fewer than half the reference's words) and, for groups that were
    transcribed, the error of the transcripts' start and end against the turns' (ms)."""
    total = Score()
    for g in groups:
        reference, hypothesis = g.reference, g.hypothesis
        total.groups += 1
        total.reference_words += len(reference)
        total.errors += word_errors(reference, hypothesis)
        for transcript in g.transcripts:
            if repetition_loop(normalize(transcript.text), reference) is not None:
                total.loops.append(transcript.text)
        if len(hypothesis) * 2 < len(reference):
            total.truncations.append(" ".join(t.text for t in g.turns))
        if g.transcripts:
            total.start_errors_ms.append(
                abs(min(t.start_ms for t in g.transcripts) - g.turns[0].start_ms)
            )
            total.end_errors_ms.append(
                abs(max(t.end_ms for t in g.transcripts) - g.turns[-1].end_ms)
            )
    return total
