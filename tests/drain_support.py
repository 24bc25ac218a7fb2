"""Shared by the tests of draining tasks (the Twilio gateway, the KVS readers): audio whose
speech and silences are known to the sample, and an ASR that says who transcribed."""

from __future__ import annotations

import numpy as np

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.audio import TELEPHONE_RATE


class NamingAsr:
    """Every utterance is heard as ``name`` (the reader or gateway that transcribed it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.utterances = 0

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.utterances += 1
        return AsrResult(text=self.name, audio_ms=len(request.audio) // 16)

    async def close(self) -> None:
        pass


def segments(*parts: tuple[str, float], seed: int = 1) -> np.ndarray:
    """8 kHz int16 audio: ("speech", seconds) is loud noise (distinct everywhere, so a sample
    can be traced; tests.test_endpointing.ScriptedVad hears it as speech), ("silence",
    seconds) zeros."""
    rng = np.random.default_rng(seed)
    chunks = []
    for kind, seconds in parts:
        n = int(seconds * TELEPHONE_RATE)
        if kind == "speech":
            chunks.append(rng.integers(-20000, 20000, n, dtype=np.int16))
        else:
            chunks.append(np.zeros(n, dtype=np.int16))
    return np.concatenate(chunks)
