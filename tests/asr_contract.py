"""The contract every ``AsrEngine`` adapter honours (``callscribe/asr/base.py``): utterance audio
in, its words out, with the metadata the pipeline counts, safely from several tasks at once; and
an utterance it cannot transcribe is an ``AsrError``.

Subclass and provide the ``engine`` fixture, as tests/test_asr_contract.py does for each
adapter. Real speech (espeak-ng, sox) and the real Whisper base model.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from callscribe.asr.base import AsrEngine, AsrError, AsrRequest, AsrResult
from callscribe.quality import word_errors
from callscribe.textnorm import normalize
from tests.speech import SENTENCES, needs_speech_tools, padded_to, speak

SAMPLE_RATE = 16_000
VOCABULARY_SENTENCE = "I would like the Kestrel Gold plan for my Zentrova Fibre Max line please."


def audio_ms(audio: np.ndarray) -> int:
    return math.ceil(len(audio) * 1000 / SAMPLE_RATE)


def close_to(result: AsrResult, sentence: str) -> bool:
    """At most one word wrong (espeak's voice is clear; Whisper base gets these right)."""
    return word_errors(normalize(sentence), normalize(result.text)) <= 1


@needs_speech_tools
class AsrEngineContract:
    @pytest.fixture(scope="class")
    @classmethod
    def speech(cls, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
        """The sentences, padded to one length: grouped into batches in any way, each decodes
        as it does alone (one encoder window for all)."""
        directory = Path(tmp_path_factory.mktemp("speech"))
        audio = [speak(text, directory, f"s{i}") for i, text in enumerate(SENTENCES)]
        longest = max(len(a) for a in audio)
        return [padded_to(a, longest) for a in audio]

    @pytest.fixture(scope="class")
    @classmethod
    def vocabulary_speech(cls, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
        return speak(VOCABULARY_SENTENCE, Path(tmp_path_factory.mktemp("vocabulary")), "v")

    async def test_speech_becomes_its_words_with_the_pipelines_metadata(
        self, engine: AsrEngine, speech: list[np.ndarray]
    ) -> None:
        for audio, sentence in zip(speech[:2], SENTENCES[:2], strict=True):
            result = await engine.transcribe(AsrRequest(audio, language="en"))
            assert close_to(result, sentence), (result.text, sentence)
            assert result.language == "en"
            assert result.audio_ms == audio_ms(audio)
            assert result.processing_ms > 0
            assert result.queue_ms >= 0 and result.batch_size >= 1
            assert result.words == ()  # not asked for

    async def test_the_language_is_detected_when_not_given(
        self, engine: AsrEngine, speech: list[np.ndarray]
    ) -> None:
        result = await engine.transcribe(AsrRequest(speech[2], language=None))
        assert result.language == "en"
        assert close_to(result, SENTENCES[2]), result.text

    async def test_word_timings_when_asked_cover_the_text_in_order(
        self, engine: AsrEngine, speech: list[np.ndarray]
    ) -> None:
        result = await engine.transcribe(AsrRequest(speech[3], "en", word_timestamps=True))
        assert close_to(result, SENTENCES[3]), result.text
        assert normalize(" ".join(w.text for w in result.words)) == normalize(result.text)
        starts = [w.start_ms for w in result.words]
        assert starts == sorted(starts)
        # Whisper's last timestamp may round up to its 20 ms resolution.
        assert all(0 <= w.start_ms <= w.end_ms <= result.audio_ms + 20 for w in result.words)
        assert all(0.0 <= w.confidence <= 1.0 for w in result.words)

    async def test_digital_silence_is_no_words(self, engine: AsrEngine) -> None:
        silence = np.zeros(SAMPLE_RATE * 3 // 2, dtype=np.float32)
        result = await engine.transcribe(AsrRequest(silence, "en", word_timestamps=True))
        assert (result.text, result.words) == ("", ())
        assert result.audio_ms == 1500

    async def test_concurrent_requests_each_get_their_own_result(
        self, engine: AsrEngine, speech: list[np.ndarray]
    ) -> None:
        requests = [AsrRequest(audio, "en") for audio in speech[:4]]
        alone = [(await engine.transcribe(request)).text for request in requests]
        together = await asyncio.gather(*(engine.transcribe(r) for r in reversed(requests)))
        assert [r.text for r in reversed(together)] == alone
        for result, sentence in zip(reversed(together), SENTENCES[:4], strict=True):
            assert close_to(result, sentence), (result.text, sentence)

    async def test_a_language_the_model_does_not_know_is_an_asr_error(
        self, engine: AsrEngine, speech: list[np.ndarray]
    ) -> None:
        with pytest.raises(AsrError, match="'xx'"):
            await engine.transcribe(AsrRequest(speech[0], language="xx"))
        # The engine still serves afterwards.
        result = await engine.transcribe(AsrRequest(speech[1], "en"))
        assert close_to(result, SENTENCES[1]), result.text

    async def test_a_vocabulary_brings_its_terms_and_each_request_keeps_its_own(
        self, engine: AsrEngine, vocabulary_speech: np.ndarray
    ) -> None:
        """A made-up plan name Whisper base misspells ("Kestral Gold Plan") is written as the
        vocabulary spells it; utterances with other vocabularies or none, transcribed at once
        (one batch on a worker), each get what they get alone."""
        terms = ("Zentrova Fibre Max", "Kestrel Gold plan", "Siobhan")
        other = ("Orbit Mobile", "Harbour Insurance")
        plain = await engine.transcribe(AsrRequest(vocabulary_speech, "en"))
        biased = await engine.transcribe(AsrRequest(vocabulary_speech, "en", vocabulary=terms))
        assert "kestrel" not in normalize(plain.text), plain.text
        assert "kestrel gold plan" in " ".join(normalize(biased.text)), biased.text
        requests = [
            AsrRequest(vocabulary_speech, "en", vocabulary=terms),
            AsrRequest(vocabulary_speech, "en", vocabulary=other),
            AsrRequest(vocabulary_speech, "en"),
        ]
        alone = [(await engine.transcribe(r)).text for r in requests]
        together = await asyncio.gather(*(engine.transcribe(r) for r in requests))
        assert [r.text for r in together] == alone
        assert alone[0] == biased.text and alone[2] == plain.text
