"""``FasterWhisperEngine.transcribe_batch``: several utterances through one encoder call and
one decoder call give what each gives alone; the requests it cannot batch take the single path.
Real Whisper base on the CPU, real (espeak-ng) speech."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest

from callscribe.asr.base import AsrRequest
from callscribe.asr.bench import bench_rows, format_table, word_error_rate
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.config import AsrSettings
from tests.speech import SENTENCES, needs_speech_tools, padded_to, speak

pytestmark = needs_speech_tools


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, str]]:
    directory: Path = tmp_path_factory.mktemp("speech")
    return [(speak(text, directory, f"u{i}"), text) for i, text in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def full_context_engine() -> Iterator[FasterWhisperEngine]:
    yield FasterWhisperEngine(AsrSettings(encoder_context="full"))


def normalise(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c in " '").split())


def test_batch_of_equal_lengths_matches_single_decodes(
    asr_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    """Trimmed context: utterances of one length share one context width, so the batch sees
    exactly the features each single decode sees."""
    longest = max(len(audio) for audio, _ in utterances)
    requests = [AsrRequest(padded_to(audio, longest), language="en") for audio, _ in utterances]
    singles = [asr_engine.transcribe_blocking(r) for r in requests]
    batch = asr_engine.transcribe_batch(requests)
    assert [r.text for r in batch] == [r.text for r in singles]
    assert all(r.text for r in batch)
    assert [r.language for r in batch] == ["en"] * len(requests)
    assert [r.audio_ms for r in batch] == [r.audio_ms for r in singles]
    # The batch decoded what was said.
    assert (
        jiwer.wer([normalise(t) for _, t in utterances], [normalise(r.text) for r in batch]) <= 0.15
    )


def test_batch_of_mixed_lengths_matches_single_decodes_with_full_context(
    full_context_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    """Full context: every utterance is padded to Whisper's 30 s alone or in a batch."""
    requests = [AsrRequest(audio, language="en") for audio, _ in utterances[:4]]
    assert len({len(r.audio) for r in requests}) == 4
    singles = [full_context_engine.transcribe_blocking(r) for r in requests]
    batch = full_context_engine.transcribe_batch(requests)
    assert [r.text for r in batch] == [r.text for r in singles]
    assert all(r.text for r in batch)


