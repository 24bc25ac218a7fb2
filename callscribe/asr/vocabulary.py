"""A call's domain vocabulary as Whisper's decoder sees it: a prompt of previous text.

Whisper has no word list of its own; what biases it towards a word is seeing it in the text
that came "before" the window (``<|startofprev|>`` tokens ahead of the start-of-transcript
sequence). faster-whisper 1.2.1 builds that prompt in ``WhisperModel.get_prompt``:
``[sot_prev] + encode(" " + hotwords.strip()) + sot_sequence (+ no_timestamps)``, the prompt
text cut to ``max_length // 2 - 1`` (223) tokens. The in-process engine gives faster-whisper
the text below as ``hotwords`` on the single-utterance paths, and builds the same token
sequence itself for each utterance of a batch (``prompt_ids``), so an utterance decodes the
same alone as in a batch whatever vocabularies its neighbours carry.

The wording ("glossary", the default) is a heading and the terms as a sentence: "Glossary:
Zentrova Fibre Max, Kestrel Gold plan, Siobhan." Chosen on the quality corpus's tuning split,
cut as streamed (``callscribe bench vocabulary``): it raised term recall on the domain calls
from 25.0 % to 62.5 % and wrote no term where none was said, on those calls or on the calls
about something else. A bare list ("terms") recalled as many but inserted two terms; "The
caller may mention ..." ("sentence") recalled one more and inserted one. The figures are in
README.md (Accuracy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from callscribe.vocabulary import merge_vocabulary, vocabulary_terms

# The prompt's tokens at most (about 40 short terms): the terms that do not fit are left out,
# whole, from the end of the list. Also keeps prompt + the longest utterance's token bound
# (256 for 30 s) inside Whisper's 448-token context. A vocabulary within the domain's bounds
# (``callscribe.vocabulary``: 500 characters) is about 150 tokens, so it is rarely cut.
PROMPT_TOKEN_BUDGET = 160
# Whisper's decoder context (``max_length`` of every Whisper model).
WHISPER_MAX_LENGTH = 448

PROMPT_STYLES = ("glossary", "terms", "sentence")
DEFAULT_PROMPT_STYLE = "glossary"


class VocabularyError(ValueError):
    """A vocabulary outside the domain's bounds, or a term that is not one line of text."""


def checked(terms: Iterable[str]) -> tuple[str, ...]:
    """The terms as the domain checks a call's or a tenant's (``vocabulary_terms``: the same
    bounds, so what the API accepted a worker accepts too); ``VocabularyError`` otherwise."""
    try:
        return vocabulary_terms(terms)
    except ValueError as exc:
        raise VocabularyError(f"vocabulary: {exc}") from exc


def within_bounds(terms: Iterable[str]) -> tuple[str, ...]:
    """The terms that keep within the domain's bounds, in order (a term that is invalid or
    no longer fits is left out): what a client sends a worker, which refuses more. The
    pipeline's merged vocabulary is within them already."""
    return merge_vocabulary((), terms).terms


def prompt_text(terms: Sequence[str], style: str = DEFAULT_PROMPT_STYLE) -> str:
    """The words the decoder is shown before the utterance ("" for no vocabulary)."""
    if not terms:
        return ""
    if style == "glossary":
        return "Glossary: " + ", ".join(terms) + "."
    if style == "terms":
        return ", ".join(terms)
    if style == "sentence":
        return "The caller may mention " + ", ".join(terms) + "."
    raise ValueError(f"unknown vocabulary prompt style {style!r}")


def bounded_prompt(tokenizer: Any, terms: Sequence[str], style: str = DEFAULT_PROMPT_STYLE) -> str:
    """``prompt_text`` of as many leading terms as fit in ``PROMPT_TOKEN_BUDGET`` tokens, as
    faster-whisper encodes it (with a leading space)."""
    for count in range(len(terms), 0, -1):
        text = prompt_text(terms[:count], style)
        if len(tokenizer.encode(" " + text)) <= PROMPT_TOKEN_BUDGET:
            return text
    return ""


def prompt_ids(tokenizer: Any, text: str, without_timestamps: bool = True) -> list[int]:
    """faster-whisper's ``get_prompt`` for ``hotwords=text`` and no previous text or prefix."""
    prompt: list[int] = []
    if text:
        prompt = [tokenizer.sot_prev, *tokenizer.encode(" " + text.strip())]
    prompt.extend(tokenizer.sot_sequence)
    if without_timestamps:
        prompt.append(tokenizer.no_timestamps)
    return prompt


def _contains(words: Sequence[str], run: Sequence[str]) -> bool:
    n = len(run)
    return n > 0 and any(list(words[i : i + n]) == list(run) for i in range(len(words) - n + 1))


def echoes_prompt(text: str, terms: Sequence[str]) -> bool:
    """Whether a decode reads like a copy of its vocabulary prompt rather than speech: the
    prompt's "Glossary" heading, or two of its terms back to back in the prompt's order
    (people put words between the names they say). Whisper writes its prompt out when the
    window holds no words it can make out (silence, noise, a cough)."""
    from callscribe.textnorm import normalize

    words = normalize(text)
    if not words:
        return False
    if "glossary" in words and not any("glossary" in normalize(t) for t in terms):
        return True
    return any(
        _contains(words, normalize(first) + normalize(second))
        for first, second in zip(terms, terms[1:], strict=False)
    )
