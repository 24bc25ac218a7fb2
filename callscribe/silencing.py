"""Redacted recordings: where on the call's timeline the audio of a redacted span lies, so the
recording keeps silence there instead of the spoken card number or PIN (PCI DSS forbids
keeping sensitive authentication data after authorisation, as audio too).

Sans-IO: words and their timings in, ranges of 8 kHz samples of one participant's channel
out. ``transcription.TranscriptionPipeline`` decides per utterance, ``recording.CallRecorder``
writes silence over the ranges as it assembles the WAV (the raw audio never reaches the
BlobStore).

Which calls: every utterance whose start request asks for a redacted output
(``redactionOutput`` ``redacted``, the default, or ``redacted_and_unredacted``) is silenced
where it was redacted; a window asking for ``unredacted`` only keeps its audio as it was.

How a span is located: the sensitive spans of the words' joined text (as ``tokens`` are
masked) give the words that make them up; their Whisper timings, relative to the utterance's
audio, plus the utterance's start give the call-timeline samples, widened by a margin before
and after (Whisper's word timings are approximate: ``RecordingSettings``) and clamped to the
utterance's audio. A span reaches back to its cue word, and two spans close together are one
(``CUE_REACH_WORDS``, ``BRIDGE_WORDS``).

Fail safe: when the spans cannot be located (no word timings, or the timed words hold fewer
redacted digits than the message's text, or timings outside the audio) the whole utterance is
silenced in that channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from callscribe.audio import MODEL_RATE, TELEPHONE_RATE
from callscribe.model import RedactionOutput
from callscribe.redaction import find_sensitive_spans, is_cue_word, redact

# Before the margin: how far past the end of the utterance's audio a word may end (Whisper
# rounds the last word's end up to its 20 ms frames).
END_TOLERANCE_MS = 100
_MASK = "\x00"  # never in ASR text: counts what redaction masks
# A span announced by a cue word ("my card number is ...") is silenced from the word after
# the cue when it is at most this many words before the span: the ASR often hears the first
# digits of a number read out as words ("five five" as "time"), which redaction cannot see.
CUE_REACH_WORDS = 4
# Two spans at most this many words apart are silenced as one, the words between included: a
# number read out in groups is often cut in two by a digit the ASR heard as a word ("zero"
# as "Niro"), which would otherwise stay audible between them.
BRIDGE_WORDS = 2


def silences_recording(mode: RedactionOutput) -> bool:
    """Whether utterances under this redaction output are silenced in the recording: every
    mode whose messages carry a redacted text. Only ``unredacted`` keeps the raw audio."""
    return mode is not RedactionOutput.UNREDACTED


@dataclass(frozen=True, order=True)
class SampleRange:
    """``[start, end)`` in 8 kHz samples of the call's audio timeline (the recorder's)."""

    start: int
    end: int

    @property
    def samples(self) -> int:
        return max(0, self.end - self.start)


class RedactedAudio(Protocol):
    """Where one utterance's redacted audio goes (the call's recorder, that speaker's
    channel). ``resolve`` is called once, with the ranges to silence (empty: nothing)."""

    @property
    def whole(self) -> SampleRange: ...

    @property
    def margin_ms(self) -> int: ...

    @property
    def margin_after_ms(self) -> int: ...

    def resolve(self, ranges: Sequence[SampleRange]) -> None: ...


def utterance_range(start_sample: int, samples: int) -> SampleRange:
    """The utterance's audio (``start_sample`` and ``samples`` at 16 kHz, as
    ``endpointing.Utterance``) on the 8 kHz timeline, rounded outwards."""
    ratio = MODEL_RATE // TELEPHONE_RATE
    return SampleRange(start_sample // ratio, -(-(start_sample + samples) // ratio))


def masked_units(text: str) -> int:
    """How many mask characters redaction puts into ``text`` (a digit each, or a character
    of an e-mail address)."""
    return redact(text, mask=_MASK).count(_MASK)


def sensitive_word_runs(words: Sequence[str]) -> list[tuple[int, int]]:
    """For each sensitive span of the words joined by spaces, the first and last index of the
    words it overlaps (the words whose ``tokens`` entries are masked), reaching back to just
    after a cue word up to ``CUE_REACH_WORDS`` words before it; runs at most
    ``BRIDGE_WORDS`` words apart are one."""
    offsets, cursor = [], 0
    for word in words:
        offsets.append((cursor, cursor + len(word)))
        cursor += len(word) + 1
    runs: list[tuple[int, int]] = []
    for span in find_sensitive_spans(" ".join(words)):
        hit = [i for i, (s, e) in enumerate(offsets) if span.start < e and s < span.end]
        if hit:
            first = hit[0]
            for before in range(first - 1, max(-1, first - 1 - CUE_REACH_WORDS), -1):
                if is_cue_word(words[before]):
                    first = before + 1
                    break
            if runs and first - runs[-1][1] - 1 <= BRIDGE_WORDS:
                runs[-1] = (runs[-1][0], max(runs[-1][1], hit[-1]))
            else:
                runs.append((first, hit[-1]))
    return runs


class Word(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def start_ms(self) -> int: ...

    @property
    def end_ms(self) -> int: ...


def merged(ranges: Sequence[SampleRange]) -> list[SampleRange]:
    out: list[SampleRange] = []
    for r in sorted(ranges):
        if r.samples <= 0:
            continue
        if out and r.start <= out[-1].end:
            out[-1] = SampleRange(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return out


def locate(
    text: str,
    words: Sequence[Word],
    utterance: SampleRange,
    margin_ms: int,
    margin_after_ms: int | None = None,
) -> list[SampleRange] | None:
    """The ranges to silence for an utterance whose message text is ``text`` and whose timed
    words (times relative to the utterance's audio) are ``words``; None when they cannot be
    located (the caller silences the whole utterance). Empty when nothing is sensitive.
    ``margin_ms`` widens each span before its first word, ``margin_after_ms`` (by default the
    same) after its last."""
    after_ms = margin_ms if margin_after_ms is None else margin_after_ms
    word_texts = [w.text for w in words]
    needed = masked_units(text)
    found = masked_units(" ".join(word_texts)) if words else 0
    if found < needed:
        return None  # the timed words miss some of what the message redacted
    if found == 0:
        return []
    audio_ms = utterance.samples * 1000 // TELEPHONE_RATE
    per_ms = TELEPHONE_RATE // 1000
    ranges = []
    for first, last in sensitive_word_runs(word_texts):
        start_ms, end_ms = words[first].start_ms, words[last].end_ms
        if not 0 <= start_ms <= end_ms <= audio_ms + END_TOLERANCE_MS:
            return None
        start = utterance.start + (start_ms - margin_ms) * per_ms
        end = utterance.start + (end_ms + after_ms) * per_ms
        ranges.append(SampleRange(max(start, utterance.start), min(max(end, start), utterance.end)))
    return merged(ranges)
