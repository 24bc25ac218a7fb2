"""The data directory holds transcripts, call audio and credentials: everything in it is the
owner's only (directories 0700, files 0600), set when each is created whatever the umask, and
a data directory left by an older version is tightened when the server starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from callscribe.config import Settings, SiprecSettings
from callscribe.server import LocalRuntime
from callscribe.twilio.protocol import TwilioStreamWriter

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: a mode that came only from the umask would be world-writable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root: Path) -> dict[str, str]:
    wrong = {}
    for relative, mode in modes_under(root).items():
        wanted = PRIVATE_DIR if (root / relative).is_dir() else PRIVATE_FILE
        if mode != wanted:
            wrong[relative] = oct(mode)
    return wrong


async def record_a_short_call(server: Any) -> str:
    """A real Twilio stream with audioRecordingAllowed, 1 s of audio, hung up; returns its
    call SID once the after-call API says it is complete."""
    api = server.client("acme")
    call_sid = "CA" + uuid.uuid4().hex
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "4" * 32)
    async with websockets.connect(await api.stream_url()) as ws:
        await ws.send(writer.start())
        deadline = time.monotonic() + 30
        while (
            started := await api.start(call_sid, "C1", "A1", audioRecordingAllowed=True)
        ).status_code != 200:
            assert time.monotonic() < deadline, started.text
            await asyncio.sleep(0.1)
        for n in range(50):
            for track in ("inbound", "outbound"):
                await ws.send(writer.media(track, bytes([0xF0]) * 160, n * 20))
        await ws.send(writer.stop())
        # Hang up as Twilio does: the gateway closes the socket once the stream stopped.
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), timeout=30)
    deadline = time.monotonic() + 60
    while not (await api.messages(call_sid)).json()["complete"]:
        assert time.monotonic() < deadline, "the call never completed"
        await asyncio.sleep(0.1)
    return call_sid


async def test_a_new_data_dir_is_owner_only_whatever_the_umask(
    server_factory: Any, receiver: Any, tmp_path: Path, permissive_umask: None
) -> None:
    server = await server_factory(receiver.url)
    runtime = server.runtime
    data_dir = runtime.settings.data_dir
    call_sid = await record_a_short_call(server)
    assert (await server.clients[0].recording(call_sid)).json()["recordings"]
    await asyncio.to_thread(runtime.exporter.export_day, datetime.now(UTC).date())

    modes = modes_under(data_dir)
    # What the checks below cover: the store (WAL files too), secrets, a recording, feed files.
    for expected in (
        "callscribe.sqlite3",
        "callscribe.sqlite3-wal",
        "secrets.json",
        "blobs",
        "spool",
    ):
        assert expected in modes, sorted(modes)
    assert any(p.startswith("blobs/recordings/") and p.endswith(".wav") for p in modes)
    assert any(p.startswith("blobs/exports/") and p.endswith(".gz") for p in modes)
    assert not_private(data_dir) == {}


def test_a_data_dir_of_an_older_version_is_tightened_on_start(
    tmp_path: Path, asr_engine: Any
) -> None:
    """Directories 0755 and files 0644, as older versions left them under a usual umask."""
    data_dir = tmp_path / "data"
    recording = data_dir / "blobs" / "recordings" / "acme" / "twilio" / "CA1" / "1-0.wav"
    recording.parent.mkdir(parents=True)
    recording.write_bytes(b"RIFF")
    feed = data_dir / "blobs" / "exports" / "utterances" / "acme" / "2026-01-01" / "00.jsonl.gz"
    feed.parent.mkdir(parents=True)
    feed.write_bytes(b"\x1f\x8b")
    (data_dir / "spool").mkdir()
    (data_dir / "spool" / "abc.0.customer.pcm").write_bytes(b"\0\0")
    with sqlite3.connect(data_dir / "callscribe.sqlite3") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
    (data_dir / "secrets.json").write_text("{}")
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert not_private(data_dir)

    settings = Settings(data_dir=data_dir, siprec=SiprecSettings(port=0))
    runtime = LocalRuntime.build(settings, asr=asr_engine)
    try:
        assert not_private(data_dir) == {}
    finally:
        runtime.store.close()
        assert runtime.instance is not None
        runtime.instance.close()
