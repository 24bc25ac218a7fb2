"""Telephone audio helpers: G.711 μ-law / A-law and 8 kHz → 16 kHz resampling.

Everything downstream of ingest works on 16-bit PCM at 8 kHz per participant (what the stop
summary counts); the endpointer and Whisper want float32 at 16 kHz, which ``Upsampler`` makes
chunk by chunk without seams (soxr keeps filter state between calls).
"""

from __future__ import annotations

import numpy as np
import soxr

TELEPHONE_RATE = 8_000
MODEL_RATE = 16_000
PCM_BYTES_PER_SAMPLE = 2


def _ulaw_table() -> np.ndarray:
    # ITU-T G.711 μ-law expansion, computed once for all 256 codes.
    codes = ~np.arange(256, dtype=np.uint8)
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    values = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return values.astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = (codes & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    values = np.where(sign != 0, magnitude, -magnitude)
    return values.astype(np.int16)


ULAW_TO_PCM16 = _ulaw_table()
ALAW_TO_PCM16 = _alaw_table()


def ulaw_to_pcm16(data: bytes) -> np.ndarray:
    return ULAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)]


def alaw_to_pcm16(data: bytes) -> np.ndarray:
    return ALAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)]


def pcm16_to_ulaw(samples: np.ndarray) -> bytes:
    """G.711 μ-law encoding (used by the simulated Twilio caller and tests)."""
    pcm = samples.astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


class Upsampler:
    """Streaming 8 kHz int16 → 16 kHz float32 resampler for one audio stream."""

    def __init__(self) -> None:
        self._stream = soxr.ResampleStream(TELEPHONE_RATE, MODEL_RATE, 1, dtype="float32")

    def process(self, pcm16: np.ndarray, last: bool = False) -> np.ndarray:
        floats = pcm16.astype(np.float32) / 32768.0
        return self._stream.resample_chunk(floats, last=last)

    def drain(self) -> np.ndarray:
        """What the filter still holds of the audio given so far (its delay, a few ms): the end
        of the stream. The resampler takes nothing more after it."""
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def resample_8k_to_16k(pcm16: np.ndarray) -> np.ndarray:
    return soxr.resample(pcm16.astype(np.float32) / 32768.0, TELEPHONE_RATE, MODEL_RATE)
