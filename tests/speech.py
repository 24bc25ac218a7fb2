"""Real speech for ASR tests: espeak-ng sentences, resampled by sox to 16 kHz 16-bit mono."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

# Fails (never skips) where espeak-ng or sox is missing: see the fixture in conftest.py.
needs_speech_tools = pytest.mark.usefixtures("speech_tools")

SENTENCES = (
    "I would like to change the delivery address on my order.",
    "Sure, I can help you with that today.",
    "Can you hold on for a moment while I check the system?",
    "The package was supposed to arrive last Tuesday but it never came.",
    "I need help upgrading my streaming package to the premium plan.",
)


def speak(text: str, directory: Path, name: str) -> np.ndarray:
    """``text`` as float32 samples at 16 kHz (exactly representable as 16-bit PCM)."""
    raw, wav16 = directory / f"{name}.raw.wav", directory / f"{name}.16k.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "sox",
            "-V1",
            str(raw),
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            str(wav16),
        ],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav16)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def padded_to(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trailing silence up to ``samples``: utterances of one length get one encoder context,
    so a batch of them must decode exactly as each does alone."""
    assert len(audio) <= samples
    return np.concatenate([audio, np.zeros(samples - len(audio), dtype=np.float32)])
