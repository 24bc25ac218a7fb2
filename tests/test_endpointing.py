"""The sans-IO ``Endpointer`` (``callscribe/endpointing.py``): with a scripted VAD for exact
state-machine checks, and with the real Silero VAD on speech made by espeak-ng."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from callscribe.audio import MODEL_RATE
from callscribe.config import EndpointingSettings
from callscribe.endpointing import WINDOW, Endpointer, SileroVad, Utterance
from tests.speech import speak

# Settings pinned here (not read from CALLSCRIBE_VAD_* in the environment). In windows of
# 512 samples (32 ms): end_silence 400 ms → 12, min_speech 250 ms → 8, pre_roll 200 ms → 6,
# post_roll 100 ms → 3. No ASR tail: the utterance's audio ends where its timeline end is
# (test_asr_tail_* give it one).
BASE = dict(
    speech_threshold=0.5,
    end_silence_ms=400,
    min_speech_ms=250,
    max_utterance_ms=15_000,
    pre_roll_ms=200,
    post_roll_ms=100,
    asr_tail_ms=0,
)
END_WINDOWS, MIN_WINDOWS, PRE_ROLL, POST_ROLL = 12, 8, 6, 3
SPEECH_LEVEL = 0.3  # amplitude of the synthetic "speech"


def settings(**overrides: int | float) -> EndpointingSettings:
    return EndpointingSettings(**{**BASE, **overrides})


class ScriptedVad:
    """A fake VAD. With ``script``: returns its probabilities one window after another
    (``default`` once exhausted). Without: 0.95 for a window with energy, 0.02 for silence."""

    def __init__(self, script: Sequence[float] | None = None, default: float = 0.0) -> None:
        self.script = list(script) if script is not None else None
        self.default = default
        self.calls = 0
        self.resets = 0
        self.window_sizes: set[int] = set()

    def __call__(self, window: np.ndarray) -> float:
        self.window_sizes.add(len(window))
        index = self.calls
        self.calls += 1
        if self.script is not None:
            return self.script[index] if index < len(self.script) else self.default
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        return 0.95 if rms > 0.05 else 0.02

    def reset(self) -> None:
        self.resets += 1


def silence(windows: float) -> np.ndarray:
    return np.zeros(int(windows * WINDOW), dtype=np.float32)


def speech(windows: float, seed: int = 0) -> np.ndarray:
    """Loud noise, different on every call so that audio can be matched by content."""
    rng = np.random.default_rng(seed)
    n = int(windows * WINDOW)
    return (SPEECH_LEVEL * np.sign(rng.standard_normal(n)) * rng.uniform(0.5, 1, n)).astype(
        np.float32
    )


def timeline(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


def run(endpointer: Endpointer, audio: np.ndarray, chunk: int | None = None) -> list[Utterance]:
    """Feed ``audio`` (all at once, or in chunks) then flush; every utterance in order."""
    out: list[Utterance] = []
    if chunk is None:
        out += endpointer.feed(audio)
    else:
        for i in range(0, len(audio), chunk):
            out += endpointer.feed(audio[i : i + chunk])
    last = endpointer.flush()
    if last is not None:
        out.append(last)
    return out


def spans(utterances: Sequence[Utterance]) -> list[tuple[int, int, bool]]:
    return [(u.start_sample, u.start_sample + len(u.audio), u.forced_cut) for u in utterances]


def energy_endpointer(**overrides: int | float) -> Endpointer:
    return Endpointer(settings(**overrides), ScriptedVad())


# --------------------------------------------------------------------------- one utterance


def test_one_utterance_on_the_absolute_timeline() -> None:
    position = 10 * MODEL_RATE  # the stream was (re)started 10 s into the call
    audio = timeline(silence(16), speech(40), silence(30))
    endpointer = energy_endpointer()
    endpointer.reset(position)

    finished = endpointer.feed(audio)

    assert len(finished) == 1
    (u,) = finished
    speech_start, speech_end = 16 * WINDOW, 56 * WINDOW
    assert u.start_sample == position + speech_start - PRE_ROLL * WINDOW
    assert u.start_sample + len(u.audio) == position + speech_end + POST_ROLL * WINDOW
    assert not u.forced_cut
    assert u.start_ms == u.start_sample * 1000 // MODEL_RATE == 10_000 + 320
    assert u.end_ms == (position + speech_end + POST_ROLL * WINDOW) * 1000 // MODEL_RATE
    # The utterance's audio is exactly that stretch of the input.
    offset = u.start_sample - position
    np.testing.assert_array_equal(u.audio, audio[offset : offset + len(u.audio)])
    assert u.audio.dtype == np.float32
    assert endpointer.flush() is None


def test_utterance_is_returned_by_the_feed_that_completes_the_end_silence() -> None:
    endpointer = energy_endpointer()
    assert endpointer.feed(timeline(silence(10), speech(20))) == []
    assert endpointer.in_speech
    assert endpointer.speech_started_at == (10 - PRE_ROLL) * WINDOW
    assert endpointer.feed(silence(END_WINDOWS - 1)) == []  # one window short
    (u,) = endpointer.feed(silence(1))
    assert u.start_sample == (10 - PRE_ROLL) * WINDOW
    assert not endpointer.in_speech and endpointer.speech_started_at is None


def test_unaligned_speech_is_found_within_window_granularity() -> None:
    lead, length = 5_000, 9_000  # not multiples of 512
    audio = timeline(np.zeros(lead, np.float32), speech(length / WINDOW), silence(30))
    endpointer = energy_endpointer()
    endpointer.reset(123_456)
    (u,) = run(endpointer, audio)
    start, end = u.start_sample - 123_456, u.start_sample - 123_456 + len(u.audio)
    # Starts by the pre-roll before the onset (give or take the window the onset falls in) ...
    assert lead - (PRE_ROLL + 1) * WINDOW <= start <= lead - PRE_ROLL * WINDOW
    # ... and ends by the post-roll after the offset (give or take a window).
    offset = lead + length
    assert offset + (POST_ROLL - 1) * WINDOW <= end <= offset + (POST_ROLL + 1) * WINDOW


def test_pre_roll_is_limited_by_audio_since_reset() -> None:
    endpointer = energy_endpointer()
    endpointer.reset(50_000)
    (u,) = run(endpointer, timeline(silence(2), speech(20), silence(20)))
    assert u.start_sample == 50_000  # only 2 windows of pre-roll were available


def test_zero_pre_and_post_roll() -> None:
    endpointer = energy_endpointer(pre_roll_ms=0, post_roll_ms=0)
    (u,) = run(endpointer, timeline(silence(10), speech(20), silence(20)))
    assert (u.start_sample, u.start_sample + len(u.audio)) == (10 * WINDOW, 30 * WINDOW)


def test_reset_forgets_open_speech_and_resets_the_vad() -> None:
    vad = ScriptedVad()
    endpointer = Endpointer(settings(), vad)
    resets_at_start = vad.resets
    endpointer.feed(timeline(silence(10), speech(20)))
    endpointer.feed(speech(0.5))  # a partial window pending
    assert endpointer.in_speech

    endpointer.reset(1_000_000)
    assert vad.resets == resets_at_start + 1
    assert not endpointer.in_speech
    assert endpointer.flush() is None
    (u,) = run(endpointer, timeline(silence(10), speech(20), silence(20)))
    assert u.start_sample == 1_000_000 + (10 - PRE_ROLL) * WINDOW


def test_vad_sees_whole_windows_only() -> None:
    vad = ScriptedVad()
    endpointer = Endpointer(settings(), vad)
    run(endpointer, timeline(silence(10), speech(20), silence(20)), chunk=300)
    assert vad.window_sizes == {WINDOW}
    assert vad.calls == 50


# --------------------------------------------------------------------------- end of speech


@pytest.mark.parametrize(
    ("end_silence_ms", "pause_windows", "expected"),
    [
        (400, 9, 1),  # 288 ms pause < 400 ms: one utterance
        (400, 11, 1),  # 352 ms: still one
        (400, 13, 2),  # 416 ms > 400 ms: split
        (400, 19, 2),  # 608 ms pause: split
        (800, 19, 1),  # the same pause under a longer end silence: one utterance
        (800, 26, 2),  # 832 ms > 800 ms
    ],
)
def test_end_silence_ms_decides_whether_a_pause_splits(
    end_silence_ms: int, pause_windows: int, expected: int
) -> None:
    audio = timeline(silence(10), speech(20, 1), silence(pause_windows), speech(20, 2), silence(40))
    utterances = run(energy_endpointer(end_silence_ms=end_silence_ms), audio)
    assert len(utterances) == expected
    first_start = (10 - PRE_ROLL) * WINDOW
    second_end = (10 + 20 + pause_windows + 20) * WINDOW
    assert utterances[0].start_sample == first_start
    end = utterances[-1].start_sample + len(utterances[-1].audio)
    assert second_end <= end <= second_end + POST_ROLL * WINDOW
    if expected == 1:
        # The pause stays inside the utterance, untouched.
        np.testing.assert_array_equal(utterances[0].audio, audio[first_start:end])
    else:
        first_end = utterances[0].start_sample + len(utterances[0].audio)
        assert first_end == (30 + POST_ROLL) * WINDOW
        assert utterances[1].start_sample >= first_end


@pytest.mark.parametrize("pause_windows", [13, 15])
def test_next_utterance_gets_full_pre_roll_after_a_pause(pause_windows: int) -> None:
    audio = timeline(silence(10), speech(20, 1), silence(pause_windows), speech(20, 2), silence(40))
    first, second = run(energy_endpointer(), audio)
    onset = (30 + pause_windows) * WINDOW
    first_end = first.start_sample + len(first.audio)
    assert second.start_sample == max(first_end, onset - PRE_ROLL * WINDOW)


def test_hysteresis_in_between_probability_keeps_speech_open() -> None:
    # Voiced, then 30 windows "maybe" (0.35 <= p < 0.5): not silence, so no end yet.
    script = [0.0] * 10 + [0.9] * 10 + [0.4] * 30 + [0.0] * 20
    endpointer = Endpointer(settings(), ScriptedVad(script))
    utterances = run(endpointer, silence(len(script)))
    assert len(utterances) == 1
    (u,) = utterances
    assert u.start_sample + len(u.audio) == (50 + POST_ROLL) * WINDOW


def test_hysteresis_in_between_probability_continues_a_silence_run() -> None:
    # Once silence has begun, "maybe" windows count towards it: 5 + 7 = 12 ends the utterance.
    script = [0.9] * 10 + [0.1] * 5 + [0.4] * 7
    endpointer = Endpointer(settings(), ScriptedVad(script, default=0.9))
    finished = endpointer.feed(silence(len(script)))
    assert len(finished) == 1
    assert finished[0].start_sample + len(finished[0].audio) == (10 + POST_ROLL) * WINDOW


def test_threshold_setting_is_honoured() -> None:
    script = [0.6] * 20 + [0.0] * 20
    assert (
        len(run(Endpointer(settings(speech_threshold=0.5), ScriptedVad(script)), silence(40))) == 1
    )
    assert run(Endpointer(settings(speech_threshold=0.7), ScriptedVad(script)), silence(40)) == []


# --------------------------------------------------------------------------- short noises


@pytest.mark.parametrize("click_windows", [1, 2, MIN_WINDOWS - 1])
def test_min_speech_discards_clicks(click_windows: int) -> None:
    audio = timeline(silence(10), speech(click_windows), silence(30))
    endpointer = energy_endpointer()
    assert endpointer.feed(audio) == []
    assert not endpointer.in_speech
    assert endpointer.flush() is None


def test_min_speech_keeps_speech_just_long_enough() -> None:
    audio = timeline(silence(10), speech(MIN_WINDOWS), silence(30))
    (u,) = run(energy_endpointer(), audio)
    assert u.start_sample == (10 - PRE_ROLL) * WINDOW


def test_min_speech_counts_voiced_windows_not_duration() -> None:
    # 6 voiced windows spread over a long span with short gaps: still too little speech.
    bursts = [speech(1, i) if i % 2 == 0 else silence(2) for i in range(12)]
    audio = timeline(silence(10), *bursts, silence(30))
    assert run(energy_endpointer(), audio) == []


def test_click_then_speech_yields_only_the_speech() -> None:
    audio = timeline(silence(10), speech(2, 1), silence(20), speech(20, 2), silence(20))
    (u,) = run(energy_endpointer(), audio)
    assert u.start_sample == (10 + 2 + 20 - PRE_ROLL) * WINDOW


# --------------------------------------------------------------------------- long monologues


def test_max_utterance_forces_a_cut_and_speech_continues() -> None:
    # max_utterance 1000 ms: 31 whole windows. 100 windows of speech without a pause.
    max_samples = 1000 * MODEL_RATE // 1000
    audio = timeline(silence(10), speech(100), silence(30))
    utterances = run(energy_endpointer(max_utterance_ms=1000), audio)

    assert len(utterances) >= 3
    *forced, last = utterances
    assert all(u.forced_cut for u in forced)
    assert not last.forced_cut  # the final piece ends in silence
    assert all(len(u.audio) <= max_samples for u in utterances)
    assert all(max_samples - WINDOW < len(u.audio) for u in forced)
    # No audio is lost or duplicated at the cuts: each piece starts where the previous ended.
    for before, after in itertools.pairwise(utterances):
        assert after.start_sample == before.start_sample + len(before.audio)
    assert utterances[0].start_sample == (10 - PRE_ROLL) * WINDOW
    assert last.start_sample + len(last.audio) == (110 + POST_ROLL) * WINDOW
    joined = np.concatenate([u.audio for u in utterances])
    start = utterances[0].start_sample
    np.testing.assert_array_equal(joined, audio[start : start + len(joined)])


def test_forced_cut_is_reported_as_soon_as_the_limit_is_reached() -> None:
    endpointer = energy_endpointer(max_utterance_ms=1000)
    endpointer.feed(silence(10))
    assert endpointer.feed(speech(31 - PRE_ROLL - 1)) == []
    (u,) = endpointer.feed(speech(1, 7))
    assert u.forced_cut and len(u.audio) == 31 * WINDOW
    assert not endpointer.in_speech


def test_speech_after_a_forced_cut_is_not_lost_to_min_speech() -> None:
    # max 31 windows: the cut comes after 25 speech windows (6 are pre-roll); 5 more follow.
    audio = timeline(silence(10), speech(30), silence(30))
    utterances = run(energy_endpointer(max_utterance_ms=1000), audio)
    assert utterances[0].forced_cut
    end = utterances[-1].start_sample + len(utterances[-1].audio)
    assert end >= 40 * WINDOW  # the last 5 windows of speech are in some utterance


# --------------------------------------------------------------------------- flush


def test_flush_returns_the_open_utterance_with_pending_samples() -> None:
    endpointer = energy_endpointer()
    endpointer.reset(7_000)
    audio = timeline(silence(10), speech(20), speech(100 / WINDOW, 3))  # ends mid-window
    assert endpointer.feed(audio) == []
    u = endpointer.flush()
    assert u is not None and not u.forced_cut
    assert u.start_sample == 7_000 + (10 - PRE_ROLL) * WINDOW
    assert len(u.audio) == (PRE_ROLL + 20) * WINDOW + 100  # the partial window included
    np.testing.assert_array_equal(u.audio, audio[(10 - PRE_ROLL) * WINDOW :])
    assert endpointer.flush() is None  # nothing left


def test_flush_trims_trailing_silence_of_the_open_utterance() -> None:
    endpointer = energy_endpointer()
    assert endpointer.feed(timeline(silence(10), speech(20), silence(5))) == []
    u = endpointer.flush()
    assert u is not None
    end = u.start_sample + len(u.audio)
    assert 30 * WINDOW <= end <= (30 + POST_ROLL) * WINDOW


@pytest.mark.parametrize("tail", [0, 100])
def test_flush_when_silent_returns_nothing(tail: int) -> None:
    endpointer = energy_endpointer()
    endpointer.feed(timeline(silence(50), np.zeros(tail, np.float32)))
    assert endpointer.flush() is None


def test_flush_after_finished_utterance_returns_nothing() -> None:
    endpointer = energy_endpointer()
    assert len(endpointer.feed(timeline(silence(10), speech(20), silence(20)))) == 1
    assert endpointer.flush() is None


def test_flush_discards_open_click() -> None:
    endpointer = energy_endpointer()
    endpointer.feed(timeline(silence(10), speech(2)))
    assert endpointer.in_speech
    assert endpointer.flush() is None


# --------------------------------------------------------------------------- chunking


def _rich_timeline() -> np.ndarray:
    """Speech, a click, a short pause, a monologue that gets cut, and an open utterance."""
    return timeline(
        silence(9.3),
        speech(25, 1),
        silence(7),  # short pause, no split
        speech(12.6, 2),
        silence(20.5),
        speech(2, 3),  # a click
        silence(15),
        speech(70, 4),  # a forced cut at 1.5 s
        silence(14.2),
        speech(9.7, 5),  # still open at the end: flush
    )


@pytest.mark.parametrize("chunk", [1, 7, 320, 513])
def test_chunk_size_does_not_change_the_utterances(chunk: int) -> None:
    audio = _rich_timeline()
    reference = run(energy_endpointer(max_utterance_ms=1500), audio)
    assert len(reference) >= 4
    assert any(u.forced_cut for u in reference)

    chunked = run(energy_endpointer(max_utterance_ms=1500), audio, chunk=chunk)
    assert spans(chunked) == spans(reference)
    for a, b in zip(chunked, reference, strict=True):
        np.testing.assert_array_equal(a.audio, b.audio)


def test_irregular_chunks_and_empty_feeds() -> None:
    audio = _rich_timeline()
    reference = run(energy_endpointer(max_utterance_ms=1500), audio)
    endpointer = energy_endpointer(max_utterance_ms=1500)
    rng = np.random.default_rng(42)
    out: list[Utterance] = []
    i = 0
    while i < len(audio):
        n = int(rng.integers(0, 1500))
        out += endpointer.feed(audio[i : i + n])
        i += n
    last = endpointer.flush()
    out += [last] if last else []
    assert spans(out) == spans(reference)


def test_float64_and_int_like_input_is_accepted() -> None:
    audio = timeline(silence(10), speech(20), silence(20))
    ref = run(energy_endpointer(), audio)
    got = run(energy_endpointer(), audio.astype(np.float64), chunk=333)
    assert spans(got) == spans(ref)
    assert got[0].audio.dtype == np.float32


# --------------------------------------------------------------------------- real Silero VAD

needs_tools = pytest.mark.usefixtures("speech_tools")  # fails, never skips, without them


@pytest.fixture(scope="module")
def espeak_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    directory = tmp_path_factory.mktemp("espeak")
    first = speak("I would like to change the delivery address on my order.", directory, "a")
    second = speak("Sure, I can help you with that today.", directory, "b")
    return first, second


def _voiced_extent(x: np.ndarray) -> tuple[int, int]:
    loud = np.nonzero(np.abs(x) > 0.01)[0]
    return int(loud[0]), int(loud[-1]) + 1


@needs_tools
def test_silero_finds_espeak_speech(espeak_speech: tuple[np.ndarray, np.ndarray]) -> None:
    first, _ = espeak_speech
    lead = MODEL_RATE // 2
    audio = timeline(np.zeros(lead, np.float32), first, np.zeros(MODEL_RATE, np.float32))
    onset, offset = (lead + v for v in _voiced_extent(first))
    endpointer = Endpointer(settings(), SileroVad())
    endpointer.reset(2 * MODEL_RATE)

    utterances = run(endpointer, audio, chunk=320)

    assert len(utterances) == 1
    (u,) = utterances
    start, end = u.start_sample - 2 * MODEL_RATE, u.start_sample - 2 * MODEL_RATE + len(u.audio)
    # Opens within the pre-roll (plus a couple of windows of VAD latency) of the onset ...
    assert onset - (PRE_ROLL + 1) * WINDOW <= start <= onset
    # ... and closes after the last sound, no later than the post-roll plus VAD decay.
    assert offset - 2 * WINDOW <= end <= offset + (POST_ROLL + 4) * WINDOW
    assert not u.forced_cut


@needs_tools
def test_silero_splits_two_sentences_apart(espeak_speech: tuple[np.ndarray, np.ndarray]) -> None:
    first, second = espeak_speech
    gap = MODEL_RATE  # 1 s between speakers' turns
    audio = timeline(
        np.zeros(8000, np.float32),
        first,
        np.zeros(gap, np.float32),
        second,
        np.zeros(MODEL_RATE, np.float32),
    )
    utterances = run(Endpointer(settings(), SileroVad()), audio, chunk=160)
    assert len(utterances) == 2
    second_onset = 8000 + len(first) + gap + _voiced_extent(second)[0]
    assert utterances[0].start_sample + len(utterances[0].audio) < second_onset - 8 * WINDOW
    assert second_onset - (PRE_ROLL + 1) * WINDOW <= utterances[1].start_sample <= second_onset


@needs_tools
def test_silero_chunking_is_irrelevant(espeak_speech: tuple[np.ndarray, np.ndarray]) -> None:
    first, _ = espeak_speech
    audio = timeline(np.zeros(8000, np.float32), first, np.zeros(MODEL_RATE, np.float32))
    a = run(Endpointer(settings(), SileroVad()), audio)
    b = run(Endpointer(settings(), SileroVad()), audio, chunk=513)
    assert spans(a) == spans(b) and len(a) == 1


def test_silero_finds_nothing_in_silence() -> None:
    endpointer = Endpointer(settings(), SileroVad())
    assert run(endpointer, np.zeros(3 * MODEL_RATE, np.float32), chunk=320) == []


@pytest.mark.parametrize("std", [0.001, 0.005])
def test_silero_finds_nothing_in_low_white_noise(std: float) -> None:
    noise = np.random.default_rng(3).normal(0, std, 3 * MODEL_RATE).astype(np.float32)
    endpointer = Endpointer(settings(), SileroVad())
    assert run(endpointer, noise, chunk=320) == []


def test_silero_reset_restores_initial_state() -> None:
    vad = SileroVad()
    rng = np.random.default_rng(0)
    windows = [rng.normal(0, 0.1, WINDOW).astype(np.float32) for _ in range(10)]
    first = [vad(w) for w in windows]
    vad.reset()
    again = [vad(w) for w in windows]
    assert first == again
    assert all(0.0 <= p <= 1.0 for p in first)


def test_asr_tail_gives_whisper_the_silence_after_the_last_word() -> None:
    """The ASR hears up to asr_tail_ms of the silence that ended the utterance (real trailing
    audio, so Whisper sees the sentence end), while the utterance's end stays where the speech
    (plus post-roll) ended."""

    audio = timeline(silence(10), speech(20), silence(40))
    (plain,) = run(energy_endpointer(), audio)
    (tailed,) = run(energy_endpointer(asr_tail_ms=200), audio)  # 200 ms → 6 windows
    assert tailed.start_sample == plain.start_sample and tailed.end_ms == plain.end_ms
    assert tailed.tail_samples == 6 * WINDOW
    assert len(tailed.audio) == len(plain.audio) + 6 * WINDOW
    assert np.array_equal(tailed.audio[: len(plain.audio)], plain.audio)
    assert not np.any(tailed.audio[len(plain.audio) :])  # the silence itself
    # A tail longer than the silence waited for is cut to it.
    (capped,) = run(energy_endpointer(asr_tail_ms=5000), audio)
    assert capped.tail_samples == (END_WINDOWS - POST_ROLL) * WINDOW
