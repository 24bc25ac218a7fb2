"""Scoring transcripts against a script: normalised words, repetition loops, groups of turns
and messages, word errors, truncations and timing (``callscribe.quality``)."""

from __future__ import annotations

import pytest

from callscribe.quality import Transcript, Turn, group, regroup, score, word_errors
from callscribe.textnorm import loop_free, normalize, repetition_loop, without_loops


def test_numbers_are_read_digit_by_digit_and_addresses_aloud() -> None:
    assert normalize("My PIN is 4729.") == normalize("my pin is four seven two nine")
    assert normalize("Mail jane.doe@example.com, OK?") == (
        ["mail", "jane", "dot", "doe", "at", "example", "dot", "com", "okay"]
    )
    assert normalize("It's 50% off & free") == ["it's", "5", "0", "percent", "off", "and", "free"]
    assert normalize("The 2nd of March, 1986.") == normalize(
        "The second of March, nineteen eighty six."
    )
    assert normalize("22 Maple Avenue, £30 at 20 past 8") == normalize(
        "Twenty two Maple Avenue, thirty pounds at twenty past eight"
    )
    assert normalize("the 21st, $45, 305") == normalize(
        "the twenty first, forty five dollars, three hundred and five"
    )
    assert normalize("  ...  ") == []


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("Perfect, and and and and and please send the receipt", "and"),
        ("Know that is all. Know that is all. Know that is all", "know that is all"),
        ("Get a seat with me. Get a seat with me.", "get a seat with me"),
        ("Thank you. Thank you. Thank you. Thank you. Thank", "thank you"),
        ("No, that is all.", None),
        ("Thank you, thank you.", None),  # twice is how people thank
        ("Is your number still time time time?", None),  # "nine nine nine" misheard
        ("No. No. No. No. No. No. No", "no"),
        ("6 6 1 0 4 3 5 2 6 6 1 0 4 3 5 2 6 6 1 0 4", "6 6 1 0 4 3 5 2"),
        ("I would like to upgrade my streaming package to the premium plan", None),
    ],
)
def test_repetition_loops(text: str, loop: str | None) -> None:
    assert repetition_loop(normalize(text)) == loop


def test_repeats_the_script_has_are_not_loops() -> None:
    card = normalize("four one one one one one one one")
    assert repetition_loop(normalize("4111 1111"), card) is None
    assert repetition_loop(normalize("4111 1111 1111"), card) == "1"
    assert repetition_loop(normalize("0-7-0-0-0-0-9142"), normalize("zero seven seven")) is None
    assert repetition_loop(normalize("5555 5555"), normalize("five five five")) == "5"


def test_word_errors() -> None:
    assert word_errors(["a", "b", "c", "d"], ["a", "x", "c"]) == 2
    assert word_errors(["a", "b"], []) == 2
    assert word_errors([], ["a"]) == 1


TURNS = [
    Turn("outbound", 1000, 2000, "Hello, this is Sarah."),
    Turn("outbound", 2300, 4000, "How can I help you today?"),
    Turn("inbound", 4500, 5000, "Yes."),
    Turn("inbound", 6000, 9000, "I would like to change my delivery address please."),
]


def test_a_message_spanning_two_turns_groups_them() -> None:
    messages = [
        Transcript("outbound", 900, 4100, "Hello, this is Sarah. How can I help you today?"),
        Transcript("inbound", 4400, 5100, "Yes."),
        Transcript("inbound", 5900, 7000, "I would like to change"),
        Transcript("inbound", 7400, 9100, "my delivery address, please."),
    ]
    groups = group(TURNS, messages)
    assert [(g.track, len(g.turns), len(g.transcripts)) for g in groups] == [
        ("inbound", 1, 1),
        ("inbound", 1, 2),
        ("outbound", 2, 1),
    ]
    result = score(groups)
    assert (result.groups, result.reference_words, result.errors) == (3, 20, 0)
    assert result.loops == [] and result.truncations == []
    assert sorted(result.start_errors_ms) == [100, 100, 100]
    assert sorted(result.end_errors_ms) == [100, 100, 100]


def test_a_stray_message_joins_the_nearest_turn_of_its_track() -> None:
    groups = group(TURNS, [Transcript("inbound", 5300, 5500, "Hmm.")])
    yes = next(g for g in groups if g.turns[0].text == "Yes.")
    assert [t.text for t in yes.transcripts] == ["Hmm."]
    result = score(groups)
    # "Yes." became "Hmm." (1); the three other turns were never transcribed (4 + 6 + 9).
    assert result.errors == 1 + 4 + 6 + 9
    assert len(result.truncations) == 3  # the untranscribed turns
    assert result.start_errors_ms == [800]  # only transcribed groups are timed


def test_loops_and_truncations_are_counted() -> None:
    messages = [
        Transcript("outbound", 1000, 4000, "Hello this is Sarah. How can I help you today?"),
        Transcript("inbound", 4500, 5000, "Yes. Yes. Yes. Yes."),
        Transcript("inbound", 6000, 9000, "I will"),
    ]
    result = score(group(TURNS, messages))
    assert result.loops == ["Yes. Yes. Yes. Yes."]
    assert result.truncations == ["I would like to change my delivery address please."]


def test_offline_transcripts_are_scored_on_the_streamed_groups() -> None:
    streamed = group(TURNS, [Transcript("outbound", 900, 4100, "Hello this is Sarah how can")])
    offline = regroup(streamed, [Transcript(t.track, t.start_ms, t.end_ms, t.text) for t in TURNS])
    assert [len(g.turns) for g in offline] == [len(g.turns) for g in streamed]
    assert score(offline).errors == 0
    # Four words missing from the agent's group, and the customer's ten never transcribed.
    assert score(streamed).errors == 4 + 10


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        (
            "It will come, not make a lot of effort, not make a lot of effort.",
            "It will come, not make a lot of effort.",
        ),
        ("and your name and your name.", "and your name."),
        (
            "Perfect, and and and and and please send the receipt",
            "Perfect, and please send the receipt",
        ),
        ("Know that is all. Know that is all. Know that is all", "Know that is all"),
        ("Yes, it will.", "Yes, it will."),
    ],
)
def test_loops_are_cut_to_one_occurrence(text: str, cut: str) -> None:
    assert without_loops(text) == cut
    assert repetition_loop(normalize(without_loops(text))) is None


def test_a_number_is_never_cut() -> None:
    assert without_loops("My card is 4111 1111 1111 1111.") == "My card is 4111 1111 1111 1111."


def test_loop_free_keeps_the_indices_of_the_words_that_stay() -> None:
    tokens = ["and", "your", "name", "and", "your", "name", "please"]
    assert loop_free(tokens) == [3, 4, 5, 6]
