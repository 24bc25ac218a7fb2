"""Redaction of sensitive data in call transcripts (ON by default).

Whisper transcribes what callers *say*, so card numbers, PINs and e-mail
addresses show up in many spellings: ``4729``, ``4-7-2-9``, ``4, 7, 2, 9``,
``four seven two nine``, ``Four, seven, two, nine.``, ``4 seven 2 nine``,
``double five``, ``john dot smith at example dot com``.  This module finds
those and masks them so the rest of the message stays readable::

    >>> redact("my PIN number is 4729")
    'my PIN number is ####'
    >>> redact("It's four, seven, two, nine.")
    "It's ####."

Public interface
----------------
``RedactionSpan(start, end, kind)``
    ``start``/``end`` are character offsets into the *original* text
    (``end`` exclusive).  ``kind`` is one of ``"card_number"``, ``"ssn"``,
    ``"phone_number"``, ``"email"``, ``"digits"``.
``find_sensitive_spans(text)``
    Sorted, non-overlapping spans.
``redact(text, mask="#")``
    ``text`` with every span replaced; text outside spans is unchanged.

What gets masked (and how)
--------------------------
Number content (kinds ``card_number``, ``ssn``, ``phone_number``, ``digits``)
    The whole span -- digits, number words *and* the separators between them,
    plus a leading ``(`` / ``+`` / ``plus`` of a phone number -- is replaced
    by one ``mask`` per digit.  Separators are dropped, never kept:
    ``4111 1111 1111 1111`` -> 16 masks, ``(555) 123-4567`` -> 10 masks,
    ``four seven two nine`` -> ``####``, ``double five`` -> ``##``,
    ``twelve thirty four`` -> ``####`` (12, 34).  Punctuation after the
    number (``4729.``) is outside the span and kept.
E-mail addresses (kind ``email``)
    One ``mask`` per character of the span (the address as written, spoken
    form included); a trailing sentence period is not part of the address.

A *digit run* is a sequence of number tokens joined only by separators:

* Number tokens: numerals (``4729``; a numeral glued to ``st``/``nd``/``rd``/
  ``th`` is an ordinal and never counts), digit words ``zero``/``nought``/
  ``two`` ... ``nine``, and ``double``/``triple`` + a single digit
  (``double five`` = 55; ``a double room`` is just words).
* Ambiguous words ``one``, ``oh``, ``o`` (1, 0, 0) count only in a run that
  has other digits, or that is made of at least three of them (``one one
  one one``), and never join a multi-digit numeral (``4 7 2 one`` yes,
  ``4729 one moment`` no).  Homophones ``to``/``too``/``won`` (2, 2, 1) and
  ``for`` (4) count only *between* two spoken digit words, separated by
  spaces (``four for two nine``); at the edge of a run, next to a numeral,
  or alone they are ordinary words.  So ``one moment please``, ``the one I
  have``, ``press one for billing``, ``one, one to one`` or ``18 to 25``
  are never masked.
* Separators: whitespace (no line break), ``-``, ``(``, ``)``; a comma or
  period without surrounding space (``1,500``, ``555.123.4567``); a comma,
  period or ``...`` *with* space only when neither side is a multi-digit
  numeral (``4, 7, 2, 9``, ``Four. Seven. Two. Nine.``, ``twelve,
  thirty-four``).  So ``I'm 35. 12 of us`` is two separate numbers.
* Compound number words (``ten`` ... ``nineteen``, ``twenty`` ... ``ninety``,
  ``hundred``, ``thousand``) are amounts in ordinary speech ("twenty
  minutes") and count only in runs after a cue word (below):
  ``my account number is twelve thirty four fifty six`` -> 123456.
  ``and`` is not part of a number ("one hundred and five" is two runs).

A run is masked when it has **>= 4 digits**, or **>= 3 digits** when a *cue
word* appears at most 4 ordinary words before it (number tokens, ``plus``
and e-mail addresses in between are not counted).  Cue words: pin, passcode, password,
code, account, acct, card, security, cvv, cvc, cv2, verification, number,
digits, ssn, social, routing, iban (plural and ``'s`` forms included).
Any >= 4 digit run is masked even when it is harmless (``in 2024``,
``$1,500``): the product errs on the side of privacy.

The run is then classified (first match wins):

1. ``phone_number`` -- preceded by ``+`` or the word ``plus`` and 7-15 digits
   (international); the ``+``/``plus`` is masked with the number.
2. ``card_number`` -- 13-19 digits passing the Luhn check.  A 13-19 digit
   run failing Luhn is still masked, as ``digits``.
3. ``ssn`` -- digit groups 3-2-4 (``123-45-6789``, ``123 45 6789``,
   ``one two three, four five, six seven eight nine``), or 9 digits after
   the cue ``social``/``ssn``.
4. ``phone_number`` -- North-American groups 3-3-4 (``555-123-4567``,
   ``(555) 123-4567``, ``555.123.4567``), 1-3-3-4 starting with 1, or 3-4.
5. ``digits`` -- everything else (PINs, account numbers, CVVs, ...).

Groups: every numeral is its own group; spoken digit words separated only
by spaces form one group; punctuation starts a new group.

E-mail addresses: ``local@domain.tld``; and spoken forms where ``at``
replaces ``@`` and/or ``dot`` replaces ``.`` (``john dot smith at example
dot com``, ``jane_doe at gmail.com``; ``underscore``/``dash``/``hyphen``/
``plus`` in the local part).  A spoken form needs a known top-level domain
(com, org, net, co, uk, ...) and a local part that is not an everyday word
(``I bought it at amazon dot com`` is not an address).  The local part of
a spoken address is a single word or a chain joined by dot/underscore/...;
``john smith at example dot com`` masks only ``smith at example dot com``.
Digits inside an address belong to the address.

Masking is idempotent: ``redact(redact(t)) == redact(t)`` (the cue window
ignores number tokens, so masking one number never changes the decision
for another).  Everything runs in time linear in the text length.

Known limits: a comma/period with a space between multi-digit groups ends
a run (``123, 45, 6789`` masks only ``6789``); ``and`` inside spoken amounts
is not understood; two numbers separated only by spaces merge into one run
(both are masked, under one kind); amounts right after a cue word may be
masked (``card was charged two hundred fifty`` -> ``###``).
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

__all__ = ["RedactionSpan", "find_sensitive_spans", "redact"]

_CARD = "card_number"
_SSN = "ssn"
_PHONE = "phone_number"
_EMAIL = "email"
_DIGITS = "digits"


@dataclass(frozen=True)
class RedactionSpan:
    start: int  # character offset into the ORIGINAL text, inclusive
    end: int  # exclusive
    kind: str  # "card_number" | "ssn" | "phone_number" | "email" | "digits"


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

_DIGIT_WORDS = {
    "zero": 0,
    "nought": 0,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_WEAK_DIGIT_WORDS = {"one": 1, "oh": 0, "o": 0}
_HOMOPHONES = {"to": 2, "too": 2, "for": 4, "won": 1}
_MULTIPLIERS = {"double": 2, "triple": 3}
_TEEN_WORDS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS_WORDS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALE_WORDS = {"hundred": 100, "thousand": 1000}

_CUE_WORDS = frozenset(
    {
        "pin",
        "pins",
        "passcode",
        "passcodes",
        "password",
        "passwords",
        "code",
        "codes",
        "account",
        "accounts",
        "acct",
        "card",
        "cards",
        "security",
        "cvv",
        "cvc",
        "cv2",
        "verification",
        "number",
        "numbers",
        "digits",
        "ssn",
        "social",
        "routing",
        "iban",
    }
)
_SSN_CUE_WORDS = frozenset({"social", "ssn"})
_CUE_WINDOW = 4  # ordinary words allowed between the cue word and the number


def is_cue_word(word: str) -> bool:
    """Whether ``word`` (as the ASR wrote it, punctuation and all) announces a number that
    is sensitive: "card", "PIN", "number", ..."""
    core = re.sub(r"[^\w'\u2019]", "", word).lower()
    return re.split(r"['\u2019]", core, maxsplit=1)[0] in _CUE_WORDS


# Token classes.
_NUM = "num"  # numeral: "4729"
_DIGIT = "digit"  # unambiguous digit word: "four"
_WEAK = "weak"  # ambiguous digit word: "one", "oh", "o"
_HOMO = "homo"  # homophone: "to", "too", "for", "won"
_MULT = "mult"  # "double", "triple"
_TEEN = "teen"  # "ten" .. "nineteen"
_TENS = "tens"  # "twenty" .. "ninety"
_SCALE = "scale"  # "hundred", "thousand"
_ORD = "ord"  # ordinal numeral: "4th"
_WORD = "word"  # any other word

_NUMBERISH = frozenset({_NUM, _DIGIT, _WEAK, _HOMO, _MULT, _TEEN, _TENS, _SCALE})
_SPOKEN_DIGIT = frozenset({_DIGIT, _WEAK, _HOMO})
_COMPOUND = frozenset({_TEEN, _TENS, _SCALE})
_ANCHOR = frozenset({_NUM, _DIGIT, _MULT, _TEEN, _TENS, _SCALE})

_WORD_CLASSES: dict[str, tuple[str, int]] = {}
for _cls, _table in (
    (_DIGIT, _DIGIT_WORDS),
    (_WEAK, _WEAK_DIGIT_WORDS),
    (_HOMO, _HOMOPHONES),
    (_MULT, _MULTIPLIERS),
    (_TEEN, _TEEN_WORDS),
    (_TENS, _TENS_WORDS),
    (_SCALE, _SCALE_WORDS),
):
    for _w, _v in _table.items():
        _WORD_CLASSES[_w] = (_cls, _v)
del _cls, _table, _w, _v


# --------------------------------------------------------------------------
# E-mail addresses
# --------------------------------------------------------------------------

# Both kinds of address are found from their "@" / "at" and then grown
# outwards (local part to the left, domain to the right), so the work is
# linear in the length of the text, whatever the text.

_LABEL = r"[^\W_]+(?:-[^\W_]+)*"
# The address may be glued to digits ("a@b.com4729"); those are masked too.
_END = r"(?![^\W\d]|-)"
_LITERAL_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.[^\W\d_]{{2,}}{_END}")

_TLDS = (
    "com",
    "org",
    "net",
    "edu",
    "gov",
    "mil",
    "int",
    "info",
    "biz",
    "io",
    "co",
    "uk",
    "us",
    "ca",
    "au",
    "nz",
    "ie",
    "de",
    "fr",
    "es",
    "it",
    "nl",
    "be",
    "ch",
    "at",
    "se",
    "no",
    "dk",
    "fi",
    "pl",
    "pt",
    "in",
    "jp",
    "cn",
    "br",
    "mx",
    "za",
    "me",
    "tv",
    "ai",
    "app",
    "dev",
    "email",
    "online",
)
_SPOKEN_AT_RE = re.compile(r"\s*@|\s+at(?=\s)", re.IGNORECASE)
_SPOKEN_DOMAIN_RE = re.compile(
    rf"\s*{_LABEL}(?:(?:\.|\s+dot\s+){_LABEL})*"
    rf"(?:\.|\s+dot\s+)(?:{'|'.join(_TLDS)}){_END}",
    re.IGNORECASE,
)
_SPOKEN_LOCAL_SEP_RE = re.compile(r"\s+(?:dot|underscore|dash|hyphen|plus)\s+\Z", re.IGNORECASE)
_SPOKEN_SEP_MAX = 20  # longest spoken separator looked back for, in chars
_WORD_CHAR_RE = re.compile(r"\w")
_LITERAL_LOCAL_CHAR_RE = re.compile(r"[\w%+-]")

# A spoken "<word> at <domain> dot com" whose "local part" is one of these is
# ordinary speech ("I bought it at amazon dot com"), not an address.
_NOT_A_LOCAL_PART = frozenset(
    {
        "a",
        "address",
        "also",
        "am",
        "an",
        "and",
        "are",
        "available",
        "be",
        "been",
        "bought",
        "but",
        "buy",
        "buying",
        "contact",
        "e",
        "email",
        "emailed",
        "emails",
        "find",
        "found",
        "go",
        "goes",
        "going",
        "her",
        "here",
        "him",
        "i",
        "in",
        "is",
        "it",
        "its",
        "just",
        "log",
        "logged",
        "login",
        "look",
        "looked",
        "looking",
        "mail",
        "me",
        "on",
        "online",
        "only",
        "or",
        "order",
        "ordered",
        "out",
        "page",
        "reach",
        "registered",
        "shop",
        "shopped",
        "sign",
        "signed",
        "site",
        "so",
        "still",
        "that",
        "them",
        "then",
        "there",
        "they",
        "this",
        "up",
        "us",
        "was",
        "we",
        "website",
        "went",
        "were",
        "work",
        "worked",
        "working",
        "works",
        "you",
    }
)


def _unit_start(text: str, end: int, lo: int, char_re: re.Pattern[str]) -> int:
    """Start of the run of ``char_re`` characters ending at ``end`` (>= lo)."""
    start = end
    while start > lo and char_re.match(text, start - 1):
        start -= 1
    return start


def _literal_local_start(text: str, at: int, lo: int) -> int | None:
    """Start of ``[\\w%+-]+(?:\\.[\\w%+-]+)*`` ending at ``at``, or None."""
    start = _unit_start(text, at, lo, _LITERAL_LOCAL_CHAR_RE)
    if start == at:
        return None
    while start - 1 > lo and text[start - 1] == ".":
        before = _unit_start(text, start - 1, lo, _LITERAL_LOCAL_CHAR_RE)
        if before == start - 1:
            break
        start = before
    return start


def _spoken_local_start(text: str, end: int, lo: int) -> int | None:
    """Start of a spoken local part (``john dot smith``) ending at ``end``.

    Words joined by ``.``/``_``/``+``/``-`` or by a spoken separator, not
    reaching before ``lo`` (the end of the previous address).  None if there
    is no word right before ``end``.
    """

    def word_start(word_end: int) -> int | None:
        start = _unit_start(text, word_end, lo, _WORD_CHAR_RE)
        return None if start == word_end else start

    start = word_start(end)
    if start is None:
        return None
    while start > lo:
        if text[start - 1] in "._+-":
            sep_start = start - 1
        else:
            window = text[max(lo, start - _SPOKEN_SEP_MAX) : start]
            sep = _SPOKEN_LOCAL_SEP_RE.search(window)
            if sep is None:
                break
            sep_start = start - (len(window) - sep.start())
        before = word_start(sep_start)
        if before is None:
            break
        start = before
    return start


def _find_emails(text: str) -> list[tuple[int, int]]:
    """Sorted, non-overlapping (start, end) of e-mail addresses."""
    literal: list[tuple[int, int]] = []
    prev_end = 0
    for at in (m.start() for m in re.finditer("@", text)):
        if at < prev_end:
            continue
        start = _literal_local_start(text, at, prev_end)
        domain = _LITERAL_DOMAIN_RE.match(text, at + 1)
        if start is not None and domain is not None:
            literal.append((start, domain.end()))
            prev_end = domain.end()

    # Spoken forms may not overlap a literal address; the local part may
    # start right after one.
    spoken: list[tuple[int, int]] = []
    prev_end = 0
    for spoken_at in _SPOKEN_AT_RE.finditer(text):
        if spoken_at.start() < prev_end:
            continue
        domain = _SPOKEN_DOMAIN_RE.match(text, spoken_at.end())
        if domain is None:
            continue
        lo = prev_end
        k = bisect.bisect_left(literal, (spoken_at.start(),))  # literals before "at"
        if k > 0:
            lo = max(lo, literal[k - 1][1])
        if lo > spoken_at.start() or (k < len(literal) and literal[k][0] < domain.end()):
            continue
        start = _spoken_local_start(text, spoken_at.start(), lo)
        if start is None:
            continue
        local = text[start : spoken_at.start()]
        if "@" not in spoken_at.group() and local.lower() in _NOT_A_LOCAL_PART:
            continue
        spoken.append((start, domain.end()))
        prev_end = domain.end()
    return sorted(literal + spoken)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"(?P<num>\d+)(?P<ord>(?:st|nd|rd|th)(?![^\W\d_]))?"
    r"|(?P<word>[^\W\d_]+(?:['\u2019][^\W\d_]+)*)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    cls: str
    value: int = 0  # numeric value of a number word
    digits: str = ""  # ASCII digits of a numeral
    base: str = ""  # lower-cased word without "'s" (for cue lookup)


def _tokenize(text: str, blocked: list[tuple[int, int]]) -> list[_Token]:
    """Words and numerals with their class and value, in text order.

    The e-mail spans in ``blocked`` are skipped (each stretch of text between
    them is tokenized on its own, exactly as it reads once the address is
    masked), so no digit run can reach into an address and no cue word is
    taken from one.
    """
    tokens: list[_Token] = []
    stretches = []
    pos = 0
    for start, end in blocked:
        stretches.append((pos, start))
        pos = end
    stretches.append((pos, len(text)))

    for pos, endpos in stretches:
        for m in _TOKEN_RE.finditer(text, pos, endpos):
            start, end = m.span()
            if m.group("num") is not None:
                if m.group("ord"):
                    tokens.append(_Token(start, end, _ORD))
                else:
                    digits = "".join(str(int(c)) for c in m.group("num"))
                    tokens.append(_Token(start, end, _NUM, digits=digits))
                continue
            lower = m.group("word").lower()
            cls, value = _WORD_CLASSES.get(lower, (_WORD, 0))
            base = re.split(r"['\u2019]", lower, maxsplit=1)[0]
            tokens.append(_Token(start, end, cls, value=value, base=base))
    return tokens


# --------------------------------------------------------------------------
# Run finder
# --------------------------------------------------------------------------

_DASHES = frozenset({"-", "\u2013", "\u2014"})
_PARENS = frozenset({"(", ")", ")-"})
_SPACED_PUNCT = frozenset({",", ".", "...", "\u2026"})
_MAX_GAP = 5


def _single_digit(tok: _Token) -> bool:
    return tok.cls in (_DIGIT, _WEAK, _HOMO, _MULT) or (tok.cls == _NUM and len(tok.digits) == 1)


def _multi_digit_numeral(tok: _Token) -> bool:
    return tok.cls == _NUM and len(tok.digits) > 1


def _joinable(text: str, a: _Token, b: _Token) -> bool:
    """Can ``b`` continue a digit run ending in ``a``?"""
    gap = text[a.end : b.start]
    if not gap or len(gap) > _MAX_GAP or "\n" in gap or "\r" in gap:
        return False
    core = "".join(ch for ch in gap if not ch.isspace())
    if _HOMO in (a.cls, b.cls):
        # "to"/"for"/"won" only between spoken digit words: "four for two".
        return not core and a.cls in _SPOKEN_DIGIT and b.cls in _SPOKEN_DIGIT
    for weak, other in ((a, b), (b, a)):
        # "one"/"oh" never join a multi-digit numeral: "4729 one moment".
        if weak.cls == _WEAK and _multi_digit_numeral(other):
            return False
    if core == "" or core in _DASHES or core in _PARENS:
        return True
    if core in _SPACED_PUNCT:
        if gap in (",", "."):  # "1,500", "555.123.4567"
            return True
        # "4, 7, 2, 9", "twelve, thirty-four" -- but not "I'm 35. 12 of us"
        return not _multi_digit_numeral(a) and not _multi_digit_numeral(b)
    return False


def _candidate_runs(text: str, tokens: list[_Token]) -> list[tuple[int, int]]:
    """Maximal [i, j) token index ranges of joinable number tokens."""
    runs: list[tuple[int, int]] = []
    i = 0
    n = len(tokens)
    while i < n:
        if tokens[i].cls not in _NUMBERISH:
            i += 1
            continue
        j = i + 1
        while j < n and tokens[j].cls in _NUMBERISH and _joinable(text, tokens[j - 1], tokens[j]):
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _cue_words_before(tokens: list[_Token], word_indexes: list[int], i: int) -> set[str]:
    """The nearest ``_CUE_WINDOW + 1`` ordinary words before token ``i``.

    A cue word among them means at most ``_CUE_WINDOW`` ordinary words sit
    between the cue and the number.  Number tokens (masked or not) and
    ordinals are skipped, not counted, so the answer is the same after
    redaction (which is what makes ``redact`` idempotent).
    ``word_indexes`` lists the indexes of the ordinary-word tokens.
    """
    k = bisect.bisect_left(word_indexes, i)
    return {tokens[j].base for j in word_indexes[max(0, k - _CUE_WINDOW - 1) : k]}


def _split_run(run: list[_Token], cued: bool) -> list[list[_Token]]:
    """Drop tokens that cannot be part of a number here, trim edges."""
    valid: list[bool] = []
    for k, tok in enumerate(run):
        ok = True
        if tok.cls in _COMPOUND and not cued:
            ok = False  # "twenty minutes" is an amount, not a code
        elif tok.cls == _MULT:
            # "double five", "triple 7"; a "double room" is not a number
            nxt = run[k + 1] if k + 1 < len(run) else None
            ok = nxt is not None and (
                nxt.cls in (_DIGIT, _WEAK) or (nxt.cls == _NUM and len(nxt.digits) == 1)
            )
        elif tok.cls == _SCALE:
            prev = run[k - 1] if k > 0 else None
            ok = (
                prev is not None
                and valid[k - 1]
                and (
                    prev.cls in (_DIGIT, _WEAK, _TEEN, _TENS)
                    or (prev.cls == _SCALE and prev.value < tok.value)
                )
            )
        valid.append(ok)

    segments: list[list[_Token]] = []
    current: list[_Token] = []
    for tok, ok in zip(run, valid, strict=True):
        if ok:
            current.append(tok)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)

    result = []
    for seg in segments:
        lo, hi = 0, len(seg)
        while lo < hi and seg[lo].cls == _HOMO:
            lo += 1
        while hi > lo and seg[hi - 1].cls == _HOMO:
            hi -= 1
        seg = seg[lo:hi]
        # "one one one one" is a PIN; a lone "one" (or "one to one") is not.
        if any(tok.cls in _ANCHOR for tok in seg) or (
            len(seg) >= 3 and all(tok.cls == _WEAK for tok in seg)
        ):
            result.append(seg)
    return result


# --------------------------------------------------------------------------
# Number words -> digits
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    digits: str
    first: int  # index of first token in the segment
    last: int  # index of last token in the segment
    spoken: bool


def _under_hundred(seg: list[_Token], i: int) -> tuple[int, int]:
    tok = seg[i]
    if (
        tok.cls == _TENS
        and i + 1 < len(seg)
        and seg[i + 1].cls in (_DIGIT, _WEAK)
        and seg[i + 1].value != 0
    ):
        return tok.value + seg[i + 1].value, i + 2  # "thirty four"
    return tok.value, i + 1


def _is_scale(seg: list[_Token], i: int, value: int) -> bool:
    return i < len(seg) and seg[i].cls == _SCALE and seg[i].value == value


def _hundreds(seg: list[_Token], i: int) -> tuple[int, int]:
    value, i = _under_hundred(seg, i)
    if _is_scale(seg, i, 100):
        value *= 100
        i += 1
        if i < len(seg) and seg[i].cls in (_DIGIT, _WEAK, _TEEN, _TENS):
            rest, i = _under_hundred(seg, i)
            value += rest
    return value, i


def _cardinal(seg: list[_Token], i: int) -> tuple[int, int]:
    """Parse "twelve", "thirty four", "five hundred twenty", ... at ``i``."""
    value, i = _hundreds(seg, i)
    if _is_scale(seg, i, 1000):
        value *= 1000
        i += 1
        if i < len(seg) and (
            seg[i].cls in (_TEEN, _TENS)
            or (seg[i].cls in (_DIGIT, _WEAK) and _is_scale(seg, i + 1, 100))
        ):
            rest, i = _hundreds(seg, i)
            value += rest
    return value, i


def _to_pieces(seg: list[_Token]) -> list[_Piece]:
    pieces: list[_Piece] = []
    i = 0
    while i < len(seg):
        tok = seg[i]
        if tok.cls == _NUM:
            pieces.append(_Piece(tok.digits, i, i, False))
            i += 1
        elif tok.cls == _MULT:  # validated: followed by a single digit
            target = seg[i + 1]
            digit = target.digits if target.cls == _NUM else str(target.value)
            pieces.append(_Piece(digit * tok.value, i, i + 1, True))
            i += 2
        elif tok.cls in (_DIGIT, _WEAK, _TEEN, _TENS):
            value, j = _cardinal(seg, i)
            pieces.append(_Piece(str(value), i, j - 1, True))
            i = j
        else:  # _HOMO between digit words (or a stray scale word)
            pieces.append(_Piece(str(tok.value), i, i, True))
            i += 1
    return pieces


def _groups(text: str, seg: list[_Token], pieces: list[_Piece]) -> tuple[int, ...]:
    """Digit-group lengths: numerals are groups; spoken digits group by spaces."""
    groups: list[int] = []
    prev: _Piece | None = None
    for piece in pieces:
        if (
            prev is not None
            and prev.spoken
            and piece.spoken
            and not text[seg[prev.last].end : seg[piece.first].start].strip()
        ):
            groups[-1] += len(piece.digits)
        else:
            groups.append(len(piece.digits))
        prev = piece
    return tuple(groups)


# --------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------


def _luhn_ok(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = int(ch)
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _classify(digits: str, groups: tuple[int, ...], plus: bool, ssn_cue: bool) -> str:
    n = len(digits)
    if plus and 7 <= n <= 15:
        return _PHONE
    if 13 <= n <= 19 and _luhn_ok(digits):
        return _CARD
    if groups == (3, 2, 4) or (n == 9 and ssn_cue):
        return _SSN
    if groups in ((3, 3, 4), (3, 4)) or (groups == (1, 3, 3, 4) and digits[0] == "1"):
        return _PHONE
    return _DIGITS


@dataclass(frozen=True)
class _Finding:
    span: RedactionSpan
    units: int  # how many mask characters replace the span


def _number_finding(
    text: str,
    tokens: list[_Token],
    first_index: int,
    seg: list[_Token],
    cue_words: set[str],
) -> _Finding | None:
    pieces = _to_pieces(seg)
    digits = "".join(p.digits for p in pieces)
    cued = bool(cue_words & _CUE_WORDS)
    if len(digits) < (3 if cued else 4):
        return None

    start, end = seg[0].start, seg[-1].end
    # "(555) 123-4567": take the opening parenthesis along.
    after_first = text[seg[0].end : seg[1].start] if len(seg) > 1 else ""
    if start > 0 and text[start - 1] == "(" and ")" in after_first:
        start -= 1
    # "+1 555 123 4567" / "plus 44 20 7946 0958"
    plus_start = None
    if start > 0 and text[start - 1] == "+":
        plus_start = start - 1
    elif first_index > 0:
        prev = tokens[first_index - 1]
        gap = text[prev.end : start]
        if prev.cls == _WORD and prev.base == "plus" and gap and not gap.strip():
            plus_start = prev.start

    kind = _classify(
        digits,
        _groups(text, seg, pieces),
        plus_start is not None,
        bool(cue_words & _SSN_CUE_WORDS),
    )
    if kind == _PHONE and plus_start is not None:
        start = plus_start
    return _Finding(RedactionSpan(start, end, kind), len(digits))


def _find(text: str) -> list[_Finding]:
    emails = _find_emails(text)
    findings = [_Finding(RedactionSpan(s, e, _EMAIL), e - s) for s, e in emails]

    tokens = _tokenize(text, emails)
    index_of = {tok.start: k for k, tok in enumerate(tokens)}
    # "plus" may be masked with a phone number, so it never counts as a word
    # between a cue and a number either (keeps redact idempotent).
    word_indexes = [k for k, tok in enumerate(tokens) if tok.cls == _WORD and tok.base != "plus"]
    for i, j in _candidate_runs(text, tokens):
        cue_words = _cue_words_before(tokens, word_indexes, i)
        cued = bool(cue_words & _CUE_WORDS)
        for seg in _split_run(tokens[i:j], cued):
            finding = _number_finding(text, tokens, index_of[seg[0].start], seg, cue_words)
            if finding is not None:
                findings.append(finding)

    findings.sort(key=lambda f: f.span.start)
    for a, b in itertools.pairwise(findings):
        assert a.span.end <= b.span.start, (a, b)
    return findings


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def find_sensitive_spans(text: str) -> list[RedactionSpan]:
    """Sensitive spans in ``text``, sorted and non-overlapping."""
    return [f.span for f in _find(text)]


def redact(text: str, mask: str = "#") -> str:
    """``text`` with sensitive content replaced by ``mask`` characters.

    Number spans become one ``mask`` per digit (separators dropped), e-mail
    addresses one ``mask`` per character; everything else is unchanged.
    """
    out: list[str] = []
    pos = 0
    for finding in _find(text):
        out.append(text[pos : finding.span.start])
        out.append(mask * finding.units)
        pos = finding.span.end
    out.append(text[pos:])
    return "".join(out)
