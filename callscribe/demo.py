"""``callscribe demo``: a newcomer's first run, everything real on loopback.

It starts ``callscribe serve`` as a separate process in a temporary data dir, a webhook
receiver, creates an API key, prints the live page's URL (to watch the call on), fetches a
stream URL, and plays the bundled two-party sample call as a Twilio Media Stream in real time:
IVR prelude (not transcribed), start-streaming when the agent joins, stop-streaming around a
hold with music, start again, stop at the end. Each transcript is printed as the webhook
receives it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from callscribe.auth import create_api_key
from callscribe.store.base import TenantVocabulary
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import (
    ApiClient,
    Control,
    PlayedCall,
    ReceivedMessage,
    load_sample_call,
    play_call,
    running_receiver,
    running_server,
)

# The demo company's own words: its name and the phrases its agents use.
DEMO_VOCABULARY = ("Acme Streaming", "on hold", "PIN")


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"


async def run_demo(speed: float = 1.0, keep_data: bool = False) -> int:
    call = load_sample_call()
    data_dir = Path(tempfile.mkdtemp(prefix="callscribe-demo-"))
    played = PlayedCall(call_sid="CA" + uuid.uuid4().hex, speed=speed)
    print(
        f"CallScribe demo — a {call.duration_ms / 1000:.0f} s two-party call, "
        f"streamed as Twilio would ({speed:g}× real time). Data: {data_dir}",
        flush=True,
    )

    def on_message(message: ReceivedMessage) -> None:
        body = message.body
        response = body["autotranscribeResponse"]
        latency = ""
        if played.started_at:
            ms = (message.received_at - played.wall_time_of(response["end"])) * 1000
            latency = f"  [{ms:5.0f} ms after the utterance ended]"
        text = " ".join(u["text"] for u in response["utterance"])
        role = body["sender"]["role"]
        print(
            f"  webhook ← {role:8} {_clock(response['start'] / 1000)}–"
            f"{_clock(response['end'] / 1000)}  {text}{latency}",
            flush=True,
        )

    try:
        async with running_receiver() as receiver:
            receiver.listeners.append(on_message)
            print(f"• webhook receiver listening on {receiver.url}", flush=True)
            print("• starting callscribe serve (loads Whisper base, int8, CPU) …", flush=True)
            async with running_server(data_dir, receiver.url) as server:
                print(f"• server ready at {server.base_url}", flush=True)
                store = SqliteStore(data_dir / "callscribe.sqlite3")
                issued = create_api_key(store, "demo")
                print(f"• API key created for tenant 'demo': {issued.api_id}", flush=True)
                # What `callscribe vocabulary set --tenant demo …` keeps: without it Whisper
                # base writes "Acme's Dreaming", "unhold" and "pen number" on this call.
                store.put_tenant_vocabulary(
                    TenantVocabulary("demo", DEMO_VOCABULARY, updated_at=time.time())
                )
                print(f"• the tenant's vocabulary: {', '.join(DEMO_VOCABULARY)}", flush=True)
                # Opened by hand, not by the demo: the IVR prelude leaves time to sign in, and
                # the page shows what was said before it connected.
                print(
                    f"• watch it live: {server.base_url}/live (sign in with the "
                    f"demo's API key: id {issued.api_id}, secret {issued.api_secret})",
                    flush=True,
                )
                api = ApiClient(server.base_url, issued.api_id, issued.api_secret)
                stream_url = await api.stream_url()
                print(f"• stream URL: {stream_url[:70]}…", flush=True)
                print("• playing the call: IVR prelude first (not transcribed) …", flush=True)

                async def on_control(
                    control: Control, response: httpx.Response, _: PlayedCall
                ) -> None:
                    body = response.json()
                    print(
                        f"  {control.action}-streaming at {_clock(control.at_ms / 1000)} → "
                        f"HTTP {response.status_code}",
                        flush=True,
                    )
                    result = body.get("autotranscribeResponse") or {}
                    for role in ("customer", "agent"):
                        summary = (result.get(role) or {}).get("summary")
                        if summary:
                            print(f"    {role:8} summary: {json.dumps(summary)}", flush=True)
                    if control.action == "stop" and control is not call.controls[-1]:
                        print("  (on hold: music plays, nothing is transcribed)", flush=True)

                def on_progress(seconds: float) -> None:
                    if int(seconds) % 10 == 0:
                        print(f"  … {_clock(seconds)} of audio sent", flush=True)

                await play_call(
                    stream_url,
                    call,
                    api,
                    played=played,
                    on_control=on_control,
                    on_progress=on_progress,
                )
                print(
                    f"• call ended: Twilio stream closed with code {played.close_code}", flush=True
                )
                await asyncio.sleep(1.0)
                after = await api.messages(played.call_sid)
                body = after.json()
                print(
                    f"• after-call API: {len(body.get('messages', []))} messages, "
                    f"complete={body.get('complete')}",
                    flush=True,
                )
                for message in body.get("messages", []):
                    r = message["autotranscribeResponse"]
                    print(
                        f"    {message['sender']['role']:8} "
                        f"{' '.join(u['text'] for u in r['utterance'])}",
                        flush=True,
                    )
                await api.close()
            count = len(receiver.messages)
    finally:
        # The temporary data dir goes however the demo ends (Ctrl-C, a failure), unless kept.
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    if count == 0:
        print("✗ no transcripts arrived at the webhook", flush=True)
        return 1
    print(f"✓ {count} transcripts delivered to the webhook", flush=True)
    return 0
