"""Transcript text as words: normalised for comparison, and checked for repetition loops.

Used by the ASR engine (is a decode broken?) and by the quality scoring (``callscribe.quality``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_UNITS = {
    w: i
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    )
}
_TEENS = {
    w: 10 + i
    for i, w in enumerate(
        (
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        )
    )
}
_TENS = {
    w: 20 + 10 * i
    for i, w in enumerate(
        ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
    )
}
_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    "thirtieth": 30,
}
_SPELLINGS = {
    "ok": "okay",
    "o.k.": "okay",
    "&": "and",
    "%": "percent",
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "e-mail": "email",
}
_CURRENCIES = {"$": "dollars", "£": "pounds", "€": "euros"}


def _small_number(words: list[str], i: int) -> tuple[int, int] | None:
    """The number that number words start at ``words[i]`` ("twenty two", "nineteen",
    "twenty first", "three hundred and five") and the index after it."""
    word = words[i]
    if word in _TENS:
        value, i = _TENS[word], i + 1
        if i < len(words) and 0 < _UNITS.get(words[i], _ORDINALS.get(words[i], 10)) < 10:
            value, i = value + _UNITS.get(words[i], _ORDINALS.get(words[i], 0)), i + 1
        return value, i
    first = _UNITS.get(word, _TEENS.get(word, _ORDINALS.get(word)))
    if first is None:
        return None
    value = first
    i += 1
    if i < len(words) and words[i] == "hundred" and 0 < value < 10:
        value, i = value * 100, i + 1
        if i < len(words) and words[i] == "and" and i + 1 < len(words):
            rest = _small_number(words, i + 1)
            if rest is not None and rest[0] < 100:
                value, i = value + rest[0], rest[1]
        elif i < len(words):
            rest = _small_number(words, i)
            if rest is not None and rest[0] < 100:
                value, i = value + rest[0], rest[1]
    return value, i


def normalize(text: str) -> list[str]:
    """The words of ``text`` in one canonical form, for comparison.

    Lower case without punctuation; every number, written in digits or in words, becomes its
    digits, one token each: "4729", "four seven two nine" → 4 7 2 9; "1986", "nineteen
    eighty six" → 1 9 8 6; "the 21st", "the twenty first" → the 2 1; "£30", "thirty pounds"
    → 3 0 pounds. E-mail addresses read aloud: "jane.doe@example.com" → jane dot doe at
    example dot com.
    """
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\w)@(?=\w)", " at ", text)
    text = re.sub(r"(?<=[a-z0-9])\.(?=[a-z])|(?<=[a-z])\.(?=[a-z0-9])", " dot ", text)
    text = re.sub(r"([$£€])\s*(\d+)", lambda m: f"{m[2]} {_CURRENCIES[m[1]]}", text)
    text = re.sub(r"(\d)(?:st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"(\d),(?=\d{3}\b)", r"\1", text)  # 1,000
    words: list[str] = []
    for token in re.split(r"[\s/]+", text):
        token = _SPELLINGS.get(token.strip('.,;:!?"()'), token)
        for part in re.findall(r"[a-z']+|\d+|[&%]", token):
            part = _SPELLINGS.get(part.strip("'"), part.strip("'"))
            if part:
                words.append(part)
    canonical: list[str] = []
    i = 0
    while i < len(words):
        if words[i].isdigit():
            canonical.extend(words[i])
            i += 1
            continue
        number = _small_number(words, i)
        if number is None:
            canonical.append(words[i])
            i += 1
        else:
            canonical.extend(str(number[0]))
            i = number[1]
    return canonical


def _longest_runs(words: Sequence[str], n: int) -> dict[tuple[str, ...], int]:
    """For every n-gram, the most times it occurs back to back in ``words``."""
    runs: dict[tuple[str, ...], int] = {}
    for start in range(len(words) - n + 1):
        gram = tuple(words[start : start + n])
        count = 1
        cursor = start + n
        while tuple(words[cursor : cursor + n]) == gram:
            count += 1
            cursor += n
        if count > runs.get(gram, 0):
            runs[gram] = count
    return runs


MAX_LOOP_NGRAM = 8
# Back-to-back repeats of an n-gram that make a loop, by n (longer phrases: twice).
LOOP_REPEATS = {1: 4, 2: 3}
DIGIT_LOOP_REPEATS = 6


def repetition_loop(hypothesis: Sequence[str], reference: Sequence[str] = ()) -> str | None:
    """The repeated phrase if ``hypothesis`` holds a repetition loop, else None.

    A loop is a phrase said back to back more often than the reference says it: four times
    for a word ("and and and and"; three is a stutter, or digits misheard: "time time time"
    for "nine nine nine"), three times for a two-word phrase ("thank you thank you thank
    you"), twice for a phrase of three words or more ("get a seat with me get a seat with
    me"). A digit takes six: numbers hold runs of one digit ("four one one one one"), and a
    misheard digit string ("0 0 0 0" for "seven zero zero") is a substitution, not a loop.
    Repeats the reference itself has ("one one one one one one one") are never loops.
    """
    for n in range(1, MAX_LOOP_NGRAM + 1):
        allowed = _longest_runs(reference, n) if reference else {}
        for gram, count in _longest_runs(hypothesis, n).items():
            least = DIGIT_LOOP_REPEATS if n == 1 and gram[0].isdigit() else LOOP_REPEATS.get(n, 2)
            if count >= least and count > allowed.get(gram, 1):
                return " ".join(gram)
    return None


def loop_free(tokens: Sequence[str]) -> list[int]:
    """Indices of the ``tokens`` (words as written: "effort,", "4729") that remain when each
    repetition loop is cut back to one occurrence of its phrase."""
    kept = list(range(len(tokens)))
    while True:
        keys = [" ".join(normalize(tokens[i])) for i in kept]
        spoken = [j for j, key in enumerate(keys) if key]  # position in kept of each word
        words = [keys[j] for j in spoken]
        loop = repetition_loop(words)
        if loop is None:
            return kept
        phrase = loop.split(" ")
        n = len(phrase)
        for start in range(len(words) - n + 1):
            end = start + n
            if words[start:end] != phrase or words[end : end + n] != phrase:
                continue
            while words[end : end + n] == phrase:
                end += n
            del kept[spoken[start] : spoken[end - n]]  # the last occurrence stays
            break
        else:
            return kept


def without_loops(text: str) -> str:
    """``text`` with each repetition loop cut back to one occurrence of its phrase:
    "It will come, not make a lot of effort, not make a lot of effort." → "It will come, not
    make a lot of effort." (words compared in their normalised form)."""
    tokens = text.split()
    return " ".join(tokens[i] for i in loop_free(tokens))
