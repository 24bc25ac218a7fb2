"""Cutting one participant's audio into utterances with Silero VAD.

``Endpointer`` is sans-IO: it takes 16 kHz float32 samples with their position on the call's
timeline and returns finished ``Utterance`` objects. The VAD itself is injected (``SileroVad``
in production: the ONNX model that faster-whisper ships), so the state machine is testable with
any probability source.

Latency is dominated by ``end_silence_ms``: an utterance is only finished once the speaker has
been quiet that long. ``max_utterance_ms`` bounds how long a monologue waits before it is cut.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from callscribe.audio import MODEL_RATE
from callscribe.config import EndpointingSettings

WINDOW = 512  # Silero VAD's window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees


class SpeechProbability(Protocol):
    def __call__(self, window: np.ndarray) -> float: ...

    def reset(self) -> None: ...


@functools.lru_cache(maxsize=1)
def _silero_session():  # type: ignore[no-untyped-def]
    import onnxruntime
    from faster_whisper.vad import get_assets_path

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(
        f"{get_assets_path()}/silero_vad_v6.onnx",
        providers=["CPUExecutionProvider"],
        sess_options=options,
    )


class SileroVad:
    """Streaming Silero VAD for one stream: keeps the LSTM state and the context samples."""

    def __init__(self) -> None:
        self._session = _silero_session()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        model_input = np.concatenate([self._context, window]).reshape(1, CONTEXT + WINDOW)
        prob, self._h, self._c = self._session.run(
            None, {"input": model_input, "h": self._h, "c": self._c}
        )
        self._context = window[-CONTEXT:]
        return float(prob[0])


@dataclass
class Utterance:
    start_sample: int  # 16 kHz samples from the start of the call's audio
    audio: np.ndarray = field(repr=False)
    forced_cut: bool = False  # ended by max_utterance_ms, not by silence
    # The silence after the speech that ``audio`` ends with (given to the ASR, which needs to
    # see a sentence end), not counted in the utterance's end.
    tail_samples: int = 0

    @property
    def start_ms(self) -> int:
        return self.start_sample * 1000 // MODEL_RATE

    @property
    def end_ms(self) -> int:
        return (self.start_sample + len(self.audio) - self.tail_samples) * 1000 // MODEL_RATE


@dataclass(frozen=True)
class OpenUtterance:
    """The utterance a speaker is still speaking, as far as it goes: where it starts (as its
    finished ``Utterance`` will), how much audio it holds, and how much of that was speech."""

    start_sample: int  # 16 kHz samples from the start of the call's audio
    samples: int
    speech_ms: int
    # The silence it ends with so far: the speaker has paused this long (0: speaking).
    pause_ms: int = 0

    @property
    def start_ms(self) -> int:
        return self.start_sample * 1000 // MODEL_RATE


def _ms_to_windows(ms: int) -> int:
    return max(1, int(round(ms * MODEL_RATE / 1000 / WINDOW)))


class Endpointer:
    def __init__(self, settings: EndpointingSettings, vad: SpeechProbability) -> None:
        self.settings = settings
        self._vad = vad
        self._threshold = settings.speech_threshold
        # Hysteresis: speech must drop clearly below the threshold to count as silence.
        self._silence_threshold = max(0.01, settings.speech_threshold - 0.15)
        self._end_windows = _ms_to_windows(settings.end_silence_ms)
        self._min_speech_windows = _ms_to_windows(settings.min_speech_ms)
        self._max_windows = _ms_to_windows(settings.max_utterance_ms)
        self._post_roll_windows = min(
            self._end_windows, int(settings.post_roll_ms * MODEL_RATE / 1000 / WINDOW)
        )
        self._asr_tail_windows = int(settings.asr_tail_ms * MODEL_RATE / 1000 / WINDOW)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=int(settings.pre_roll_ms * MODEL_RATE / 1000 / WINDOW)
        )
        self.reset(0)

    def reset(self, position: int) -> None:
        """Forget any audio and start afresh at ``position`` (16 kHz samples)."""
        self._vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = position  # timeline position of the first sample in _pending
        self._pre_roll.clear()
        self._speech: list[np.ndarray] = []
        self._speech_start = 0
        self._voiced_windows = 0
        self._silent_run = 0
        # The last utterance was cut by max_utterance_ms mid-speech: what follows continues it,
        # so it opens without waiting for the VAD and is kept however short it is.
        self._continuing = False

    @property
    def in_speech(self) -> bool:
        return bool(self._speech)

    @property
    def speech_started_at(self) -> int | None:
        return self._speech_start if self._speech else None

    def open_utterance(self) -> OpenUtterance | None:
        """The utterance being spoken, or None between utterances."""
        if not self._speech:
            return None
        return OpenUtterance(
            self._speech_start,
            WINDOW * len(self._speech),
            self._voiced_windows * WINDOW * 1000 // MODEL_RATE,
            self._silent_run * WINDOW * 1000 // MODEL_RATE,
        )

    def open_audio(self) -> np.ndarray:
        """The open utterance's audio so far (a copy; empty between utterances)."""
        if not self._speech:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._speech)

    def speaking(self, pause_ms: int) -> bool:
        """Inside an utterance with less than ``pause_ms`` of silence since its last speech:
        audio cut here would cut a word (right after a forced cut the speech goes on)."""
        if not self._speech:
            return self._continuing
        return self._silent_run * WINDOW < pause_ms * MODEL_RATE / 1000

    def feed(self, samples: np.ndarray) -> list[Utterance]:
        finished: list[Utterance] = []
        pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        usable = len(pending) - len(pending) % WINDOW
        for offset in range(0, usable, WINDOW):
            window = np.ascontiguousarray(pending[offset : offset + WINDOW], dtype=np.float32)
            utterance = self._step(window, self._position + offset)
            if utterance is not None:
                finished.append(utterance)
        self._pending = np.array(pending[usable:], dtype=np.float32)
        self._position += usable
        return finished

    def flush(self) -> Utterance | None:
        """End of audio (stop-streaming, hang-up): finish what is open, if it was speech."""
        pending, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        self._position += len(pending)
        if self._speech and self._silent_run == 0 and len(pending):
            self._speech.append(pending)  # speech ran up to the very end
        return self._finish(trim_windows=self._silent_run - self._post_roll_windows)

    def _step(self, window: np.ndarray, position: int) -> Utterance | None:
        prob = self._vad(window)
        if not self._speech:
            if prob < self._threshold and not self._continuing:
                self._pre_roll.append(window)
                return None
            self._speech = list(self._pre_roll)
            self._speech_start = position - WINDOW * len(self._pre_roll)
            self._pre_roll.clear()
            self._voiced_windows = 0
            self._silent_run = 0

        self._speech.append(window)
        if prob >= self._threshold:
            self._voiced_windows += 1
            self._silent_run = 0
        elif prob < self._silence_threshold:
            self._silent_run += 1
        else:
            self._silent_run = 0 if self._silent_run == 0 else self._silent_run + 1

        if self._silent_run >= self._end_windows:
            return self._finish(trim_windows=self._silent_run - self._post_roll_windows)
        if len(self._speech) >= self._max_windows:
            # A monologue: cut here and carry straight on with the next utterance.
            return self._finish(trim_windows=0, forced=True)
        return None

    def _finish(self, trim_windows: int, forced: bool = False) -> Utterance | None:
        speech, start, voiced = self._speech, self._speech_start, self._voiced_windows
        continuing, self._continuing = self._continuing, forced
        self._speech = []
        self._voiced_windows = 0
        self._silent_run = 0
        tail: list[np.ndarray] = []
        if trim_windows > 0 and speech:
            trim_windows = min(trim_windows, len(speech) - 1)
            # The trailing silence is the next utterance's pre-roll; the ASR sees some of it.
            trailing = speech[len(speech) - trim_windows :]
            self._pre_roll.extend(trailing)
            tail = trailing[: self._asr_tail_windows]
            speech = speech[: len(speech) - trim_windows]
        if not speech or voiced == 0 or (voiced < self._min_speech_windows and not continuing):
            self._pre_roll.extend(speech)  # a click: at most context for what follows
            return None
        return Utterance(
            start_sample=start,
            audio=np.concatenate(speech + tail),
            forced_cut=forced,
            tail_samples=WINDOW * len(tail),
        )
