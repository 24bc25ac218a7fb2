"""The `callscribe` command as a user runs it: keys, serve (with a clean SIGTERM), demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import websockets

from callscribe.auth import create_api_key
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import (
    FRAME_BYTES,
    ApiClient,
    load_sample_call,
    running_receiver,
    running_server,
)
from callscribe.twilio.protocol import TwilioStreamWriter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def callscribe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callscribe", *args], capture_output=True, text=True, timeout=300
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = callscribe("keys", "create", "--tenant", "acme", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert set(issued) == {"apiId", "apiSecret"}
    assert issued["apiSecret"] not in (tmp_path / "callscribe.sqlite3").read_bytes().decode(
        "latin-1"
    )

    listed = callscribe("keys", "list", "--data-dir", str(tmp_path))
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["apiId"], r["tenant"], r["revoked"]) for r in rows] == [
        (issued["apiId"], "acme", False)
    ]
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
    # Where to watch the call live, before it plays, with the key to sign in with.
    watch = re.search(
        r"• watch it live: http://127\.0\.0\.1:\d+/live \(sign in with the demo's API key: "
        r"id cs-[0-9a-f]{24}, secret [\w-]{40,}\)",
        out,
    )
    assert watch is not None, out
    assert watch.start() < out.index("• playing the call")
    assert "start-streaming at 00:14.9 → HTTP 200" in out
    assert out.count("webhook ← ") >= 8
    assert "webhook ← customer" in out and "webhook ← agent" in out
    assert '"transcripts":' in out
    assert "complete=True" in out
    assert "transcripts delivered to the webhook" in out
    # The tenant's vocabulary reaches the engine: its words come out as the company spells
    # them (without it: "Acme's Dreaming", "pen number").
    assert "• the tenant's vocabulary: Acme Streaming, on hold, PIN" in out
    assert "Acme Streaming" in out.split("• playing the call")[1], out
    assert "PIN number" in out, out


# A user's mistakes get one line that says what is wrong, never a traceback -----------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # argparse's usage line may come before it
    for word in words:
        assert word in result.stderr, result.stderr


def test_serve_with_a_data_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = callscribe(
        "serve", "--port", "0", "--sip-port", "off", "--data-dir", str(tmp_path / "a-file" / "data")
    )
    assert_one_line_error(result, "Not a directory", str(tmp_path / "a-file" / "data"))


def test_serve_with_a_webhook_url_that_is_not_one(tmp_path: Path) -> None:
    result = callscribe(
        "serve",
        "--port",
        "0",
        "--sip-port",
        "off",
        "--data-dir",
        str(tmp_path),
        "--webhook-url",
        "not-a-url",
    )
    assert_one_line_error(result, "webhook.url", "not-a-url", "valid URL")


def test_serve_with_a_bad_environment_setting(tmp_path: Path) -> None:
    env = {**os.environ, "CALLSCRIBE_VAD_END_SILENCE_MS": "5"}
    result = subprocess.run(
        [sys.executable, "-m", "callscribe", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_one_line_error(result, "endpointing.end_silence_ms", "greater than or equal to 100")


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = callscribe(
            "serve", "--port", str(port), "--sip-port", "off", "--data-dir", str(tmp_path)
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_demo_refuses_a_speed_of_zero_and_leaves_no_temporary_folder() -> None:
    before = set(Path(tempfile.gettempdir()).glob("callscribe-demo-*"))
    result = callscribe("demo", "--speed", "0")
    assert_one_line_error(result, "--speed", "more than 0")
    assert set(Path(tempfile.gettempdir()).glob("callscribe-demo-*")) == before


def test_help_names_defaults_and_environment_settings() -> None:
    serve = callscribe("serve", "--help").stdout
    assert "CALLSCRIBE_ASR_MODEL [packaged:whisper-base]" in serve
    assert "CALLSCRIBE_VAD_END_SILENCE_MS [600]" in serve
    assert "CALLSCRIBE_WEBHOOK_URL" not in serve  # it has a flag
    bench = callscribe("bench", "--help").stdout
    assert "(default: 1,2,4)" in bench and "(default: 1500.0)" in bench
    quality = callscribe("bench", "quality", "--help").stdout
    assert "(default: all)" in quality
    vocabulary = callscribe("bench", "vocabulary", "--help").stdout
    assert "(default: tuning)" in vocabulary and "(default: offline,streamed)" in vocabulary