def test_batch_of_mixed_lengths_with_trimmed_context_transcribes_correctly(
    asr_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    """Padded to the widest context in the batch, shorter utterances see more silence than
    alone (a word's punctuation may differ); the words must still be right."""
    requests = [AsrRequest(audio, language="en") for audio, _ in utterances]
    batch = asr_engine.transcribe_batch(requests)
    assert (
        jiwer.wer([normalise(t) for _, t in utterances], [normalise(r.text) for r in batch]) <= 0.15
    )


def test_requests_that_need_the_single_path_take_it_inside_a_batch(
    asr_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    plain = AsrRequest(utterances[0][0], language="en")
    with_words = AsrRequest(utterances[1][0], language="en", word_timestamps=True)
    undetected = AsrRequest(utterances[2][0], language=None)
    assert asr_engine.batchable(plain)
    assert not asr_engine.batchable(with_words) and not asr_engine.batchable(undetected)

    batch = asr_engine.transcribe_batch([with_words, plain, undetected])
    alone = [asr_engine.transcribe_blocking(r) for r in (with_words, plain, undetected)]
    assert [r.text for r in batch] == [r.text for r in alone]
    assert batch[0].words == alone[0].words
    assert len(batch[0].words) >= 6
    assert all(0 <= w.start_ms <= w.end_ms <= batch[0].audio_ms + 20 for w in batch[0].words)
    assert batch[1].words == ()
    assert batch[2].language == "en"


def test_silence_and_noise_in_a_batch_give_no_text(
    asr_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    noise = (np.random.default_rng(7).standard_normal(32_000) * 0.003).astype(np.float32)
    requests = [
        AsrRequest(np.zeros(32_000, dtype=np.float32), language="en"),
        AsrRequest(utterances[1][0], language="en"),
        AsrRequest(noise, language="en"),
    ]
    batch = asr_engine.transcribe_batch(requests)
    assert batch[0].text == "" and batch[2].text == ""
    assert normalise(batch[1].text) == normalise(utterances[1][1])


def test_an_unknown_language_refuses_the_batch_before_any_work(
    asr_engine: FasterWhisperEngine, utterances: list[tuple[np.ndarray, str]]
) -> None:
    with pytest.raises(ValueError, match="'xx'"):
        asr_engine.transcribe_batch(
            [AsrRequest(utterances[0][0], "en"), AsrRequest(utterances[1][0], "xx")]
        )
    assert asr_engine.transcribe_batch([]) == []


def test_bench_rows_cover_single_and_each_batch_size(asr_engine: FasterWhisperEngine) -> None:
    rows = bench_rows(asr_engine, [1, 3], 3)
    assert [(r.mode, r.batch_size, r.utterances) for r in rows] == [
        ("single", 1, 3),
        ("batched", 1, 3),
        ("batched", 3, 3),
    ]
    assert rows[1].same_as_single == 3  # a batch of one is the single decode
    for row in rows:
        assert row.word_error_rate <= 0.2
        assert 0 < row.latency_mean_ms <= row.latency_max_ms
        assert row.real_time_factor > 0 and row.utterances_per_s > 0
    table = format_table(rows).splitlines()
    assert len(table) == 4 and table[0].split()[:3] == ["vocabulary", "mode", "batch"]


def test_bench_rows_with_mixed_vocabularies_decode_as_alone(
    asr_engine: FasterWhisperEngine,
) -> None:
    """Every utterance of a batch with another tenant's vocabulary (or none): the batch decodes
    in one group per prompt length and each text is its single decode's."""
    rows = bench_rows(asr_engine, [4], 4, ("mixed",))
    assert [(r.vocabulary, r.mode, r.batch_size) for r in rows] == [
        ("mixed", "single", 1),
        ("mixed", "batched", 4),
    ]
    assert rows[1].same_as_single == 4
    assert rows[1].groups_per_batch > 1
    assert "mixed" in format_table(rows)


def test_word_error_rate() -> None:
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5
    assert word_error_rate(["Hello, there."], ["hello there"]) == 0.0


def test_bench_asr_command(capsys: pytest.CaptureFixture[str]) -> None:
    from callscribe.cli import main

    assert main(["bench-asr", "--batch-sizes", "1,x"]) == 2
    assert main(["bench-asr", "--batch-sizes", "0"]) == 2
    assert main(["bench-asr", "--vocabularies", "none,some"]) == 2
    assert main(["bench-asr", "--batch-sizes", "2", "--utterances", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ASR benchmark: packaged:whisper-base on cpu (int8), encoder context")
    assert len(out) == 4
    assert out[2].split()[:3] == ["none", "single", "1"]
    assert out[3].split()[:3] == ["none", "batched", "2"]
    assert out[3].split()[-1].endswith("/2")


class _RecordingGenerate:
    """The CTranslate2 model, with each ``generate`` call's beam size and temperature noted."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.rounds: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def generate(self, *args: object, **kwargs: object) -> object:
        self.rounds.append((kwargs.get("beam_size", 1), kwargs.get("sampling_temperature", 0.0)))
        return self._model.generate(*args, **kwargs)  # type: ignore[attr-defined]


def test_a_decode_that_looks_improbable_is_redone_with_a_beam_search_first(
    utterances: list[tuple[np.ndarray, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a log-probability bar no decode clears, every utterance goes through each round:
    greedy, then the beam search, then the sampled temperature; single and batched paths alike,
    and the text is the most probable of them."""
    engine = FasterWhisperEngine(
        AsrSettings(temperatures=(0.0, 0.4), fallback_beam_size=4, log_prob_threshold=0.0)
    )
    assert engine._decoding_rounds() == [(1, 0.0), (4, 0.0), (1, 0.4)]
    single_rounds: list[tuple[int, list[float]]] = []
    transcribe = engine._model.transcribe

    def recording_transcribe(audio: np.ndarray, **options: object):  # type: ignore[no-untyped-def]
        single_rounds.append((options["beam_size"], options["temperature"]))  # type: ignore[arg-type]
        return transcribe(audio, **options)

    monkeypatch.setattr(engine._model, "transcribe", recording_transcribe)
    audio, text = utterances[0]
    single = engine.transcribe_blocking(AsrRequest(audio, language="en"))
    assert single_rounds == [(1, [0.0]), (4, [0.0]), (1, [0.4])]
    assert normalise(single.text) and jiwer.wer(normalise(text), normalise(single.text)) <= 0.3

    recorder = _RecordingGenerate(engine._model.model)
    monkeypatch.setattr(engine._model, "model", recorder)
    engine.transcribe_batch([AsrRequest(a, language="en") for a, _ in utterances[:2]])
    assert [(beam, t) for beam, t in recorder.rounds] == [(1, 0.0), (4, 0.0), (1, 0.4)]


def test_without_sampled_temperatures_decoding_is_repeatable(
    utterances: list[tuple[np.ndarray, str]],
) -> None:
    """Greedy then beam search only: the same audio gives the same text every time, however
    often the fallback acts (the sampled temperature would not)."""
    engine = FasterWhisperEngine(
        AsrSettings(temperatures=(0.0,), fallback_beam_size=5, log_prob_threshold=0.0)
    )
    requests = [AsrRequest(audio, language="en") for audio, _ in utterances[:3]]
    first = [engine.transcribe_blocking(r).text for r in requests]
    assert [engine.transcribe_blocking(r).text for r in requests] == first
    assert [r.text for r in engine.transcribe_batch(requests)] == [
        r.text for r in engine.transcribe_batch(requests)
    ]


class _RecordingRows(_RecordingGenerate):
    """Notes, besides each round, how many utterances each ``generate`` call decoded."""

    def __init__(self, model: object) -> None:
        super().__init__(model)
        self.rows: list[int] = []

    def generate(self, *args: object, **kwargs: object) -> object:
        prompts = args[1]
        assert isinstance(prompts, list)
        self.rows.append(len(prompts))
        return super().generate(*args, **kwargs)


def test_interims_in_a_batch_with_finals_get_no_fallback_and_leave_the_finals_as_they_were(
    utterances: list[tuple[np.ndarray, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU worker batches interims (``interim=True``: the text so far of an utterance
    being spoken) with finals. With a log-probability bar no decode clears, every final goes
    through the greedy round and the beam-search fallback; the interims beside them share the
    greedy round only, and the finals' texts are what a batch of finals alone gives."""
    engine = FasterWhisperEngine(
        AsrSettings(temperatures=(0.0,), fallback_beam_size=4, log_prob_threshold=0.0)
    )
    assert engine._decoding_rounds() == [(1, 0.0), (4, 0.0)]
    finals = [AsrRequest(audio, language="en") for audio, _ in utterances[:2]]
    # The first 60 % of two other utterances: shorter than the finals, so the batch's common
    # window is the finals' own.
    interims = [
        AsrRequest(audio[: len(audio) * 6 // 10], language="en", interim=True)
        for audio, _ in utterances[2:4]
    ]
    assert max(len(r.audio) for r in interims) < max(len(r.audio) for r in finals)
    alone = [r.text for r in engine.transcribe_batch(finals)]

    recorder = _RecordingRows(engine._model.model)
    monkeypatch.setattr(engine._model, "model", recorder)
    mixed = engine.transcribe_batch([finals[0], interims[0], finals[1], interims[1]])
    # One greedy round for all four, then the beam search for the two finals only.
    assert recorder.rounds == [(1, 0.0), (4, 0.0)]
    assert recorder.rows == [4, 2]
    assert [mixed[0].text, mixed[2].text] == alone
    # The interims read as the start of what was said.
    for result, (_, said) in zip((mixed[1], mixed[3]), utterances[2:4], strict=True):
        assert normalise(result.text) and normalise(said).startswith(
            " ".join(normalise(result.text).split()[:1])
        ), (result.text, said)
