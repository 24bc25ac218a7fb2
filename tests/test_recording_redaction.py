"""Redacted recordings: the audio of every redacted span is silence in the speaker's channel of
the stored WAV (``silencing.py``, ``CallRecorder``, ``TranscriptionPipeline``), everything else
sample for sample as it was; calls that ask only for unredacted output keep their audio.

Sans-IO mapping and the recorder first, then the pipeline with a scripted engine (the fail-safe
paths), then a real call: espeak-ng speech of a card number and a PIN in two voices, through a
real server and a simulated Twilio stream, whose stored WAV the real Whisper model transcribes
again offline."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from callscribe.asr.base import AsrError, AsrRequest, AsrResult, AsrWord
from callscribe.blobs.base import BlobInfo
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.config import RecordingSettings
from callscribe.model import AutotranscribeParams, RedactionOutput, Role
from callscribe.recording import Recordings, recording_info
from callscribe.silencing import (
    SampleRange,
    locate,
    masked_units,
    sensitive_word_runs,
    silences_recording,
    utterance_range,
)
from callscribe.store.base import CallKey

KEY = CallKey("acme", "twilio", "CA-redacted")
RATE = 8000


@pytest.fixture
def blobs(tmp_path: Path) -> DirectoryBlobStore:
    return DirectoryBlobStore(tmp_path / "blobs", BlobLinkSigner("k"))


@pytest.fixture
def recordings(blobs: DirectoryBlobStore, tmp_path: Path) -> Recordings:
    return Recordings(blobs, tmp_path / "spool", retention_s=7 * 86400)


def words(*timed: tuple[str, int, int]) -> tuple[AsrWord, ...]:
    return tuple(AsrWord(text, start, end, 0.9) for text, start, end in timed)


# --------------------------------------------------------------------------- which modes


def test_every_mode_with_a_redacted_output_silences_and_unredacted_alone_does_not() -> None:
    assert silences_recording(RedactionOutput.REDACTED)
    assert silences_recording(RedactionOutput.BOTH)
    assert not silences_recording(RedactionOutput.UNREDACTED)


# --------------------------------------------------------------------------- span → samples


CARD_WORDS = words(
    ("My", 0, 200),
    ("card", 200, 500),
    ("number", 500, 800),
    ("is", 800, 1000),
    ("4111", 1100, 2000),
    ("1111", 2000, 2900),
    ("1111", 2900, 3800),
    ("1111.", 3800, 4700),
    ("Thanks.", 5000, 5500),
)


def test_a_span_maps_to_its_words_times_plus_the_margin_on_the_call_timeline() -> None:
    # The utterance starts 10 s into the call (16 kHz samples) and holds 6 s of audio.
    utterance = utterance_range(10 * 16000, 6 * 16000)
    assert utterance == SampleRange(80_000, 128_000)
    text = "My card number is 4111 1111 1111 1111. Thanks."
    ranges = locate(text, CARD_WORDS, utterance, margin_ms=300)
    # From just after the cue word "number" ("is", 800 ms) to the last digit (4700 ms).
    assert ranges == [SampleRange(80_000 + (800 - 300) * 8, 80_000 + (4700 + 300) * 8)]


def test_the_margin_after_a_span_may_be_longer() -> None:
    timed = words(("PIN", 0, 300), ("7392", 1000, 2000), ("thanks", 2500, 3000))
    utterance = SampleRange(0, 5 * RATE)
    assert locate("PIN 7392 thanks", timed, utterance, 400, 750) == [SampleRange(600 * 8, 2750 * 8)]


def test_the_margin_is_clamped_to_the_utterance() -> None:
    timed = words(("1234", 50, 900), ("5678", 900, 1900))
    utterance = utterance_range(3200, 2 * 16000)  # 1600 … 17600 at 8 kHz
    assert locate("1234 5678", timed, utterance, margin_ms=400) == [SampleRange(1600, 17600)]


def test_spans_are_found_in_words_with_leading_spaces_and_punctuation() -> None:
    # Whisper's words may keep punctuation ("nine," / "two.") and split numerals ("2", ",048.").
    timed = words(
        ("PIN", 0, 300),
        ("is", 300, 500),
        ("seven,", 600, 900),
        ("three,", 1000, 1300),
        ("nine,", 1400, 1700),
        ("two.", 1800, 2100),
        ("Bye.", 2600, 2900),
    )
    utterance = SampleRange(0, 3 * RATE)
    assert sensitive_word_runs([w.text for w in timed]) == [(1, 5)]
    assert locate("PIN is seven, three, nine, two. Bye.", timed, utterance, 250) == [
        SampleRange((300 - 250) * 8, (2100 + 250) * 8)
    ]
    assert sensitive_word_runs(["Sure,", "my", "pin", "is", "2", ",048."]) == [(3, 5)]


def test_a_word_misheard_between_two_spans_is_silenced_with_them() -> None:
    """ "4539 1488 zero 343 6467": the "zero" the ASR wrote as a word is between two spans."""
    texts = ["card", "is", "45391488", "Niro", "3436467", "and", "then", "we", "left", "1234"]
    assert sensitive_word_runs(texts) == [(1, 4), (9, 9)]


def test_two_spans_apart_stay_apart_and_overlapping_margins_merge() -> None:
    timed = words(
        ("card", 0, 300),
        ("4111111111111111", 400, 3000),
        ("and", 3100, 3300),
        ("then", 3300, 3600),
        ("we", 3600, 3800),
        ("went", 3800, 4000),
        ("out", 4000, 4200),
        ("for", 4200, 4400),
        ("a", 4400, 4500),
        ("walk", 4500, 4800),
        ("pin", 6000, 6300),
        ("7392", 6400, 7400),
    )
    text = " ".join(w.text for w in timed)
    utterance = SampleRange(0, 8 * RATE)
    assert locate(text, timed, utterance, 300) == [
        SampleRange(100 * 8, 3300 * 8),
        SampleRange(6100 * 8, 7700 * 8),
    ]
    assert locate(text, timed, utterance, 2000) == [SampleRange(0, 8 * RATE)]


def test_nothing_sensitive_silences_nothing() -> None:
    timed = words(("Hello", 0, 300), ("there.", 300, 600))
    assert locate("Hello there.", timed, SampleRange(0, RATE), 300) == []
    assert locate("Hello there.", (), SampleRange(0, RATE), 300) == []


def test_spans_that_cannot_be_located_ask_for_the_whole_utterance() -> None:
    utterance = SampleRange(0, 5 * RATE)
    text = "My card number is 4111 1111 1111 1111."
    assert locate(text, (), utterance, 300) is None  # no word timings at all
    # The timed words hold fewer redacted digits than the message did (another reading).
    fewer = words(("My", 0, 200), ("card", 200, 500), ("is", 500, 700), ("4111", 800, 1500))
    assert masked_units(text) == 16
    assert locate(text, fewer, utterance, 300) is None
    # Timings that cannot be right (past the audio's end).
    late = words(("PIN", 0, 300), ("7392", 400, 9000))
    assert locate("PIN 7392", late, utterance, 300) is None


# --------------------------------------------------------------------------- the recorder


def ramp(samples: int, start: int = 1) -> np.ndarray:
    """Audio whose every sample is different from zero (so silence shows)."""
    return (np.arange(samples) % 20000 + start).astype(np.int16)


def stored(blobs: DirectoryBlobStore, info: BlobInfo) -> np.ndarray:
    import io
    import wave

    with wave.open(io.BytesIO(blobs.get(info.key))) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return frames.reshape(-1, 2)


def test_the_recorder_silences_resolved_spans_in_that_channel_only(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=800)
    customer, agent = ramp(4 * RATE), ramp(4 * RATE, start=7)
    recorder.write(Role.CUSTOMER, 800, customer)
    recorder.write(Role.AGENT, 800, agent)
    utterance = recorder.redacted_audio(Role.CUSTOMER, SampleRange(1000, 20_000))
    utterance.resolve([SampleRange(2000, 3000), SampleRange(19_000, 25_000)])  # clamped
    quiet = recorder.redacted_audio(Role.CUSTOMER, SampleRange(25_000, 30_000))
    quiet.resolve([])  # transcribed, nothing sensitive
    (info,) = recorder.finish()
    assert info.key.endswith(".redacted.wav")
    listed = recording_info(info)
    assert listed is not None and listed.redacted and listed.offset_ms == 100
    frames = stored(blobs, info)
    assert (frames[:, 1] == agent).all()
    expected = customer.copy()
    expected[2000 - 800 : 3000 - 800] = 0
    expected[19_000 - 800 : 20_000 - 800] = 0
    assert (frames[:, 0] == expected).all()


def test_an_utterance_not_transcribed_when_the_recording_is_assembled_is_silenced_whole(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    """The fail-safe for an utterance whose transcription outlived the call's wait (or never
    reported): silence, never the raw audio; an answer after the WAV was assembled changes
    nothing."""
    recorder = recordings.recorder(KEY, origin_sample=0)
    customer = ramp(2 * RATE)
    recorder.write(Role.CUSTOMER, 0, customer)
    recorder.write(Role.AGENT, 0, customer)
    late = recorder.redacted_audio(Role.CUSTOMER, SampleRange(4000, 12_000))
    (info,) = recorder.finish()
    late.resolve([])
    frames = stored(blobs, info)
    assert (frames[4000:12_000, 0] == 0).all()
    assert (frames[:4000, 0] == customer[:4000]).all()
    assert (frames[12_000:, 0] == customer[12_000:]).all()
    assert (frames[:, 1] == customer).all()


def test_silence_reaches_across_parts(recordings: Recordings, blobs: DirectoryBlobStore) -> None:
    small = Recordings(
        blobs,
        recordings.spool_dir,
        86400,
        RecordingSettings(max_part_bytes=44 + 4 * RATE),  # 1 s parts
    )
    recorder = small.recorder(KEY, origin_sample=0)
    customer = ramp(3 * RATE)
    recorder.write(Role.CUSTOMER, 0, customer)
    recorder.redacted_audio(Role.CUSTOMER, SampleRange(0, 3 * RATE)).resolve(
        [SampleRange(6000, 18_000)]
    )
    infos = recorder.finish()
    frames = np.concatenate([stored(blobs, info) for info in infos])
    expected = customer.copy()
    expected[6000:18_000] = 0
    assert (frames[:, 0] == expected).all()
    assert all(info.key.endswith(".redacted.wav") for info in infos)


def test_many_ranges_across_assembly_chunks(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    """Ranges anywhere (across the 8 s chunks the WAV is assembled in, overlapping, unsorted)
    silence exactly their samples."""
    rng = np.random.default_rng(7)
    recorder = recordings.recorder(KEY, origin_sample=0)
    customer = ramp(20 * RATE)
    recorder.write(Role.CUSTOMER, 0, customer)
    expected = customer.copy()
    ranges = []
    for start in rng.integers(0, 20 * RATE, 60):
        end = int(start) + int(rng.integers(1, 3 * RATE))
        ranges.append(SampleRange(int(start), end))
        expected[start:end] = 0
    ranges.append(SampleRange(8 * RATE - 5, 8 * RATE + 5))  # on a chunk boundary
    expected[8 * RATE - 5 : 8 * RATE + 5] = 0
    recorder.redacted_audio(Role.CUSTOMER, SampleRange(0, 20 * RATE)).resolve(ranges)
    (info,) = recorder.finish()
    assert (stored(blobs, info)[:, 0] == expected).all()


def test_a_recording_without_redaction_is_stored_as_it_was(
    recordings: Recordings, blobs: DirectoryBlobStore
) -> None:
    recorder = recordings.recorder(KEY, origin_sample=0)
    customer = ramp(RATE)
    recorder.write(Role.CUSTOMER, 0, customer)
    (info,) = recorder.finish()
    assert info.key.endswith("-0.wav") and not info.key.endswith(".redacted.wav")
    listed = recording_info(info)
    assert listed is not None and not listed.redacted
    assert (stored(blobs, info)[:, 0] == customer).all()
    assert [i.key for i in recordings.for_call(KEY, time.time())] == [info.key]


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Resolved:
    whole: SampleRange
    margin_ms: int = 300
    margin_after_ms: int = 300
    ranges: list[SampleRange] | None = None

    def resolve(self, ranges: list[SampleRange]) -> None:
        assert self.ranges is None, "resolved twice"
        self.ranges = list(ranges)


class ScriptedAsr:
    """Answers each request with the next result (or raises it): the pipeline's decisions
    around the engine, without a model."""

    def __init__(self, *answers: AsrResult | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[AsrRequest] = []

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


async def run_pipeline(
    tmp_path: Path, asr: ScriptedAsr, params: AutotranscribeParams
) -> tuple[Resolved, list[dict[str, object]]]:
    from callscribe.bus import InProcessEventBus
    from callscribe.endpointing import Utterance
    from callscribe.store.sqlite import SqliteStore
    from callscribe.transcription import MessageSequence, Speaker, TranscriptionPipeline

    store = SqliteStore(tmp_path / "s.sqlite3")
    pipeline = TranscriptionPipeline(asr, store, InProcessEventBus(), 3600)  # type: ignore[arg-type]
    utterance = Utterance(16000, np.full(5 * 16000, 0.1, dtype=np.float32))
    sink = Resolved(utterance_range(utterance.start_sample, len(utterance.audio)))
    speaker = Speaker("customer", "C1", "s1")
    await pipeline.handle(KEY, speaker, utterance, params, MessageSequence(), redacted_audio=sink)
    bodies = [m.body for m in store.list_messages(KEY, 100, time.time())]
    store.close()
    return sink, bodies


CARD_TEXT = "My card number is 4111 1111 1111 1111."


async def test_without_detailed_tokens_a_timed_decode_locates_the_span_and_the_message_is_unchanged(
    tmp_path: Path,
) -> None:
    timed = AsrResult("My card number is 4111 1111 1111 1111.", words=CARD_WORDS[:8])
    asr = ScriptedAsr(AsrResult(CARD_TEXT), timed)
    sink, bodies = await run_pipeline(tmp_path, asr, AutotranscribeParams())
    assert [r.word_timestamps for r in asr.requests] == [False, True]
    assert sink.ranges == [SampleRange(8000 + (800 - 300) * 8, 8000 + (4700 + 300) * 8)]
    (body,) = bodies
    (entry,) = body["autotranscribeResponse"]["utterance"]  # type: ignore[index]
    assert entry == {"text": "My card number is ################."}  # no tokens: not asked


async def test_with_detailed_tokens_the_calls_own_words_locate_the_span(tmp_path: Path) -> None:
    asr = ScriptedAsr(AsrResult(CARD_TEXT, words=CARD_WORDS[:8]))
    sink, bodies = await run_pipeline(
        tmp_path,
        asr,
        AutotranscribeParams(detailedToken=True, redactionOutput="redacted_and_unredacted"),
    )
    assert [r.word_timestamps for r in asr.requests] == [True]
    assert sink.ranges == [SampleRange(8000 + (800 - 300) * 8, 8000 + (4700 + 300) * 8)]
    (entry,) = bodies[0]["autotranscribeResponse"]["utterance"]  # type: ignore[index]
    assert entry["unredactedText"] == CARD_TEXT


async def test_fail_safe_paths_silence_the_whole_utterance(tmp_path: Path) -> None:
    whole = utterance_range(16000, 5 * 16000)
    # The ASR failed: what was said is unknown.
    sink, bodies = await run_pipeline(
        tmp_path / "a", ScriptedAsr(AsrError("down")), AutotranscribeParams()
    )
    assert sink.ranges == [whole] and bodies == []
    # The timed decode failed.
    asr = ScriptedAsr(AsrResult(CARD_TEXT), AsrError("down"))
    sink, _ = await run_pipeline(tmp_path / "b", asr, AutotranscribeParams())
    assert sink.ranges == [whole]
    # The timed decode read fewer digits than the message redacted.
    asr = ScriptedAsr(
        AsrResult(CARD_TEXT), AsrResult("My card number is 4111.", words=CARD_WORDS[:5])
    )
    sink, _ = await run_pipeline(tmp_path / "c", asr, AutotranscribeParams())
    assert sink.ranges == [whole]


async def test_nothing_sensitive_needs_no_timed_decode(tmp_path: Path) -> None:
    asr = ScriptedAsr(AsrResult("I would like to pay my bill."))
    sink, _ = await run_pipeline(tmp_path, asr, AutotranscribeParams())
    assert sink.ranges == [] and len(asr.requests) == 1
    asr = ScriptedAsr(AsrResult(""))  # no speech
    sink, _ = await run_pipeline(tmp_path / "b", asr, AutotranscribeParams())
    assert sink.ranges == [] and len(asr.requests) == 1


async def test_a_call_completes_only_after_its_last_utterance_is_located(
    recordings: Recordings, blobs: DirectoryBlobStore, tmp_path: Path
) -> None:
    """The last utterance's transcription finishes after the media ended: the recording is
    assembled after it, with its span silenced (not the whole utterance)."""
    from callscribe.bus import InProcessEventBus
    from callscribe.calls import CallServices, CallSession
    from callscribe.config import EndpointingSettings
    from callscribe.model import StartRequest
    from callscribe.store.sqlite import SqliteStore
    from callscribe.transcription import TranscriptionPipeline

    gate = asyncio.Event()

    class SlowAsr:
        def __init__(self) -> None:
            self.requests: list[AsrRequest] = []

        async def transcribe(self, request: AsrRequest) -> AsrResult:
            self.requests.append(request)
            await gate.wait()
            return AsrResult("PIN 7392", words=words(("PIN", 0, 300), ("7392", 400, 900)))

        async def close(self) -> None:
            pass

    class LoudVad:
        def __call__(self, window: np.ndarray) -> float:
            return 1.0 if np.abs(window).max() > 0.01 else 0.0

        def reset(self) -> None:
            pass

    store = SqliteStore(tmp_path / "s.sqlite3")
    asr = SlowAsr()
    pipeline = TranscriptionPipeline(asr, store, InProcessEventBus(), 3600)  # type: ignore[arg-type]
    services = CallServices(
        store, pipeline, EndpointingSettings(), recordings=recordings, vad_factory=LoudVad
    )
    session = CallSession(
        KEY, services, ("inbound", "outbound"), {"inbound": Role.CUSTOMER, "outbound": Role.AGENT}
    )
    await session.open()
    await session.start(
        StartRequest.model_validate(
            {
                "namespace": "twilio",
                "guid": KEY.guid,
                "customerId": "C",
                "agentId": "A",
                "autotranscribeParams": {"audioRecordingAllowed": True},
            }
        )
    )
    speech = ramp(3 * RATE, start=3000)
    murmur = (np.arange(3 * RATE) % 200 + 1).astype(np.int16)  # the agent: below the VAD
    for at in range(0, len(speech), 160):
        session.audio("inbound", speech[at : at + 160], at)
        session.audio("outbound", murmur[at : at + 160], at)
    completing = asyncio.create_task(session.complete())
    while not asr.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert not completing.done()
    gate.set()
    await completing
    (info,) = recordings.for_call(KEY, time.time())
    assert info.redacted
    frames = stored(blobs, BlobInfo(info.key, info.bytes, info.recorded_at))
    silent = np.flatnonzero(frames[:, 0] == 0)
    assert len(silent) and (frames[:, 1] == murmur[: len(frames)]).all()
    # The span (400–900 ms of the utterance, and the margin) and no more of the customer.
    settings = RecordingSettings()
    margins = settings.redaction_margin_ms + settings.redaction_margin_after_ms
    assert len(silent) <= (500 + margins) * 8 + 16
    kept = np.flatnonzero(frames[:, 0] != 0)
    assert (frames[kept, 0] == speech[kept]).all()
    store.close()


# --------------------------------------------------------------------------- a real call

DIGIT_WORDS = re.compile(r"\d|\b(zero|one|two|three|four|five|six|seven|eight|nine)\b", re.I)


def say(text: str, voice: str, directory: Path, name: str) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice``, as 8 kHz 16-bit telephone audio."""
    import subprocess
    import wave

    raw, wav8 = directory / f"{name}.raw.wav", directory / f"{name}.8k.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["sox", "-V1", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]
        + [str(wav8)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav8)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


