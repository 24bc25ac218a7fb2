"""``callscribe bench quality``: the quality corpus streamed through a real server, scored.

Each call of the corpus (``callscribe/samples/quality/``, made by
``tools/make_quality_corpus.py``) is played as a real Twilio Media Stream, in real time and
all at once (or ``at_once`` at a time), against one ``callscribe serve`` process; its
transcripts are taken from the webhook as a customer receives them. Then, with the server gone,
the same model transcribes every turn of the same calls offline: each turn cut generously
(``OFFLINE_BEFORE_MS`` before, ``OFFLINE_AFTER_MS`` after) and decoded by faster-whisper's own
``transcribe`` with its full 30 s window. Both are scored on the same turns
(``callscribe.quality``), per voice, per split and overall.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callscribe.asr.base import AsrRequest
from callscribe.audio import resample_8k_to_16k, ulaw_to_pcm16
from callscribe.auth import create_api_key
from callscribe.config import AsrSettings
from callscribe.quality import Group, Score, Transcript, Turn, group, regroup, score
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import (
    ApiClient,
    PlayedCall,
    ReceivedMessage,
    SampleCall,
    load_sample_call,
    play_call,
    running_receiver,
    running_server,
)

OFFLINE_BEFORE_MS = 200
OFFLINE_AFTER_MS = 400
STAGGER_S = 2.0
TRACK_OF_ROLE = {"customer": "inbound", "agent": "outbound"}
ROLE_OF_TRACK = {track: role for role, track in TRACK_OF_ROLE.items()}
SPLITS = ("tuning", "held-back")


def corpus_dir() -> Path:
    return Path(str(importlib.resources.files("callscribe") / "samples" / "quality"))


@dataclass(frozen=True)
class CorpusCall:
    id: str
    split: str
    call: SampleCall
    voices: dict[str, str]  # track -> voice label
    # A domain call's vocabulary (its tenant's terms) and how often its script says each of
    # those it says; empty for the general calls.
    vocabulary: tuple[str, ...] = ()
    terms_said: dict[str, int] = field(default_factory=dict)

    @property
    def turns(self) -> list[Turn]:
        return [
            Turn(s.track, s.start_ms, s.end_ms, s.text) for s in self.call.segments if s.transcribed
        ]


def _voice_label(speaker: dict[str, Any]) -> str:
    voice = str(speaker["voice"]).removeprefix("voice_").removesuffix("_arctic_hts")
    label = f"{speaker['engine']} {voice}"
    if speaker.get("rate") is not None:
        label += f" r{speaker['rate']}"
    return label


CALL_KINDS = ("general", "domain", "all")


def load_corpus(
    directory: Path | None = None, split: str = "all", kind: str = "general"
) -> list[CorpusCall]:
    """The corpus's calls, those of ``split`` ("tuning", "held-back" or "all") and ``kind``:
    "general" (the twelve calls without a vocabulary, which the streaming/offline figures and
    their CI bound are measured on), "domain" (the calls with one, see
    ``callscribe.vocabulary_bench``) or "all"."""
    if kind not in CALL_KINDS:
        raise ValueError(f"kind must be one of {CALL_KINDS}")
    directory = directory or corpus_dir()
    manifest = json.loads((directory / "corpus.json").read_text())
    calls = []
    for entry in manifest["calls"]:
        if split != "all" and entry["split"] != split:
            continue
        if kind != "all" and ("vocabulary" in entry) != (kind == "domain"):
            continue
        calls.append(
            CorpusCall(
                id=entry["id"],
                split=entry["split"],
                call=load_sample_call(directory / entry["id"]),
                voices={
                    TRACK_OF_ROLE["agent"]: _voice_label(entry["agent"]),
                    TRACK_OF_ROLE["customer"]: _voice_label(entry["customer"]),
                },
                vocabulary=tuple(entry.get("vocabulary", ())),
                terms_said=dict(entry.get("termsSaid", {})),
            )
        )
    return calls


# Streaming ---------------------------------------------------------------------------------


@dataclass
class StreamedRun:
    transcripts: dict[str, list[Transcript]]  # call id -> transcripts from the webhook
    latencies_ms: list[float]
    asr: dict[str, Any]  # the server's ASR counters over the run (/healthz)
    control_errors: int
    lost: int  # messages the after-call API holds that the webhook did not receive


def _transcript(body: dict[str, Any]) -> Transcript:
    response = body["autotranscribeResponse"]
    return Transcript(
        track=TRACK_OF_ROLE[body["sender"]["role"]],
        start_ms=int(response["start"]),
        end_ms=int(response["end"]),
        text=" ".join(u["text"] for u in response["utterance"]),
    )


async def stream_calls(
    calls: list[CorpusCall],
    api: ApiClient,
    inbox: list[ReceivedMessage],
    *,
    at_once: int | None = None,
    speed: float = 1.0,
    settle_s: float = 3.0,
) -> StreamedRun:
    """Play ``calls`` against a running server, ``at_once`` at a time (all by default), and
    collect what its webhook delivered."""
    before = (await api.health())["asr"]
    inbox.clear()
    stream_url = await api.stream_url()
    played = {c.id: PlayedCall(call_sid="CA" + uuid.uuid4().hex, speed=speed) for c in calls}
    slots = asyncio.Semaphore(at_once or len(calls))
    width = min(len(calls), at_once or len(calls))

    async def one(index: int, corpus_call: CorpusCall) -> None:
        async with slots:
            await asyncio.sleep(STAGGER_S * (index % width) / max(1, width))
            await play_call(
                stream_url,
                corpus_call.call,
                api,
                played=played[corpus_call.id],
                # Scored against the script, so the words as said: no redaction.
                autotranscribe_params={"redactionOutput": "unredacted"},
            )

    await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
    await asyncio.sleep(settle_s)
    after = (await api.health())["asr"]

    by_sid = {p.call_sid: (call_id, p) for call_id, p in played.items()}
    transcripts: dict[str, list[Transcript]] = {c.id: [] for c in calls}
    latencies = []
    for message in inbox:
        sid = message.body.get("externalConversationId")
        if sid not in by_sid:
            continue
        call_id, p = by_sid[sid]
        transcripts[call_id].append(_transcript(message.body))
        end_ms = message.body["autotranscribeResponse"]["end"]
        latencies.append((message.received_at - p.wall_time_of(end_ms)) * 1000)
    stored = 0
    for p in played.values():
        stored += len((await api.messages(p.call_sid)).json().get("messages", []))
    asr = {
        key: round(after[key] - before[key], 3)
        for key in after
        if isinstance(after.get(key), int | float)
        and isinstance(before.get(key), int | float)
        and not key.startswith("recent")  # a figure over recent utterances, not a counter
    }
    asr["realTimeFactor"] = (
        asr["processingSeconds"] / asr["audioSeconds"] if asr.get("audioSeconds") else 0.0
    )
    return StreamedRun(
        transcripts=transcripts,
        latencies_ms=latencies,
        asr=asr,
        control_errors=sum(
            1 for p in played.values() for _, r in p.control_responses if r.status_code != 200
        ),
        lost=stored - len(latencies),
    )


# Offline -----------------------------------------------------------------------------------


def offline_settings(settings: AsrSettings | None = None) -> AsrSettings:
    """The same model as ``settings``, decoded the standard way: faster-whisper's own 30 s
    window with its own padding, and no retries of ours."""
    return (settings or AsrSettings()).model_copy(
        update={"encoder_context": "full", "pad_audio": False, "full_window_retry": False}
    )


def offline_transcripts(
    engine: Any, corpus_call: CorpusCall, vocabulary: tuple[str, ...] = ()
) -> list[Transcript]:
    """Every turn of the call cut generously from its track and transcribed alone (with
    ``vocabulary``, if given)."""
    call = corpus_call.call
    pcm = {track: ulaw_to_pcm16(data) for track, data in call.tracks.items()}
    transcripts = []
    for turn in corpus_call.turns:
        first = max(0, (turn.start_ms - OFFLINE_BEFORE_MS) * 8)
        last = (turn.end_ms + OFFLINE_AFTER_MS) * 8
        audio = resample_8k_to_16k(pcm[turn.track][first:last]).astype(np.float32)
        result = engine.transcribe_blocking(AsrRequest(audio, language="en", vocabulary=vocabulary))
        transcripts.append(Transcript(turn.track, turn.start_ms, turn.end_ms, result.text))
    return transcripts


# Scoring -----------------------------------------------------------------------------------


@dataclass
class Comparison:
    streaming: Score = field(default_factory=Score)
    offline: Score = field(default_factory=Score)

    def add(self, streamed: Iterable[Group], offline: Iterable[Group]) -> None:
        self.streaming.add(score(streamed))
        self.offline.add(score(offline))

    @property
    def ratio(self) -> float:
        if self.offline.wer == 0:
            return 1.0 if self.streaming.wer == 0 else float("inf")
        return self.streaming.wer / self.offline.wer


@dataclass
class QualityReport:
    by_voice: dict[str, Comparison]
    by_split: dict[str, Comparison]
    overall: Comparison
    run: StreamedRun
    calls: list[str]

    def as_dict(self) -> dict[str, Any]:
        def row(c: Comparison) -> dict[str, Any]:
            return {
                "groups": c.streaming.groups,
                "referenceWords": c.streaming.reference_words,
                "streamingWer": round(c.streaming.wer, 4),
                "offlineWer": round(c.offline.wer, 4),
                "ratio": round(c.ratio, 3),
                "streamingLoops": c.streaming.loops,
                "offlineLoops": c.offline.loops,
                "streamingTruncations": c.streaming.truncations,
                "offlineTruncations": c.offline.truncations,
                "startErrorMsMedian": _median(c.streaming.start_errors_ms),
                "endErrorMsMedian": _median(c.streaming.end_errors_ms),
            }

        return {
            "calls": self.calls,
            "overall": row(self.overall),
            "bySplit": {k: row(v) for k, v in self.by_split.items()},
            "byVoice": {k: row(v) for k, v in self.by_voice.items()},
            "latencyMs": {
                "p50": _percentile(self.run.latencies_ms, 50),
                "p95": _percentile(self.run.latencies_ms, 95),
                "max": max(self.run.latencies_ms, default=float("nan")),
                "messages": len(self.run.latencies_ms),
            },
            "asr": self.run.asr,
            "controlErrors": self.run.control_errors,
            "lostMessages": self.run.lost,
        }


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def compare(
    calls: list[CorpusCall],
    streamed: dict[str, list[Transcript]],
    offline: dict[str, list[Transcript]],
    run: StreamedRun,
) -> QualityReport:
    by_voice: dict[str, Comparison] = {}
    by_split: dict[str, Comparison] = {}
    overall = Comparison()
    for corpus_call in calls:
        groups = group(corpus_call.turns, streamed[corpus_call.id])
        offline_groups = regroup(groups, offline[corpus_call.id])
        overall.add(groups, offline_groups)
        by_split.setdefault(corpus_call.split, Comparison()).add(groups, offline_groups)
        for track, voice in corpus_call.voices.items():
            by_voice.setdefault(voice, Comparison()).add(
                [g for g in groups if g.track == track],
                [g for g in offline_groups if g.track == track],
            )
    return QualityReport(by_voice, by_split, overall, run, [c.id for c in calls])


def format_report(report: QualityReport) -> str:
    header = (
        f"{'':<40} {'groups':>6} {'words':>6} {'stream WER':>10} {'offline WER':>11} "
        f"{'ratio':>6} {'loops s/o':>9} {'trunc s/o':>9} {'Δstart ms':>9} {'Δend ms':>8}"
    )
    lines = [header, "-" * len(header)]

    def line(name: str, c: Comparison) -> str:
        return (
            f"{name[:40]:<40} {c.streaming.groups:>6} {c.streaming.reference_words:>6} "
            f"{c.streaming.wer:>10.1%} {c.offline.wer:>11.1%} {c.ratio:>6.2f} "
            f"{f'{len(c.streaming.loops)}/{len(c.offline.loops)}':>9} "
            f"{f'{len(c.streaming.truncations)}/{len(c.offline.truncations)}':>9} "
            f"{_median(c.streaming.start_errors_ms):>9.0f} "
            f"{_median(c.streaming.end_errors_ms):>8.0f}"
        )

    for voice in sorted(report.by_voice):
        lines.append(line(voice, report.by_voice[voice]))
    lines.append("-" * len(header))
    for split in SPLITS:
        if split in report.by_split:
            lines.append(line(f"split: {split}", report.by_split[split]))
    lines.append(line("overall", report.overall))
    run = report.run
    lines += [
        "",
        f"end of utterance → webhook: p50 {_percentile(run.latencies_ms, 50):.0f} ms, "
        f"p95 {_percentile(run.latencies_ms, 95):.0f} ms, "
        f"max {max(run.latencies_ms, default=float('nan')):.0f} ms over "
        f"{len(run.latencies_ms)} messages; lost {run.lost}; control errors {run.control_errors}",
        f"ASR: {run.asr.get('utterances', 0):.0f} utterances, real-time factor "
        f"{run.asr.get('realTimeFactor', 0.0):.3f}, full-window retries "
        f"{run.asr.get('fullWindowRetries', 0):.0f}, loops cut {run.asr.get('loopsCut', 0):.0f}",
    ]
    loops = report.overall.streaming.loops
    if loops:
        lines.append("streaming loops: " + " | ".join(loops))
    truncations = report.overall.streaming.truncations
    if truncations:
        lines.append("streaming truncations (reference): " + " | ".join(truncations))
    return "\n".join(lines)


async def run_quality_bench(
    split: str = "all",
    at_once: int | None = None,
    speed: float = 1.0,
    json_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    from callscribe.asr.whisper import FasterWhisperEngine

    calls = load_corpus(split=split)
    if not calls:
        print(f"no calls in split {split!r}")
        return 1
    audio_s = sum(c.call.duration_ms for c in calls) / 1000
    print(
        f"bench quality: {len(calls)} calls ({split}), {audio_s:.0f} s of audio, "
        f"{at_once or len(calls)} at a time at {speed:g}× real time",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="callscribe-quality-"))
    inbox: list[ReceivedMessage] = []
    try:
        async with running_receiver() as receiver:
            receiver.listeners.append(inbox.append)
            async with running_server(data_dir, receiver.url, env=env) as server:
                issued = create_api_key(SqliteStore(data_dir / "callscribe.sqlite3"), "bench")
                api = ApiClient(server.base_url, issued.api_id, issued.api_secret)
                try:
                    run = await stream_calls(calls, api, inbox, at_once=at_once, speed=speed)
                finally:
                    await api.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print("… offline transcription of the same turns (full window)", flush=True)
    engine = FasterWhisperEngine(offline_settings())
    offline = {c.id: await asyncio.to_thread(offline_transcripts, engine, c) for c in calls}
    await engine.close()
    report = compare(calls, run.transcripts, offline, run)
    print()
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if run.latencies_ms else 1
