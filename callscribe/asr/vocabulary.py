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

# The bounds of a vocabulary the engines take (the remote worker answers 400 beyond them). A
# prompt is decoder context: each token costs a little on every decode, and a long one pushes
# the model towards copying it. Whisper itself stops at 223 prompt tokens.
MAX_TERMS = 100
MAX_TERM_CHARS = 64
# All terms together. More than any prompt of PROMPT_TOKEN_BUDGET tokens holds, and small
# enough that the worst case (every character percent-encoded UTF-8) still fits an HTTP
# request line, where the remote worker takes the terms.
MAX_VOCABULARY_CHARS = 2000
# The prompt's tokens at most (about 40 short terms): the terms that do not fit are left out,
# whole, from the end of the list. Also keeps prompt + the longest utterance's token bound
# (256 for 30 s) inside Whisper's 448-token context.
PROMPT_TOKEN_BUDGET = 160
# Whisper's decoder context (``max_length`` of every Whisper model).
WHISPER_MAX_LENGTH = 448

PROMPT_STYLES = ("glossary", "terms", "sentence")
DEFAULT_PROMPT_STYLE = "glossary"


class VocabularyError(ValueError):
    """A vocabulary outside the bounds above, or a term that is not one line of text."""


def checked(terms: Iterable[str]) -> tuple[str, ...]:
    """The terms, stripped and without blanks or repeats (first kept), once they are within
    the bounds; ``VocabularyError`` otherwise."""
    kept: list[str] = []
    seen: set[str] = set()
    for raw in terms:
        term = " ".join(str(raw).split())
        if len(term) > MAX_TERM_CHARS:
            raise VocabularyError(
                f"vocabulary term {term[:20]!r}… is {len(term)} characters long; "
                f"at most {MAX_TERM_CHARS}"
            )
        if not term or term.casefold() in seen:
            continue
        seen.add(term.casefold())
        kept.append(term)
    if len(kept) > MAX_TERMS:
        raise VocabularyError(f"{len(kept)} vocabulary terms; at most {MAX_TERMS}")
    total = sum(len(term) for term in kept)
    if total > MAX_VOCABULARY_CHARS:
        raise VocabularyError(
            f"the vocabulary terms hold {total} characters; at most {MAX_VOCABULARY_CHARS}"
        )
    return tuple(kept)


def within_bounds(terms: Iterable[str]) -> tuple[str, ...]:
    """The leading terms that keep within the bounds (a term too long is left out): what a
    client sends a worker, which refuses more. The engine's prompt holds fewer anyway."""
    kept: list[str] = []
    total = 0
    for term in terms:
        if len(term) > MAX_TERM_CHARS or not term.strip():
            continue
        if len(kept) == MAX_TERMS or total + len(term) > MAX_VOCABULARY_CHARS:
            break
        kept.append(term)
        total += len(term)
    return tuple(kept)


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
