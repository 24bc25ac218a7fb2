"""Custom vocabulary (``callscribe/vocabulary.py``): a call's and a tenant's terms, checked,
bounded and merged."""

from __future__ import annotations

import pytest

from callscribe.vocabulary import (
    MAX_TERM_CHARS,
    MAX_TERMS,
    MAX_TOTAL_CHARS,
    merge_vocabulary,
    total_chars,
    vocabulary_terms,
)


def test_terms_are_stripped_and_case_repeats_dropped_keeping_the_first_spelling() -> None:
    assert vocabulary_terms([" iPhone 15 ", "IPHONE 15", "Zorblax", "zorblax", "Zorblax"]) == (
        "iPhone 15",
        "Zorblax",
    )
    assert vocabulary_terms([]) == ()
    # Letters of any script, digits, punctuation and inner spaces are all printable.
    assert vocabulary_terms(["Müller-Lüdenscheidt", "東京", "4G LTE+", "O'Brien & Co."]) == (
        "Müller-Lüdenscheidt",
        "東京",
        "4G LTE+",
        "O'Brien & Co.",
    )


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["ok", ""], "term 2 is empty"),
        (["x" * (MAX_TERM_CHARS + 1)], f"is {MAX_TERM_CHARS + 1} characters; at most 50"),
        (["two\nlines"], r"U\+000A"),
        (["zero\u200bwidth"], r"U\+200B \(ZERO WIDTH SPACE\)"),
        (["bell\x07"], r"U\+0007"),
        ([f"t{n}" for n in range(MAX_TERMS + 1)], "51 different terms; at most 50"),
        ([f"{n:02d}" + "z" * 48 for n in range(10)], "518 characters"),
    ],
)
def test_a_bad_or_oversized_vocabulary_is_refused_saying_why(
    terms: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        vocabulary_terms(terms)


def test_the_bounds_are_reachable_exactly() -> None:
    # 50 terms, 500 characters joined: both bounds met, neither passed.
    terms = [f"{n:02d}" + "t" * 6 for n in range(MAX_TERMS - 1)] + ["last" + "u" * 6]
    assert total_chars(terms) == MAX_TOTAL_CHARS
    assert len(vocabulary_terms(terms)) == MAX_TERMS


def test_a_merge_puts_the_calls_terms_first_then_the_tenants_without_case_repeats() -> None:
    merged = merge_vocabulary(("Acme Cloud", "Zorblax"), ("ZORBLAX", "Globex Plus", "acme cloud"))
    assert merged.terms == ("Acme Cloud", "Zorblax", "Globex Plus")
    assert merged.dropped == ()
    assert merge_vocabulary((), ("Globex",)).terms == ("Globex",)
    assert merge_vocabulary(("Acme",), ()).terms == ("Acme",)


def test_over_the_bounds_a_merge_keeps_the_call_and_each_tenant_term_that_still_fits() -> None:
    # The call's 460 characters leave 40: "Short" fits, the 45-character term does not,
    # and a later short one still does.
    call = tuple(f"{n:02d}" + "c" * 48 for n in range(9))
    assert total_chars(call) == 466
    long_term = "L" * 45
    merged = merge_vocabulary(call, ("Short", long_term, "Tiny"))
    assert merged.terms == (*call, "Short", "Tiny")
    assert merged.dropped == (long_term,)
    assert total_chars(merged.terms) <= MAX_TOTAL_CHARS

    # By count: 49 of the call's leave room for one of the tenant's.
    many = tuple(f"c{n}" for n in range(49))
    merged = merge_vocabulary(many, ("t1", "t2", "t3"))
    assert merged.terms == (*many, "t1")
    assert merged.dropped == ("t2", "t3")


def test_a_stored_term_no_longer_valid_is_dropped_from_the_merge_not_fatal() -> None:
    merged = merge_vocabulary(("Acme",), ("x" * 80, "two\nlines", "Globex"))
    assert merged.terms == ("Acme", "Globex")
    assert merged.dropped == ("x" * 80, "two\nlines")