CALL_SCRIPT = (
    ("agent", "Thank you for calling. How can I help you?"),
    ("customer", "Hello, I would like to pay my bill today."),
    ("agent", "Sure. Please read me the card number and your pin."),
    # A Visa number that passes the Luhn check, read out digit by digit.
    ("customer", "My card number is 4 5 3 9, 1 4 8 8, 0 3 4 3, 6 4 6 7."),
    ("customer", "My pin number is 7 3 9 2."),
    ("customer", "Thank you very much for your help."),
)


@dataclass(frozen=True)
class Turn:
    who: str
    text: str
    start: int  # 8 kHz samples from the start of the call's audio
    end: int


def script_call(voice: str, directory: Path) -> tuple[dict[str, bytes], list[Turn]]:
    """Both tracks of the call as Twilio sends them (μ-law), and where each turn is: the turns
    one after the other, 1.2 s apart, each track silent while the other speaks."""
    from callscribe.audio import pcm16_to_ulaw

    gap = np.zeros(int(1.2 * RATE), dtype=np.int16)
    tracks: dict[str, list[np.ndarray]] = {"customer": [gap], "agent": [gap]}
    turns, at = [], len(gap)
    for n, (who, text) in enumerate(CALL_SCRIPT):
        speech = say(text, voice if who == "customer" else "en-us+m3", directory, f"t{n}")
        turns.append(Turn(who, text, at, at + len(speech)))
        at += len(speech) + len(gap)
        for role, parts in tracks.items():
            parts.append(speech if role == who else np.zeros_like(speech))
            parts.append(gap)
    audio = {role: np.concatenate(parts) for role, parts in tracks.items()}
    frames = len(audio["customer"]) // 160
    tracks_sent = {
        "inbound": pcm16_to_ulaw(audio["customer"][: frames * 160]),
        "outbound": pcm16_to_ulaw(audio["agent"][: frames * 160]),
    }
    return tracks_sent, turns


