"""Custom vocabulary: the domain words (product, plan and agent names) a call's speakers may say,
which the speech recogniser is biased towards (``AsrRequest.vocabulary``).

A tenant keeps one vocabulary in the Store (``callscribe vocabulary set``); a start-streaming
request may add its own (``autotranscribeParams.vocabulary``). When a call's transcription
starts, the two are merged (``merge_vocabulary``): the call's terms first, as the more
specific, then the tenant's, de-duplicated case-insensitively, within the bounds below.

The bounds. Whisper takes the vocabulary as text before the utterance (its previous-text
prompt), which holds at most 223 tokens; what does not fit is cut by the engine, silently.
So a vocabulary is bounded in what a user can count, chosen to stay well under that: at most
``MAX_TERMS`` terms of at most ``MAX_TERM_CHARS`` characters each, and at most
``MAX_TOTAL_CHARS`` characters in all, counted as the terms joined with ", " (about 150 tokens
of English-like names at 3 to 4 characters a token, which leaves the engine room for the words
it puts around them). A call's own vocabulary and a tenant's are each refused over the bounds;
a merge of the two that would go over keeps every term of the call's and then each of the
tenant's, in the tenant's order, that still fits (``MergedVocabulary.dropped``: the others).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

MAX_TERMS = 50
MAX_TERM_CHARS = 50
MAX_TOTAL_CHARS = 500
# How the total is counted (and how an engine may well list the terms in its prompt).
TERM_SEPARATOR = ", "
BOUNDS = (
    f"at most {MAX_TERMS} terms of 1-{MAX_TERM_CHARS} characters each, "
    f"{MAX_TOTAL_CHARS} characters in all"
)
# How much of a refused term an error message repeats (it comes from the client).
_SHOWN_CHARS = 20


def total_chars(terms: Iterable[str]) -> int:
    """The characters a vocabulary counts against ``MAX_TOTAL_CHARS``: its terms joined with
    ``TERM_SEPARATOR``."""
    return len(TERM_SEPARATOR.join(terms))


def _shown(term: str) -> str:
    return repr(term if len(term) <= _SHOWN_CHARS else term[:_SHOWN_CHARS] + "…")


def vocabulary_term(term: str, where: str) -> str:
    """One term, checked: surrounding whitespace dropped, 1 to ``MAX_TERM_CHARS`` characters
    left, every one printable (no newline, tab or other control or invisible character, which
    would break the prompt an engine builds). ``where``: how the message names it ("term 3",
    "line 7"). Raises ValueError saying what is wrong."""
    if not isinstance(term, str):
        raise ValueError(f"{where} is not a string")
    stripped = term.strip()
    if not stripped:
        raise ValueError(f"{where} is empty")
    if len(stripped) > MAX_TERM_CHARS:
        raise ValueError(
            f"{where} ({_shown(stripped)}) is {len(stripped)} characters; at most {MAX_TERM_CHARS}"
        )
    for char in stripped:
        if not char.isprintable():
            name = unicodedata.name(char, "a control character")
            raise ValueError(
                f"{where} ({_shown(stripped)}) contains U+{ord(char):04X} ({name}); "
                "only printable characters and spaces are allowed"
            )
    return stripped


def vocabulary_terms(terms: Iterable[str]) -> tuple[str, ...]:
    """A vocabulary, checked (a call's or a tenant's): each term as ``vocabulary_term`` has
    it, a term that repeats an earlier one but for case dropped (the first spelling is kept:
    it is the one the engine will write), and the whole within ``MAX_TERMS`` and
    ``MAX_TOTAL_CHARS``. Empty is allowed (no vocabulary). Raises ValueError."""
    kept: list[str] = []
    seen: set[str] = set()
    for number, term in enumerate(terms, start=1):
        checked = vocabulary_term(term, f"term {number}")
        folded = checked.casefold()
        if folded not in seen:
            seen.add(folded)
            kept.append(checked)
    if len(kept) > MAX_TERMS:
        raise ValueError(f"{len(kept)} different terms; at most {MAX_TERMS}")
    chars = total_chars(kept)
    if chars > MAX_TOTAL_CHARS:
        raise ValueError(
            f"{chars} characters (terms joined with {TERM_SEPARATOR!r}); at most {MAX_TOTAL_CHARS}"
        )
    return tuple(kept)


@dataclass(frozen=True)
class MergedVocabulary:
    """What a call's transcription is biased towards, and the tenant's terms left out."""

    terms: tuple[str, ...]
    # The tenant's terms that did not fit beside the call's (or were no longer valid: a
    # vocabulary stored under wider bounds by an earlier version).
    dropped: tuple[str, ...] = ()


def merge_vocabulary(call_terms: Iterable[str], tenant_terms: Iterable[str]) -> MergedVocabulary:
    """The call's terms (already checked, within the bounds) first, then each of the
    tenant's, in order, that is not a case-insensitive repeat and still fits the bounds."""
    merged = list(call_terms)
    seen = {term.casefold() for term in merged}
    chars = total_chars(merged)
    dropped: list[str] = []
    for number, term in enumerate(tenant_terms, start=1):
        try:
            checked = vocabulary_term(term, f"term {number}")
        except ValueError:
            dropped.append(term)
            continue
        folded = checked.casefold()
        if folded in seen:
            continue
        grown = chars + len(checked) + (len(TERM_SEPARATOR) if merged else 0)
        if len(merged) >= MAX_TERMS or grown > MAX_TOTAL_CHARS:
            dropped.append(checked)
            continue
        merged.append(checked)
        seen.add(folded)
        chars = grown
    return MergedVocabulary(tuple(merged), tuple(dropped))
