"""How far Whisper's word timings are from where spoken digits really are, to choose the margin
of redacted recordings (``RecordingSettings.redaction_margin_ms``).

Each case is three phrases synthesised apart by espeak-ng (a prefix, the digits, a suffix) and
joined (directly, or 150 ms apart), so the digits' true extent is known; the call goes through
8 kHz μ-law as a phone call does, then Whisper decodes it with word timings, and the words of
each redacted span give its timed extent. Prints, per case, how much later Whisper's span starts
than the digits and how much earlier it ends (positive: audio the span's words miss).

    python tools/measure_word_timing.py
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from callscribe.asr.base import AsrRequest
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.audio import pcm16_to_ulaw, resample_8k_to_16k, ulaw_to_pcm16
from callscribe.config import AsrSettings
from callscribe.silencing import sensitive_word_runs

RATE = 8000
VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3")
CASES = (
    ("my card number is", "four one one one, one one one one, one one one one, one one one one"),
    ("and my pin is", "seven three nine two"),
    ("the card is", "five five five five, four four four four, three three three three, one"),
    ("sure my pin number is", "two zero four eight"),
    ("it is", "four zero one two, eight eight eight eight, eight eight eight eight, one eight"),
)
SUFFIX = "thank you"


def phrase(text: str, voice: str, directory: Path) -> np.ndarray:
    raw, out = directory / "raw.wav", directory / "8k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", "-V1", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]
        + [str(out)],
        check=True,
    )
    with wave.open(str(out)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 150)
    return pcm[loud[0] : loud[-1] + 1]


def main() -> None:
    engine = FasterWhisperEngine(AsrSettings())
    late, early, missed = [], [], 0
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for voice in VOICES:
            for pause_ms in (0, 150):
                for prefix, digits in CASES:
                    parts = [phrase(t, voice, directory) for t in (prefix, digits, SUFFIX)]
                    gap = np.zeros(pause_ms * RATE // 1000, dtype=np.int16)
                    lead = np.zeros(RATE * 3 // 10, dtype=np.int16)
                    pcm = np.concatenate([lead, parts[0], gap, parts[1], gap, parts[2], lead])
                    start = (len(lead) + len(parts[0]) + len(gap)) * 1000 / RATE
                    end = start + len(parts[1]) * 1000 / RATE
                    audio = resample_8k_to_16k(ulaw_to_pcm16(pcm16_to_ulaw(pcm)))
                    result = engine.transcribe_blocking(
                        AsrRequest(
                            audio=audio.astype(np.float32), language="en", word_timestamps=True
                        )
                    )
                    runs = sensitive_word_runs([w.text for w in result.words])
                    if not runs:
                        missed += 1
                        print(f"{voice:10s} {pause_ms:3d} ms  no span   | {result.text}")
                        continue
                    first, last = result.words[runs[0][0]], result.words[runs[-1][1]]
                    late.append(first.start_ms - start)
                    early.append(end - last.end_ms)
                    print(
                        f"{voice:10s} {pause_ms:3d} ms  starts {late[-1]:+6.0f} ms late, "
                        f"ends {early[-1]:+6.0f} ms early | {result.text}"
                    )
    for name, values in (("start late", late), ("end early", early)):
        v = np.array(values)
        print(
            f"{name}: median {np.median(v):.0f} ms, p95 {np.percentile(v, 95):.0f}, max {v.max():.0f}"
        )
    print(f"{missed} case(s) where no span was recognised at all")


if __name__ == "__main__":
    main()