async def play_recorded_call(
    server: object, call_sid: str, tracks: dict[str, bytes], **params: object
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[tuple[str, np.ndarray]]]:
    """The call through the real server as Twilio streams it; after it completes, its
    messages, its recording entries and each entry's WAV as downloaded."""
    import contextlib
    import io
    import uuid
    import wave

    import httpx
    import websockets

    from callscribe.twilio.protocol import TwilioStreamWriter

    api = server.client("acme")  # type: ignore[attr-defined]
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "4" * 32)
    async with websockets.connect(await api.stream_url()) as ws:
        await ws.send(writer.start())
        deadline = time.monotonic() + 30
        while (
            started := await api.start(call_sid, "C1", "A1", audioRecordingAllowed=True, **params)
        ).status_code != 200:
            assert time.monotonic() < deadline, started.text
            await asyncio.sleep(0.1)
        for n in range(len(tracks["inbound"]) // 160):
            for track, payload in tracks.items():
                await ws.send(writer.media(track, payload[n * 160 : (n + 1) * 160], n * 20))
        await ws.send(writer.stop())
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), timeout=30)
    deadline = time.monotonic() + 240
    while not (messages := (await api.messages(call_sid)).json())["complete"]:
        assert time.monotonic() < deadline, "the call never completed"
        await asyncio.sleep(0.2)
    entries = (await api.recording(call_sid)).json()["recordings"]
    wavs = []
    async with httpx.AsyncClient(timeout=60) as http:
        for entry in entries:
            response = await http.get(entry["url"])
            assert response.status_code == 200
            with wave.open(io.BytesIO(response.content)) as wav:
                frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
            wavs.append((entry["url"], frames.reshape(-1, 2)))
    return messages["messages"], entries, wavs


