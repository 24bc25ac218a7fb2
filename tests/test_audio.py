"""G.711 decoding checked against sox, μ-law encoding, and seamless 8 → 16 kHz resampling."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from callscribe.audio import (
    ALAW_TO_PCM16,
    MODEL_RATE,
    TELEPHONE_RATE,
    ULAW_TO_PCM16,
    Upsampler,
    alaw_to_pcm16,
    pcm16_to_ulaw,
    resample_8k_to_16k,
    ulaw_to_pcm16,
)

needs_sox = pytest.mark.usefixtures("sox_tool")  # fails, never skips, where sox is missing

ALL_CODES = bytes(range(256))
SOX_ENCODING = {"ulaw": "mu-law", "alaw": "a-law"}
DECODERS = {"ulaw": ulaw_to_pcm16, "alaw": alaw_to_pcm16}


def sox(*args: str | Path) -> None:
    subprocess.run(["sox", "-V1", *map(str, args)], check=True, capture_output=True)


def sox_decode(g711: bytes, law: str, tmp_path: Path) -> np.ndarray:
    """Have sox expand raw G.711 bytes to 16-bit signed little-endian PCM."""
    src, dst = tmp_path / f"in.{law}", tmp_path / f"out.{law}.s16"
    src.write_bytes(g711)
    sox(
        "-t",
        "raw",
        "-r",
        "8000",
        "-e",
        SOX_ENCODING[law],
        "-b",
        "8",
        "-c",
        "1",
        src,
        "-t",
        "raw",
        "-e",
        "signed-integer",
        "-b",
        "16",
        "-L",
        "-c",
        "1",
        dst,
    )
    return np.fromfile(dst, dtype="<i2")


def sox_synth(law: str, tmp_path: Path) -> bytes:
    """G.711 bytes made by sox itself: a loud sweep, a quiet tone and noise (every segment)."""
    out = tmp_path / f"synth.{law}"
    sox(
        "-n",
        "-t",
        "raw",
        "-r",
        "8000",
        "-e",
        SOX_ENCODING[law],
        "-b",
        "8",
        "-c",
        "1",
        out,
        "synth",
        "0.5",
        "sine",
        "100-3800",
        "synth",
        "0.5",
        "sine",
        "mix",
        "440",
        "synth",
        "0.5",
        "whitenoise",
        "vol",
        "0.3",
        ":",
        "synth",
        "0.5",
        "sine",
        "1000",
        "vol",
        "0.002",
        ":",
        "synth",
        "0.25",
        "whitenoise",
        "vol",
        "0.9",
    )
    return out.read_bytes()


# --------------------------------------------------------------------------- decoding vs sox


@needs_sox
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_every_code_decodes_like_sox(law: str, tmp_path: Path) -> None:
    ours = DECODERS[law](ALL_CODES)
    theirs = sox_decode(ALL_CODES, law, tmp_path)
    assert ours.dtype == np.int16
    assert len(theirs) == 256
    np.testing.assert_array_equal(ours, theirs)


@needs_sox
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_sox_generated_audio_decodes_like_sox(law: str, tmp_path: Path) -> None:
    g711 = sox_synth(law, tmp_path)
    assert len(g711) >= 8000  # at least a second of audio at 8 kHz
    assert len(set(g711)) > 200  # the signal exercises most codes
    ours = DECODERS[law](g711)
    theirs = sox_decode(g711, law, tmp_path)
    assert len(ours) == len(theirs) == len(g711)
    np.testing.assert_array_equal(ours, theirs)


def test_decoding_tables_are_odd_symmetric_and_monotonic() -> None:
    # μ-law: codes 0x00-0x7F negative, 0x80-0xFF positive, mirror images of each other.
    np.testing.assert_array_equal(ULAW_TO_PCM16[:128], -ULAW_TO_PCM16[128:])
    assert ULAW_TO_PCM16[0x80] == 32124 and ULAW_TO_PCM16[0x00] == -32124
    assert ULAW_TO_PCM16[0xFF] == 0 and ULAW_TO_PCM16[0x7F] == 0
    assert np.all(np.diff(ULAW_TO_PCM16[128:].astype(int)) < 0)  # 0x80 loudest → 0xFF zero
    # A-law (even bits inverted): the sign bit set means positive.
    np.testing.assert_array_equal(ALAW_TO_PCM16[:128], -ALAW_TO_PCM16[128:])
    assert ALAW_TO_PCM16[0xD5] == 8 and ALAW_TO_PCM16[0x55] == -8
    assert ALAW_TO_PCM16[0xAA] == 32256


def test_decoding_empty_and_length() -> None:
    assert len(ulaw_to_pcm16(b"")) == 0
    assert len(alaw_to_pcm16(b"")) == 0
    assert len(ulaw_to_pcm16(bytes(160))) == 160


# --------------------------------------------------------------------------- μ-law encoding


def _local_step(values: np.ndarray) -> np.ndarray:
    """The quantisation step of μ-law around each value: the gap between the two decoded
    levels that bracket it (the outermost gap beyond the largest level)."""
    levels = np.unique(ULAW_TO_PCM16.astype(np.int64))
    gaps = np.diff(levels)
    index = np.clip(np.searchsorted(levels, values) - 1, 0, len(gaps) - 1)
    return gaps[index]


def test_pcm16_to_ulaw_round_trips_within_one_step_for_every_int16() -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    encoded = pcm16_to_ulaw(x.astype(np.int16))
    assert isinstance(encoded, bytes) and len(encoded) == len(x)
    decoded = ulaw_to_pcm16(encoded).astype(np.int64)
    error = np.abs(decoded - x)
    assert np.all(error <= _local_step(x)), x[error > _local_step(x)][:10]
    # Small signals are resolved finely (the point of companding).
    small = np.abs(x) < 100
    assert error[small].max() <= 4


def test_pcm16_to_ulaw_inverts_the_decoder() -> None:
    codes = np.array([c for c in range(256) if c != 0x7F], dtype=np.uint8)  # 0x7F is "-0"
    assert pcm16_to_ulaw(ULAW_TO_PCM16[codes]) == codes.tobytes()
    assert pcm16_to_ulaw(np.array([0], dtype=np.int16)) == b"\xff"


def test_pcm16_to_ulaw_is_monotonic_and_sign_correct() -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    decoded = ulaw_to_pcm16(pcm16_to_ulaw(x)).astype(int)
    assert np.all(np.diff(decoded) >= 0)
    assert np.all(np.sign(decoded[np.abs(x) > 8]) == np.sign(x[np.abs(x) > 8]))


# --------------------------------------------------------------------------- resampling


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * TELEPHONE_RATE)) / TELEPHONE_RATE
    signal = 8000 * np.sin(2 * np.pi * 300 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    signal += rng.normal(0, 2000, len(t))
    return np.clip(signal, -32768, 32767).astype(np.int16)


def _chunked(pcm16: np.ndarray, sizes: list[int], last_on_data: bool) -> np.ndarray:
    up = Upsampler()
    out, i, k = [], 0, 0
    while i < len(pcm16):
        n = sizes[k % len(sizes)]
        k += 1
        chunk = pcm16[i : i + n]
        i += n
        out.append(up.process(chunk, last=last_on_data and i >= len(pcm16)))
    if not last_on_data:
        out.append(up.process(np.zeros(0, dtype=np.int16), last=True))
    for part in out:
        assert part.dtype == np.float32
    return np.concatenate(out)


@pytest.mark.parametrize(
    "sizes",
    [[160], [1], [7], [160, 1, 333, 4096], [16_000]],
    ids=["twilio-frames", "one-sample", "seven", "mixed", "one-shot"],
)
@pytest.mark.parametrize("last_on_data", [False, True], ids=["empty-last", "last-on-data"])
def test_upsampler_chunked_equals_one_shot(sizes: list[int], last_on_data: bool) -> None:
    pcm16 = _speechlike(1.0)
    reference = resample_8k_to_16k(pcm16)
    streamed = _chunked(pcm16, sizes, last_on_data)
    assert len(reference) == 2 * len(pcm16)
    assert len(streamed) == len(reference)
    np.testing.assert_allclose(streamed, reference, atol=1e-5, rtol=0)


def test_upsampler_streams_are_independent() -> None:
    a, b = _speechlike(0.5, seed=1), _speechlike(0.5, seed=2)
    ua, ub = Upsampler(), Upsampler()
    out_a, out_b = [], []
    for i in range(0, len(a), 160):  # interleaved, as two participants of one call
        out_a.append(ua.process(a[i : i + 160]))
        out_b.append(ub.process(b[i : i + 160]))
    out_a.append(ua.process(np.zeros(0, np.int16), last=True))
    out_b.append(ub.process(np.zeros(0, np.int16), last=True))
    np.testing.assert_allclose(np.concatenate(out_a), resample_8k_to_16k(a), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.concatenate(out_b), resample_8k_to_16k(b), atol=1e-5, rtol=0)


def test_resample_scale_and_frequency() -> None:
    t = np.arange(TELEPHONE_RATE) / TELEPHONE_RATE
    tone = (16384 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)  # half scale, 1 kHz
    out = resample_8k_to_16k(tone)
    assert out.dtype == np.float32
    assert len(out) == MODEL_RATE
    middle = out[1000:-1000]
    assert np.max(np.abs(middle)) == pytest.approx(0.5, abs=0.01)  # int16 / 32768
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * MODEL_RATE / len(out)
    assert peak_hz == pytest.approx(1000, abs=2)
    # Nothing above the 4 kHz telephone band is created (no imaging).
    freqs = np.fft.rfftfreq(len(out), 1 / MODEL_RATE)
    assert spectrum[freqs > 4500].max() < 1e-3 * spectrum.max()
