"""A call's vocabulary on the quality corpus, with the engine a server runs (trimmed window):
on a domain call (tuning split) it brings terms Whisper base otherwise misspells or mishears,
and on a call that says none of its terms it writes none of them. Each turn is cut from its
track and decoded alone, without and with the vocabulary (``offline_transcripts``)."""

from __future__ import annotations

import pytest

from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.quality import group, regroup, score
from callscribe.quality_bench import load_corpus, offline_transcripts
from callscribe.vocabulary_bench import tally

pytestmark = pytest.mark.slow

DOMAIN_CALL = "q14-gbf3-kal"  # tuning: "Kestrel Gold plan", "Aoife", "roaming pass", ...
CALL_WITHOUT_TERMS = "q05-slt-scotm4"  # tuning: a lost bank card; says "PIN" twice itself


def test_a_vocabulary_brings_its_terms_and_invents_none(asr_engine: FasterWhisperEngine) -> None:
    domain = next(c for c in load_corpus(kind="domain") if c.id == DOMAIN_CALL)
    plain = offline_transcripts(asr_engine, domain)
    biased = offline_transcripts(asr_engine, domain, domain.vocabulary)
    groups = group(domain.turns, plain)
    without = tally(groups, domain.vocabulary)
    with_ = tally(regroup(groups, biased), domain.vocabulary)
    wer_without, wer_with = score(groups).wer, score(regroup(groups, biased)).wer
    print(
        f"{DOMAIN_CALL}: recall {without.found}/{without.said} → {with_.found}/{with_.said}, "
        f"WER {wer_without:.1%} → {wer_with:.1%}, inserted {without.inserted} → {with_.inserted}"
    )
    assert with_.said == sum(domain.terms_said.values())
    assert with_.found > without.found, ([t.text for t in plain], [t.text for t in biased])
    assert with_.inserted == 0, [t.text for t in biased]
    assert wer_with < wer_without

    # A call about something else, given the domain call's vocabulary.
    other = next(c for c in load_corpus() if c.id == CALL_WITHOUT_TERMS)
    plain = offline_transcripts(asr_engine, other)
    biased = offline_transcripts(asr_engine, other, domain.vocabulary)
    groups = group(other.turns, plain)
    without = tally(groups, domain.vocabulary)
    with_ = tally(regroup(groups, biased), domain.vocabulary)
    print(
        f"{CALL_WITHOUT_TERMS} with {DOMAIN_CALL}'s vocabulary: inserted "
        f"{without.inserted} → {with_.inserted}, WER {score(groups).wer:.1%} → "
        f"{score(regroup(groups, biased)).wer:.1%}"
    )
    assert with_.said == 2  # its own "PIN"s
    assert with_.inserted == 0, [t.text for t in biased]