def offline_text(engine: object, pcm16: np.ndarray) -> str:
    """What the real model hears in a channel of the stored WAV, transcribed whole."""
    from callscribe.audio import resample_8k_to_16k

    audio = resample_8k_to_16k(pcm16).astype(np.float32)
    result = engine.transcribe_blocking(AsrRequest(audio=audio, language="en"))  # type: ignore[attr-defined]
    return str(result.text)


def message_texts(messages: list[dict[str, object]], role: str) -> list[str]:
    return [
        entry["text"]
        for m in messages
        if m["sender"]["role"] == role  # type: ignore[index]
        for entry in m["autotranscribeResponse"]["utterance"]  # type: ignore[index]
    ]


@pytest.mark.e2e
@pytest.mark.usefixtures("speech_tools")
@pytest.mark.parametrize("voice", ["en-us", "en-gb"])
async def test_a_recorded_call_keeps_no_spoken_card_number_or_pin(
    server_factory: object, receiver: object, asr_engine: object, tmp_path: Path, voice: str
) -> None:
    """A customer reads a card number and a PIN on a recorded call with redaction on (the
    default). The stored WAV, fetched through the after-call API and transcribed again
    offline by the same model, gives back none of the digits; every sample that is not
    silence is the call's audio as it came in, the agent's channel whole; the rest of what
    the customer said is still there; the recording says it is redacted."""
    from callscribe.audio import ulaw_to_pcm16
    from callscribe.config import TwilioSettings

    server = await server_factory(  # type: ignore[operator]
        receiver.url,  # type: ignore[attr-defined]
        twilio=TwilioSettings(max_speed=1000, burst_s=600),
    )
    tracks, turns = script_call(voice, tmp_path)
    messages, entries, wavs = await play_recorded_call(server, "CA" + voice, tracks)

    # What the live transcript redacted: the card number and the PIN.
    customer_said = " ".join(message_texts(messages, "customer"))
    card, pin = (
        next(text for text in message_texts(messages, "customer") if cue in text.lower())
        for cue in ("card", "pin")
    )
    # Redaction found both numbers, however many of their digits the live decode heard (it
    # varies from run to run: "########, ####, ####", "######## Niro #######", "#####
    # Dixfemmern"); the offline checks below are what this test is about.
    assert card.count("#") >= 4 and pin.count("#") >= 3, customer_said
    assert not DIGIT_WORDS.search(customer_said), customer_said

    (entry,) = entries
    ((_, frames),) = wavs
    assert entry["redacted"] is True
    origin = entry["offsetMs"] * RATE // 1000
    sent = {
        "customer": ulaw_to_pcm16(tracks["inbound"])[origin : origin + len(frames)],
        "agent": ulaw_to_pcm16(tracks["outbound"])[origin : origin + len(frames)],
    }
    assert (frames[:, 1] == sent["agent"]).all()  # the agent's channel untouched
    customer = frames[:, 0]
    changed = np.flatnonzero(customer != sent["customer"])
    assert len(changed) and (customer[changed] == 0).all()  # only ever silence
    offline = offline_text(asr_engine, customer)
    print(f"{voice}: live {customer_said!r}; stored WAV offline {offline!r}")
    assert not DIGIT_WORDS.search(offline), offline
    # The stretch from the card number to the PIN as one piece, and each turn on its own (a
    # whole channel's long silences may stop Whisper early).
    said = [t for t in turns if DIGIT_WORDS.search(t.text)]
    stretch = offline_text(asr_engine, customer[said[0].start - origin : said[-1].end - origin])
    print(f"  card number to PIN: offline {stretch!r}")
    assert not DIGIT_WORDS.search(stretch), stretch
    for turn in turns:
        if turn.who != "customer":
            continue
        heard = customer[turn.start - origin : turn.end - origin]
        kept = heard == sent["customer"][turn.start - origin : turn.end - origin]
        turn_offline = offline_text(asr_engine, heard)
        lost = np.flatnonzero(~kept)
        print(
            f"  {turn.text!r} ({len(heard) / RATE:.2f} s): {len(lost) / RATE:.2f} s silenced"
            + (f" from {lost[0] / RATE:.2f} s to {lost[-1] / RATE:.2f} s" if len(lost) else "")
            + f"; offline {turn_offline!r}"
        )
        assert not DIGIT_WORDS.search(turn_offline), turn_offline
        if DIGIT_WORDS.search(turn.text):
            # The number located (the words that announce it kept), or, when the timed decode
            # read fewer digits than the message did, the whole utterance silenced: either
            # way, not one digit is kept. Which one varies from run to run (the live decode
            # does); the unit tests above pin down the locating itself.
            assert not kept.all()
        else:
            assert kept.all()
            assert turn.text.split()[0].lower() in turn_offline.lower(), turn_offline
    agent_offline = offline_text(asr_engine, frames[:, 1])
    assert "card number" in agent_offline.lower(), agent_offline


@pytest.mark.e2e
@pytest.mark.usefixtures("speech_tools")
async def test_a_call_asking_only_for_unredacted_output_keeps_its_audio(
    server_factory: object, receiver: object, tmp_path: Path
) -> None:
    from callscribe.audio import ulaw_to_pcm16
    from callscribe.config import TwilioSettings

    server = await server_factory(  # type: ignore[operator]
        receiver.url,  # type: ignore[attr-defined]
        twilio=TwilioSettings(max_speed=1000, burst_s=600),
    )
    tracks, _ = script_call("en-us", tmp_path)
    messages, entries, wavs = await play_recorded_call(
        server, "CA-unredacted", tracks, redactionOutput="unredacted"
    )
    assert any(DIGIT_WORDS.search(text) for text in message_texts(messages, "customer"))
    (entry,) = entries
    ((url, frames),) = wavs
    assert entry["redacted"] is False and ".redacted" not in url
    origin = entry["offsetMs"] * RATE // 1000
    for channel, track in enumerate(("inbound", "outbound")):
        sent = ulaw_to_pcm16(tracks[track])[origin : origin + len(frames)]
        assert (frames[:, channel] == sent).all()
