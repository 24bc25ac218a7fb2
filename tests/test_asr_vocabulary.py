"""A vocabulary as Whisper's decoder sees it: bounded, worded as a prompt that is token for token
faster-whisper's own, decoded in batches that mix vocabularies exactly as each utterance alone,
and a decode that only copies the prompt is done again without it. Real Whisper base, real
(espeak-ng) speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from callscribe.asr.base import AsrRequest
from callscribe.asr.vocabulary import (
    PROMPT_TOKEN_BUDGET,
    VocabularyError,
    bounded_prompt,
    checked,
    echoes_prompt,
    prompt_ids,
    within_bounds,
)
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.vocabulary import MAX_TERM_CHARS, MAX_TERMS
from tests.speech import needs_speech_tools, speak

TERMS = ("Zentrova Fibre Max", "Kestrel Gold plan", "Siobhan", "PIN")


def test_terms_are_cleaned_and_bounded() -> None:
    assert checked(["  Kestrel Gold plan ", "kestrel gold plan", "PIN"]) == (
        "Kestrel Gold plan",
        "PIN",
    )
    # The worker's bounds are the API's (``callscribe.vocabulary``).
    with pytest.raises(VocabularyError, match=f"at most {MAX_TERMS}"):
        checked([f"term {i}" for i in range(MAX_TERMS + 1)])
    with pytest.raises(VocabularyError, match=f"at most {MAX_TERM_CHARS}"):
        checked(["x" * (MAX_TERM_CHARS + 1)])
    with pytest.raises(VocabularyError, match="empty"):
        checked(["PIN", " "])
    with pytest.raises(VocabularyError, match="printable"):
        checked(["two\nlines"])
    # What a client sends: the terms within the bounds, too-long ones left out.
    too_long = "x" * (MAX_TERM_CHARS + 1)
    assert within_bounds([too_long, "PIN"]) == ("PIN",)
    assert len(within_bounds([f"term {i}" for i in range(500)])) == MAX_TERMS
    assert checked(within_bounds([f"{i:02d}" + "y" * 45 for i in range(40)])) == tuple(
        f"{i:02d}" + "y" * 45 for i in range(10)
    )


def test_the_prompt_is_faster_whispers_own(asr_engine: FasterWhisperEngine) -> None:
    """The batched path's prompt for an utterance is what faster-whisper's ``get_prompt``
    builds for ``hotwords=`` on the single path, so both decode from the same tokens."""
    tokenizer = asr_engine._tokenizer("en")
    text = bounded_prompt(tokenizer, TERMS)
    assert text == "Glossary: Zentrova Fibre Max, Kestrel Gold plan, Siobhan, PIN."
    expected = asr_engine._model.get_prompt(tokenizer, [], without_timestamps=True, hotwords=text)
    assert prompt_ids(tokenizer, text) == expected
    assert prompt_ids(tokenizer, "") == asr_engine._model.get_prompt(
        tokenizer, [], without_timestamps=True
    )
    # A long vocabulary keeps its leading terms that fit the budget, whole.
    many = [f"Product line {i}" for i in range(100)]
    long_text = bounded_prompt(tokenizer, many)
    assert len(tokenizer.encode(" " + long_text)) <= PROMPT_TOKEN_BUDGET
    assert long_text.endswith(".") and long_text.count(",") + 1 < len(many)


def test_a_copied_prompt_is_recognised_and_speech_is_not() -> None:
    assert echoes_prompt("Glossary: Zentrova Fibre Max, Kestrel Gold plan.", TERMS)
    assert echoes_prompt("Zentrova Fibre Max, Kestrel Gold plan", TERMS)
    assert not echoes_prompt("I am on the Kestrel Gold plan with Zentrova Fibre Max.", TERMS)
    assert not echoes_prompt("Siobhan speaking, how can I help?", TERMS)
    assert not echoes_prompt("", TERMS)


@needs_speech_tools
def test_a_batch_mixing_vocabularies_decodes_each_as_alone(
    asr_engine: FasterWhisperEngine, tmp_path: Path
) -> None:
    """Two vocabularies, none, and an interim in one batch, utterances of different lengths:
    each item's text is the text ``transcribe_blocking`` gives it alone with its vocabulary,
    and the vocabulary did change what was decoded."""
    sentences = [
        "I would like the Kestrel Gold plan for my Zentrova Fibre Max line please.",
        "Siobhan put me on hold and asked for my PIN.",
        "The package was supposed to arrive last Tuesday.",
    ]
    audio = [speak(text, tmp_path, f"v{i}") for i, text in enumerate(sentences)]
    other = ("Orbit Mobile", "Harbour Insurance", "Siobhan's")
    requests = [
        AsrRequest(audio[0], "en", vocabulary=TERMS),
        AsrRequest(audio[0], "en"),
        AsrRequest(audio[1], "en", vocabulary=other),
        AsrRequest(audio[1], "en", vocabulary=TERMS),
        AsrRequest(audio[2], "en"),
        AsrRequest(audio[2], "en", vocabulary=TERMS, interim=True),
    ]
    batch = asr_engine.transcribe_batch(requests)
    alone = [
        asr_engine.transcribe_interim_blocking(r)
        if r.interim
        else asr_engine.transcribe_blocking(r)
        for r in requests
    ]
    assert [r.text for r in batch] == [r.text for r in alone]
    assert "kestrel" in batch[0].text.lower() and "kestrel" not in batch[1].text.lower()
    assert all(r.text for r in batch)


def test_a_window_without_speech_never_reads_as_the_vocabulary(
    asr_engine: FasterWhisperEngine,
) -> None:
    """Line noise with a vocabulary, alone and batched: no term is invented."""
    noise = np.random.default_rng(7).normal(0, 0.01, 24_000).astype(np.float32)
    request = AsrRequest(noise, "en", vocabulary=TERMS)
    for result in [
        asr_engine.transcribe_blocking(request),
        *asr_engine.transcribe_batch([request]),
    ]:
        assert not echoes_prompt(result.text, TERMS), result.text
        assert not any(term.lower() in result.text.lower() for term in TERMS[:3]), result.text
