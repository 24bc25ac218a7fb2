"""Accuracy on voices nobody tuned for: the held-back calls of the quality corpus streamed
through a real server as Twilio calls, against the same model transcribing the same turns
offline (generous cuts, faster-whisper's own 30 s window). The streamed transcripts must never
loop, stay within STREAMING_WER_BOUND × offline's WER, and lose at most one turn more than
offline does (one one-word reply, "Perfect.", that the VAD hears too faintly, is lost today)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest

from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.quality import Transcript, group, regroup, score
from callscribe.quality_bench import (
    Comparison,
    corpus_dir,
    load_corpus,
    offline_settings,
    offline_transcripts,
    stream_calls,
)
from callscribe.testing.simulate import FRAME_BYTES, ReceivedMessage, WebhookReceiver
from callscribe.vocabulary_bench import tally
from tests.conftest import RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The bar. Decoding is deterministic (greedy, then a beam search when that looks
# broken; no sampled temperature), so this run gives the figures `callscribe bench quality`
# gives: 34.5 % streaming against 34.7 % offline (0.99 ×) on this split. The old default was
# 1.43 ×.
STREAMING_WER_BOUND = 1.1


def test_the_corpus_is_as_its_readme_says() -> None:
    manifest = json.loads((corpus_dir() / "corpus.json").read_text())
    splits = [c["split"] for c in manifest["calls"]]
    assert len(splits) >= 12
    assert splits.count("held-back") * 3 >= len(splits)  # a third kept out of tuning
    calls = load_corpus()
    voices = {voice for c in calls for voice in c.voices.values()}
    assert len(voices) >= 12
    for c in calls:
        assert {len(t) for t in c.call.tracks.values()} == {c.call.frames * FRAME_BYTES}
        assert [x.action for x in c.call.controls] == ["start", "stop"]
        lengths = [t.end_ms - t.start_ms for t in c.turns]
        assert c.turns and all(0 < n < 15_000 for n in lengths)
    lengths = [t.end_ms - t.start_ms for c in calls for t in c.turns]
    assert min(lengths) <= 600 and max(lengths) >= 4_000


async def test_streaming_is_as_accurate_as_offline_on_held_back_voices(
    server_factory: Callable[..., Awaitable[RunningServer]], receiver: WebhookReceiver
) -> None:
    # The whole held-back split: eight voices no setting was chosen on.
    calls = load_corpus(split="held-back")
    assert len(calls) == 4
    server = await server_factory(receiver.url)
    api = server.client("quality")
    inbox: list[ReceivedMessage] = []
    receiver.listeners.append(inbox.append)
    run = await stream_calls(calls, api, inbox, speed=2.0)
    assert run.control_errors == 0 and run.lost == 0

    engine = FasterWhisperEngine(offline_settings())
    comparison = Comparison()
    for c in calls:
        streamed: list[Transcript] = run.transcripts[c.id]
        assert streamed, c.id
        groups = group(c.turns, streamed)
        comparison.add(groups, regroup(groups, offline_transcripts(engine, c)))
    await engine.close()

    streaming, offline = comparison.streaming, comparison.offline
    detail = (streaming.wer, offline.wer, streaming.loops, streaming.truncations)
    print(
        f"held-back split: streaming WER {streaming.wer:.1%}, offline "
        f"{offline.wer:.1%} ({comparison.ratio:.2f}×), loops {len(streaming.loops)}, "
        f"truncations {len(streaming.truncations)}/{len(offline.truncations)}"
    )
    assert streaming.loops == [], detail
    assert len(streaming.truncations) <= len(offline.truncations), detail
    assert streaming.wer <= STREAMING_WER_BOUND * offline.wer, detail
    # Timing: each group's first and last transcript lie where its turns were said.
    assert sorted(streaming.start_errors_ms)[len(streaming.start_errors_ms) // 2] <= 300
    assert sorted(streaming.end_errors_ms)[len(streaming.end_errors_ms) // 2] <= 300


@pytest.mark.parametrize("split", ["tuning", "held-back"])
def test_each_split_scores_against_itself(split: str) -> None:
    """Scoring the script against itself gives no errors, loops or truncations: the corpus's
    texts and turn boundaries are consistent with the scorer (digits, repeats)."""
    for c in load_corpus(split=split, kind="all"):
        turns = c.turns
        result = score(
            group(turns, [Transcript(t.track, t.start_ms, t.end_ms, t.text) for t in turns])
        )
        assert (result.errors, result.loops, result.truncations) == (0, [], []), c.id


def test_the_domain_calls_say_what_corpus_json_says_and_the_others_do_not() -> None:
    """Each domain call's reference says the terms ``termsSaid`` lists, as often as it lists,
    and at least one term of its vocabulary not at all; the general calls say no domain term
    but "PIN", "on hold" and "direct debit" (so that a term a transcript holds there is a
    false insertion, counted against its reference)."""
    domain = load_corpus(kind="domain")
    assert [c.split for c in domain].count("held-back") == 2 and len(domain) == 5
    everyday = {"pin", "on hold", "direct debit"}
    for c in domain:
        turns = c.turns
        groups = group(turns, [Transcript(t.track, t.start_ms, t.end_ms, t.text) for t in turns])
        for term in c.vocabulary:
            said = tally(groups, [term]).said
            assert said == c.terms_said.get(term, 0), (c.id, term)
        assert set(c.terms_said) < set(c.vocabulary), c.id
    terms = {t for c in domain for t in c.vocabulary if t.lower() not in everyday}
    for c in load_corpus():
        turns = c.turns
        groups = group(turns, [Transcript(t.track, t.start_ms, t.end_ms, t.text) for t in turns])
        assert tally(groups, sorted(terms)).said == 0, c.id
