"""The `callscribe` command as a user runs it: keys, serve (with a clean SIGTERM), demo."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import websockets

from callscribe.auth import create_api_key
from callscribe.simulate import (
    FRAME_BYTES,
    ApiClient,
    load_sample_call,
    running_receiver,
    running_server,
)
from callscribe.store.sqlite import SqliteStore
from callscribe.twilio.protocol import TwilioStreamWriter


def callscribe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callscribe", *args], capture_output=True, text=True, timeout=300
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = callscribe("keys", "create", "--tenant", "acme", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert set(issued) == {"apiId", "apiSecret"}
    assert issued["apiSecret"] not in (tmp_path / "callscribe.sqlite3").read_bytes().decode("latin-1")

    listed = callscribe("keys", "list", "--data-dir", str(tmp_path))
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["apiId"], r["tenant"], r["revoked"]) for r in rows] == [(issued["apiId"], "acme", False)]
    assert issued["apiSecret"] not in listed.stdout

    revoked = callscribe("keys", "revoke", issued["apiId"], "--data-dir", str(tmp_path))
    assert revoked.returncode == 0
    again = callscribe("keys", "revoke", issued["apiId"], "--data-dir", str(tmp_path))
    assert again.returncode == 1 and "no active key" in again.stderr
    listed = callscribe("keys", "list", "--tenant", "acme", "--data-dir", str(tmp_path))
    assert json.loads(listed.stdout)["revoked"] is True

    bad = callscribe("keys", "create", "--tenant", "no spaces allowed", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "tenant" in bad.stderr


async def test_sigterm_finishes_open_utterances(tmp_path: Path) -> None:
    """A call is mid-sentence when the server is told to stop: the utterance is still
    transcribed and delivered before the process exits, and the call is completed."""
    call = load_sample_call()
    line = next(s for s in call.segments if s.transcribed and s.track == "outbound")
    audio = call.tracks["outbound"]
    async with running_receiver() as receiver:
        async with running_server(tmp_path, receiver.url) as server:
            issued = create_api_key(SqliteStore(tmp_path / "callscribe.sqlite3"), "acme")
            api = ApiClient(server.base_url, issued.api_id, issued.api_secret)
            call_sid = "CA" + uuid.uuid4().hex
            writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "4" * 32)
            async with websockets.connect(await api.stream_url()) as ws:
                await ws.send(writer.start(tracks=("outbound",)))
                await asyncio.sleep(0.2)
                assert (await api.start(call_sid, "C1", "A1")).status_code == 200
                # Send the agent's line up to two thirds through: no end-of-speech silence.
                first = (line.start_ms - 300) * 8 // FRAME_BYTES
                last = (line.start_ms + (line.end_ms - line.start_ms) * 2 // 3) * 8 // FRAME_BYTES
                for frame in range(first, last):
                    chunk = audio[frame * FRAME_BYTES : (frame + 1) * FRAME_BYTES]
                    await ws.send(writer.media("outbound", chunk, frame * 20))
                await asyncio.sleep(0.5)
                assert receiver.messages == []
                server.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(server.process.wait, 60)
            await api.close()
        assert code == 0
        assert len(receiver.messages) == 1
        text = receiver.messages[0].body["autotranscribeResponse"]["utterance"][0]["text"]
        assert text.strip()
        record = SqliteStore(tmp_path / "callscribe.sqlite3").find_calls("acme", call_sid)
        assert [r.status.value for r in record] == ["completed"]


def test_demo_runs_and_reports_transcripts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "callscribe", "demo", "--speed", "6"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "start-streaming at 00:14.9 → HTTP 200" in out
    assert out.count("webhook ← ") >= 8
    assert "webhook ← customer" in out and "webhook ← agent" in out
    assert '"transcripts":' in out
    assert "complete=True" in out
    assert "transcripts delivered to the webhook" in out
