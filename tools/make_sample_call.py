#!/usr/bin/env python3
"""Generate a simulated two-party Twilio contact-centre call for tests and demos.

The call is synthesized with text-to-speech, band-limited to telephone audio and written as the
two tracks a Twilio Media Stream delivers, 8 kHz mono G.711 mu-law:

* ``inbound.ulaw``  - the caller's side (Twilio's "inbound" track);
* ``outbound.ulaw`` - what is played to the caller (Twilio's "outbound" track): the IVR prompts,
  the hold music and the agent's voice;
* ``timeline.json`` - every sound on either track with its start/end measured from the encoded
  audio, its exact words, whether it falls in a window where transcription is on, and the
  start/stop controls that open and close those windows.

Story: IVR greeting and menu (transcription off), the agent joins (start), a few turns, the agent
puts the caller on hold (stop) over ~9 s of hold music, then (start) more turns in which the caller
says a PIN and an account-type detail, the agent closes, and a final stop.

Voices: IVR = espeak-ng ``en-us``; agent = festival ``voice_cmu_us_slt_arctic_hts``;
caller = festival ``voice_kal_diphone``. Hold music = ``sox synth`` plucked notes over sine chords.

Each clip is trimmed of leading/trailing silence, band-limited (highpass 300 Hz, lowpass 3400 Hz),
resampled to 8000 Hz and levelled (active-speech RMS about -19 dBFS, peak at most -3 dBFS) with
sox and numpy, placed on its track in 16-bit PCM, and the tracks are encoded to mu-law with a
numpy G.711 encoder whose output is checked by decoding it with both numpy and sox. sox runs with
``-R`` (repeatable random numbers) and ``-D`` (no dither), so every run gives the same bytes.

Run it with any Python that has numpy (its only Python dependency), e.g. from the repository root::

    .venv/bin/python tools/make_sample_call.py                  # callscribe/samples/twilio_call/
    .venv/bin/python tools/make_sample_call.py --out /tmp/call  # somewhere else

Needs these Debian packages (``apt-get install -y ...``)::

    sox espeak-ng festival festvox-us-slt-hts festvox-kallpc16k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

RATE = 8000
SAMPLES_PER_MS = RATE // 1000
FRAME_SAMPLES = 160  # one 20 ms Twilio media frame
ULAW_SILENCE = 0xFF

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "callscribe" / "samples" / "twilio_call"

CUSTOMER_ID = "TT9833237"
AGENT_ID = "RE223444211993"

# Levelling: each speech clip's active-speech RMS goes to TARGET_RMS_DBFS unless that would push
# its peak above PEAK_CAP_DBFS. The hold music is quieter (MUSIC_PEAK_DBFS peak).
TARGET_RMS_DBFS = -19.0
PEAK_CAP_DBFS = -3.0
MUSIC_PEAK_DBFS = -13.0
# A sample at or above this level counts as sound when measuring segment start/end.
SOUND_THRESHOLD_DBFS = -50.0

SOX = ["sox", "-R", "-D", "-V1"]  # repeatable random numbers, no dither, errors only

VOICES = {
    # speaker: (engine, voice, track, kind)
    "ivr": ("espeak-ng", "en-us", "outbound", "ivr"),
    "agent": ("festival", "voice_cmu_us_slt_arctic_hts", "outbound", "agent"),
    "customer": ("festival", "voice_kal_diphone", "inbound", "customer"),
}
ESPEAK_SPEED_WPM = 160

REQUIRED_TOOLS = {
    "sox": "sox",
    "espeak-ng": "espeak-ng",
    "text2wave": "festival (plus festvox-us-slt-hts and festvox-kallpc16k for the voices)",
}


@dataclass
class Clip:
    track: str
    kind: str
    text: str
    start: int  # sample index on the track
    audio: np.ndarray  # float32 in [-1, 1] at RATE
    contains_pin: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


# --------------------------------------------------------------------------------------------
# External tools


def check_tools() -> None:
    missing = [
        f"{exe} (Debian package: {pkg})"
        for exe, pkg in REQUIRED_TOOLS.items()
        if not shutil.which(exe)
    ]
    if missing:
        sys.exit(
            "make_sample_call.py: missing required tools:\n  "
            + "\n  ".join(missing)
            + "\nInstall them with: apt-get install -y "
            + "sox espeak-ng festival festvox-us-slt-hts festvox-kallpc16k"
        )


def run(cmd: list[str], *, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        sys.exit(
            f"make_sample_call.py: command failed ({proc.returncode}): {' '.join(cmd)}\n"
            + proc.stderr.decode(errors="replace")
        )
    return proc.stdout


def sox_to_f32(args: list[str]) -> np.ndarray:
    """Run a sox command that writes raw float32 samples to stdout; return them."""
    raw = run(args)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def synthesize(
    speaker: str,
    text: str,
    workdir: Path,
    index: int,
    *,
    voice: tuple[str, str] | None = None,
    rate: float | None = None,
    pitch: int | None = None,
    target_rms_dbfs: float = TARGET_RMS_DBFS,
) -> np.ndarray:
    """Speak ``text``, trim, band-limit to 300-3400 Hz at 8 kHz and level it.

    By default the speaker's voice from ``VOICES`` at the defaults above. Optionally ``voice``
    (engine, name) replaces it; ``rate`` is espeak-ng's words per minute (``-s``) or festival's
    Duration_Stretch (above 1 is slower; the HTS voice gets hts_engine's speed ``-r`` = 1/rate);
    ``pitch`` is espeak-ng's ``-p`` (0-99); ``target_rms_dbfs`` the active-speech level.
    """
    engine, name = voice if voice is not None else VOICES[speaker][:2]
    wav = workdir / f"{index:02d}_{speaker}.wav"
    if engine == "espeak-ng":
        speed = str(round(rate)) if rate is not None else str(ESPEAK_SPEED_WPM)
        extra = ["-p", str(pitch)] if pitch is not None else []
        run(["espeak-ng", "-v", name, "-s", speed, *extra, "-w", str(wav), text])
    else:
        evals = ["-eval", f"({name})"]
        if rate is not None and name.endswith("_hts"):
            speed = f'(list (list "-r" {1 / rate:.4f}))'
            evals += ["-eval", f"(set! hts_engine_params (append hts_engine_params {speed}))"]
        elif rate is not None:
            evals += ["-eval", f"(Parameter.set 'Duration_Stretch {rate})"]
        run(["text2wave", *evals, "-o", str(wav)], stdin=text.encode() + b"\n")
    audio = sox_to_f32(
        SOX
        + [str(wav), "-t", "f32", "-r", str(RATE), "-c", "1", "-"]
        + ["remix", "-"]
        + ["silence", "1", "0.05", "0.5%", "reverse", "silence", "1", "0.05", "0.5%", "reverse"]
        + ["highpass", "300", "lowpass", "3400", "rate", "-v", str(RATE), "norm", "-3"]
    )
    if len(audio) < RATE // 4:
        sys.exit(f"make_sample_call.py: TTS produced almost no audio for {speaker}: {text!r}")
    return level_speech(audio, target_rms_dbfs)


def level_speech(audio: np.ndarray, target_rms_dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    frame_rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    active = frame_rms[frame_rms > 10 ** (-40 / 20)]
    rms = float(np.sqrt(np.mean(active**2))) if len(active) else float(np.sqrt(np.mean(audio**2)))
    peak = float(np.max(np.abs(audio)))
    gain = min(10 ** (target_rms_dbfs / 20) / rms, 10 ** (PEAK_CAP_DBFS / 20) / peak)
    return (audio * gain).astype(np.float32)


# Hold music: a gentle C-major tune, plucked melody over soft sine chords, 4 bars of 4 beats.
BEAT_S = 0.5
MELODY = [  # (note, beats)
    ("E5", 1),
    ("G5", 1),
    ("C6", 1),
    ("G5", 1),
    ("F5", 1),
    ("A5", 1),
    ("C6", 1),
    ("A5", 1),
    ("D5", 1),
    ("G5", 1),
    ("B5", 1),
    ("G5", 1),
    ("C5", 1),
    ("E5", 1),
    ("G5", 1),
    ("C6", 2),
]
CHORDS = [
    ("C4", "E4", "G4"),
    ("F4", "A4", "C5"),
    ("G4", "B4", "D5"),
    ("C4", "E4", "G4"),
    ("C4", "E4", "G4"),
]
CHORD_BEATS = [4, 4, 4, 4, 1]


def chained_synth(parts: list[list[str]]) -> list[str]:
    """sox effect chains separated by ':' play one after another."""
    out: list[str] = []
    for i, part in enumerate(parts):
        if i:
            out.append(":")
        out += part
    return out


def hold_music() -> np.ndarray:
    out_spec = ["-n", "-t", "f32", "-r", str(RATE), "-c", "1", "-"]
    melody_parts = []
    for note, beats in MELODY:
        dur = beats * BEAT_S
        melody_parts.append(
            ["synth", f"{dur}", "pluck", note, "fade", "q", "0.005", f"{dur}", f"{dur * 0.6:.3f}"]
        )
    melody = sox_to_f32(SOX + out_spec + chained_synth(melody_parts))
    chord_parts = []
    for chord, beats in zip(CHORDS, CHORD_BEATS, strict=True):
        dur = beats * BEAT_S
        part = ["synth", f"{dur}"]
        for note in chord:
            part += ["sine", note]
        part += ["remix", "-", "fade", "h", "0.08", f"{dur}", "0.4"]
        chord_parts.append(part)
    # no -c on the output: synth makes one channel per tone and remix folds them to mono
    chords = sox_to_f32(
        SOX + ["-n", "-t", "f32", "-r", str(RATE), "-"] + chained_synth(chord_parts)
    )
    n = min(len(melody), len(chords))
    mix = melody[:n] / np.max(np.abs(melody)) + 0.35 * chords[:n] / np.max(np.abs(chords))
    # band-limit like the speech, and level
    raw = ["-t", "f32", "-r", str(RATE), "-c", "1"]
    with tempfile.NamedTemporaryFile(suffix=".f32") as tmp:
        tmp.write(mix.astype("<f4").tobytes())
        tmp.flush()
        return sox_to_f32(
            SOX
            + [*raw, tmp.name, *raw, "-"]
            + ["highpass", "300", "lowpass", "3400", "norm", f"{MUSIC_PEAK_DBFS}"]
        )


# --------------------------------------------------------------------------------------------
# G.711 mu-law

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_EXP_LUT = np.array([0] + [int(math.log2(i)) for i in range(1, 256)], dtype=np.int32)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    exponent = _EXP_LUT[(mag >> 7) & 0xFF]
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


# --------------------------------------------------------------------------------------------
# The call


def at_ms(t_ms: int) -> int:
    return t_ms * SAMPLES_PER_MS


def build_call(workdir: Path) -> tuple[list[Clip], list[dict], int]:
    clips: list[Clip] = []
    controls: list[dict] = []
    t = 500  # ms cursor: where the next sound starts

    def say(speaker: str, text: str, *, pin: bool = False) -> int:
        """Place a line at t; return its end in ms (rounded up)."""
        _, _, track, kind = VOICES[speaker]
        audio = synthesize(speaker, text, workdir, len(clips))
        clip = Clip(track, kind, text, at_ms(t), audio, pin)
        clips.append(clip)
        return -(-clip.end // SAMPLES_PER_MS)

    def control(action: str, t_ms: int) -> None:
        controls.append({"atMs": t_ms, "action": action})

    # 1. IVR prelude: transcription off.
    t = say("ivr", "Thank you for calling Acme Streaming.") + 1000
    t = say("ivr", "For billing, say billing or press one. For technical support, press two.") + 900
    t = say("customer", "Billing, please.") + 900
    t = say("ivr", "Please wait while we connect you to an agent.") + 1500

    # 2. The agent joins: start ~0.5 s before the first line; turns 0.7-1.2 s apart.
    control("start", t)
    t += 500
    conversation = [
        ("agent", "Hello, this is Sarah from Acme Streaming. How can I help you today?", 900),
        ("customer", "Hi, I need help upgrading my streaming package.", 1000),
        ("agent", "Sure, I can help with that. Which package would you like?", 800),
        ("customer", "I would like the premium package, please.", 900),
    ]
    for speaker, text, gap in conversation:
        t = say(speaker, text) + gap

    # 3. Hold: stop ~1 s after the hold line, ~9 s of music, ~1 s gap, start, 0.5 s, agent.
    t = say("agent", "Great choice. Let me put you on hold for a moment.")
    control("stop", t + 1000)
    t += 1500
    music = hold_music()
    clips.append(Clip("outbound", "music", "", at_ms(t), music))
    t = -(-clips[-1].end // SAMPLES_PER_MS) + 1000
    control("start", t)
    t += 500

    # 4. After the hold.
    conversation = [
        ("agent", "Thanks for holding. Can you please tell me your PIN number?", 1000, False),
        ("customer", "My PIN number is four seven two nine.", 900, True),
        ("agent", "Thank you. And what type of account do you have?", 800, False),
        ("customer", "I have a family account with four screens.", 1000, False),
        ("agent", "Your package has been upgraded. Is there anything else?", 900, False),
        ("customer", "No, that is all for today. Thank you very much.", 800, False),
        ("agent", "Thank you for calling. Have a great day.", 0, False),
    ]
    for speaker, text, gap, pin in conversation:
        t = say(speaker, text, pin=pin) + gap

    # 5. Final stop ~1 s after the last line, then ~1 s of silence; whole 20 ms frames.
    control("stop", t + 1000)
    total = at_ms(t + 2000)
    total = -(-total // FRAME_SAMPLES) * FRAME_SAMPLES
    return clips, controls, total


def render(clips: list[Clip], total: int) -> dict[str, np.ndarray]:
    tracks = {"inbound": np.zeros(total, np.float64), "outbound": np.zeros(total, np.float64)}
    for clip in clips:
        if clip.end > total:
            sys.exit("make_sample_call.py: a clip runs past the end of the call")
        tracks[clip.track][clip.start : clip.end] += clip.audio
    return {
        name: np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
        for name, x in tracks.items()
    }


def measure(clip: Clip, decoded: np.ndarray) -> tuple[int, int]:
    """Start/end in ms of the clip's sound as found in the decoded track."""
    region = np.abs(decoded[clip.start : clip.end].astype(np.int32))
    loud = np.flatnonzero(region >= 32768 * 10 ** (SOUND_THRESHOLD_DBFS / 20))
    if len(loud) == 0:
        sys.exit(f"make_sample_call.py: no sound found for segment {clip.text!r}")
    first = clip.start + int(loud[0])
    last = clip.start + int(loud[-1])
    return first // SAMPLES_PER_MS, -(-(last + 1) // SAMPLES_PER_MS)


def windows(controls: list[dict]) -> list[tuple[int, int]]:
    out, opened = [], None
    for c in controls:
        if c["action"] == "start" and opened is None:
            opened = c["atMs"]
        elif c["action"] == "stop" and opened is not None:
            out.append((opened, c["atMs"]))
            opened = None
    return out


def validate(segments: list[dict], controls: list[dict], duration_ms: int) -> list[str]:
    problems: list[str] = []
    if not 60_000 <= duration_ms <= 80_000:
        problems.append(f"call lasts {duration_ms} ms, outside 60-80 s")
    wins = windows(controls)
    # never any overlap between the two tracks (with a 300 ms margin)
    inbound = [s for s in segments if s["track"] == "inbound"]
    outbound = [s for s in segments if s["track"] == "outbound"]
    for a in inbound:
        for b in outbound:
            if a["startMs"] < b["endMs"] + 300 and b["startMs"] < a["endMs"] + 300:
                problems.append(f"overlap: {a['text']!r} / {b['text'] or 'music'!r}")
    for track in ("inbound", "outbound"):
        own = [s for s in segments if s["track"] == track]
        for a, b in pairwise(own):
            if b["startMs"] - a["endMs"] < 1000:
                problems.append(
                    f"{track}: only {b['startMs'] - a['endMs']} ms between "
                    f"{a['text']!r} and {b['text']!r}"
                )
    for s in segments:
        length = s["endMs"] - s["startMs"]
        if s["transcribed"] and not 1500 <= length <= 5000:
            problems.append(f"line lasts {length} ms: {s['text']!r}")
        if s["kind"] == "music" and not 8000 <= length <= 10_000:
            problems.append(f"music lasts {length} ms")
        straddles = any(
            w0 < s["endMs"] and s["startMs"] < w1 and not (w0 <= s["startMs"] and s["endMs"] <= w1)
            for w0, w1 in wins
        )
        if straddles:
            problems.append(f"segment straddles a control: {s['text']!r}")
    speech = [s for s in segments if s["kind"] != "music"]
    for a, b in pairwise(speech):
        if a["transcribed"] and b["transcribed"] and a["track"] != b["track"]:
            same_window = any(w0 <= a["startMs"] and b["endMs"] <= w1 for w0, w1 in wins)
            gap = b["startMs"] - a["endMs"]
            if same_window and not 700 <= gap <= 1200:
                problems.append(f"turn gap {gap} ms before {b['text']!r}")
    return problems


def encode_tracks(
    tracks: dict[str, np.ndarray],
) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Encode each 16-bit track to mu-law; return the bytes and their decoded samples.

    Verifies the encoding: numpy and sox decode it identically, close to the PCM it came from,
    and each track starts with a frame of mu-law silence."""
    encoded = {name: ulaw_encode(pcm) for name, pcm in tracks.items()}
    decoded = {}
    for name, data in encoded.items():
        mine = ulaw_decode(data)
        theirs = np.frombuffer(
            run(SOX + ["-t", "ul", "-r", str(RATE), "-c", "1", "-", "-t", "s16", "-"], stdin=data),
            dtype="<i2",
        )
        if not np.array_equal(mine, theirs):
            sys.exit(
                f"make_sample_call.py: sox decodes {name} differently from the numpy G.711 decoder"
            )
        err = np.abs(mine.astype(np.int32) - tracks[name].astype(np.int32))
        bound = np.maximum(16, np.abs(tracks[name].astype(np.int32)) // 16)  # half a mu-law step
        if np.any(err > bound):
            sys.exit(
                f"make_sample_call.py: mu-law round trip of {name} is off by up to {err.max()}"
            )
        if data[:FRAME_SAMPLES] != bytes([ULAW_SILENCE]) * FRAME_SAMPLES:
            sys.exit(f"make_sample_call.py: {name} does not start with mu-law silence (0xFF)")
        decoded[name] = mine
    return encoded, decoded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory (default: callscribe/samples/twilio_call in this repository)",
    )
    args = parser.parse_args(argv)
    check_tools()

    with tempfile.TemporaryDirectory(prefix="callscribe-call-") as tmp:
        clips, controls, total = build_call(Path(tmp))
    tracks = render(clips, total)
    encoded, decoded = encode_tracks(tracks)

    duration_ms = total // SAMPLES_PER_MS
    wins = windows(controls)
    segments = []
    for clip in sorted(clips, key=lambda c: c.start):
        start_ms, end_ms = measure(clip, decoded[clip.track])
        segments.append(
            {
                "track": clip.track,
                "kind": clip.kind,
                "startMs": start_ms,
                "endMs": end_ms,
                "text": clip.text,
                "transcribed": any(w0 <= start_ms and end_ms <= w1 for w0, w1 in wins),
                "containsPin": clip.contains_pin,
            }
        )
    for c in controls:
        print(f"{c['atMs']:>6} ms  control {c['action']}")
    for seg in segments:
        flags = ("T" if seg["transcribed"] else "-") + ("P" if seg["containsPin"] else "-")
        print(
            f"{seg['startMs']:>6}-{seg['endMs']:>6} ms  {flags}  "
            f"{seg['track']:<8} {seg['kind']:<8} {seg['text']}"
        )
    problems = validate(segments, controls, duration_ms)
    if problems:
        sys.exit(
            "make_sample_call.py: the generated call breaks its own rules:\n  "
            + "\n  ".join(problems)
        )

    timeline = {
        "sampleRate": RATE,
        "encoding": "audio/x-mulaw",
        "durationMs": duration_ms,
        "customerId": CUSTOMER_ID,
        "agentId": AGENT_ID,
        "controls": controls,
        "segments": segments,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in encoded.items():
        (args.out / f"{name}.ulaw").write_bytes(data)
    (args.out / "timeline.json").write_text(json.dumps(timeline, indent=2) + "\n")

    print(f"wrote {args.out}: {duration_ms} ms, {len(segments)} segments, {len(controls)} controls")
    for name, data in encoded.items():
        print(f"  {name}.ulaw  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
