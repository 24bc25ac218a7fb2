"""``callscribe bench``: N simultaneous calls in real time against a local server.

For each N it plays N copies of the sample call (distinct call SIDs, starts staggered over
two seconds so they do not speak in lockstep) as real Twilio Media Streams against one
``callscribe serve`` process, and measures, per delivered message, the time from the end of
the utterance's audio (when the caller sent it) to the webhook receiving it. That figure
includes the endpointer's silence wait, ASR queueing, ASR, persistence and the POST.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from callscribe.auth import create_api_key
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

STAGGER_S = 2.0


@dataclass
class LevelResult:
    calls: int
    messages: int
    expected_messages: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    asr_rtf: float
    asr_utterances: int
    dropped: int
    failed: int
    control_errors: int


def truncate(call: SampleCall, seconds: float | None) -> SampleCall:
    if seconds is None or seconds * 1000 >= call.duration_ms:
        return call
    end_ms = int(seconds * 1000)
    return replace(
        call,
        tracks={t: b[: end_ms * 8] for t, b in call.tracks.items()},
        duration_ms=end_ms,
        controls=tuple(c for c in call.controls if c.at_ms < end_ms),
    )


async def run_level(
    n: int, call: SampleCall, api: ApiClient, inbox: list[ReceivedMessage]
) -> LevelResult:
    before = await api.health()
    inbox.clear()
    stream_url = await api.stream_url()
    played = [PlayedCall(call_sid="CA" + uuid.uuid4().hex) for _ in range(n)]

    async def one(index: int) -> None:
        await asyncio.sleep(STAGGER_S * index / max(1, n))
        await play_call(stream_url, call, api, played=played[index])

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(3)  # the last utterances of the last call
    after = await api.health()

    by_sid = {p.call_sid: p for p in played}
    latencies = [
        (
            m.received_at
            - by_sid[m.body["externalConversationId"]].wall_time_of(
                m.body["autotranscribeResponse"]["end"]
            )
        )
        * 1000
        for m in inbox
        if m.body["externalConversationId"] in by_sid
    ]
    expected = 0
    for p in played:
        expected += len((await api.messages(p.call_sid)).json().get("messages", []))
    asr_b, asr_a = before["asr"], after["asr"]
    audio = asr_a["audioSeconds"] - asr_b["audioSeconds"]
    processing = asr_a["processingSeconds"] - asr_b["processingSeconds"]
    delivery_b, delivery_a = before["delivery"], after["delivery"]
    return LevelResult(
        calls=n,
        messages=len(latencies),
        expected_messages=expected,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p95_ms=float(np.percentile(latencies, 95)) if latencies else float("nan"),
        max_ms=max(latencies) if latencies else float("nan"),
        asr_rtf=processing / audio if audio else float("nan"),
        asr_utterances=asr_a["utterances"] - asr_b["utterances"],
        dropped=delivery_a["dropped"] - delivery_b["dropped"],
        failed=delivery_a["failed"] - delivery_b["failed"],
        control_errors=sum(
            1 for p in played for _, r in p.control_responses if r.status_code != 200
        ),
    )


def print_table(results: list[LevelResult], p95_bound_ms: float) -> None:
    header = (
        f"{'calls':>5} {'messages':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'ASR RTF':>8} {'dropped':>8} {'failed':>7} {'ctl err':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.calls:>5} {f'{r.messages}/{r.expected_messages}':>9} {r.p50_ms:>8.0f} "
            f"{r.p95_ms:>8.0f} {r.max_ms:>8.0f} {r.asr_rtf:>8.3f} {r.dropped:>8} "
            f"{r.failed:>7} {r.control_errors:>7}"
        )
    held = [
        r.calls for r in results if r.p95_ms <= p95_bound_ms and r.messages == r.expected_messages
    ]
    print()
    if held:
        print(f"largest N with p95 ≤ {p95_bound_ms:.0f} ms and nothing lost: {max(held)}")
    else:
        print(f"no N held p95 ≤ {p95_bound_ms:.0f} ms")


async def run_bench(
    levels: list[int],
    p95_bound_ms: float = 1500.0,
    seconds: float | None = None,
    end_silence_ms: int | None = None,
    stop_when_over: bool = True,
) -> int:
    call = truncate(load_sample_call(), seconds)
    data_dir = Path(tempfile.mkdtemp(prefix="callscribe-bench-"))
    env = {"CALLSCRIBE_VAD_END_SILENCE_MS": str(end_silence_ms)} if end_silence_ms else {}
    inbox: list[ReceivedMessage] = []
    results: list[LevelResult] = []
    print(
        f"bench: {call.duration_ms / 1000:.0f} s calls in real time, levels {levels}, "
        f"p95 bound {p95_bound_ms:.0f} ms",
        flush=True,
    )
    try:
        async with running_receiver() as receiver:
            receiver.listeners.append(inbox.append)
            async with running_server(data_dir, receiver.url, env=env) as server:
                issued = create_api_key(SqliteStore(data_dir / "callscribe.sqlite3"), "bench")
                api = ApiClient(server.base_url, issued.api_id, issued.api_secret)
                for n in levels:
                    print(f"… {n} simultaneous call(s)", flush=True)
                    result = await run_level(n, call, api, inbox)
                    results.append(result)
                    if stop_when_over and result.p95_ms > p95_bound_ms:
                        break
                await api.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print_table(results, p95_bound_ms)
    return 0 if results and results[0].messages else 1
