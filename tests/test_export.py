"""The File Exporter's utterances feed: a generated day exported per tenant and hour, links
from the API (and the CLI) that work and expire, retention, the daily schedule."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from callscribe.auth import hash_secret
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.export import (
    UtteranceExporter,
    day_due,
    feed_file_key,
    next_run,
    run_daily,
)
from callscribe.retention import Retention
from callscribe.store.base import ApiKey, CallKey, CallRecord, CallStatus, StoredMessage
from callscribe.store.sqlite import SqliteStore
from tests.conftest import RunningServer

DAY = date(2026, 3, 14)
DAY_START = datetime(2026, 3, 14, tzinfo=UTC).timestamp()


def at(hour: int, minute: int = 0, second: float = 0) -> float:
    return DAY_START + hour * 3600 + minute * 60 + second


def body(
    key: CallKey, role: str, who: str, start: int, text: str, unredacted: str | None = None
) -> dict[str, Any]:
    utterance: dict[str, Any] = {"text": text}
    if unredacted is not None:
        utterance["unredactedText"] = unredacted
    return {
        "type": "transcript",
        "externalConversationId": key.guid,
        "streamId": f"stream-{role}-{key.guid}",
        "sender": {"externalId": who, "role": role},
        "autotranscribeResponse": {
            "message": "transcript",
            "start": start,
            "end": start + 1500,
            "utterance": [utterance],
        },
    }


def generate_day(store: SqliteStore, tenant: str, other: str) -> dict[int, list[dict[str, Any]]]:
    """Calls spread over the day (and its edges); returns the rows expected per hour."""
    store.put_api_key(ApiKey(f"id-{tenant}", tenant, hash_secret("x"), DAY_START - 86400))
    store.put_api_key(ApiKey(f"id-{other}", other, hash_secret("y"), DAY_START - 86400))
    expected: dict[int, list[dict[str, Any]]] = {h: [] for h in range(24)}
    calls = [
        (
            CallKey(tenant, "twilio", "CA-night"),
            "en-US",
            "redacted",
            [at(0, 0, 0), at(0, 59, 59.5), at(1, 0)],
        ),
        (
            CallKey(tenant, "siprec", "00002542391662063156"),
            "es-US",
            "redacted_and_unredacted",
            [at(9, 30), at(9, 31), at(10, 5)],
        ),
        (CallKey(tenant, "twilio", "CA-late"), "en-GB", "unredacted", [at(23, 59, 59.9)]),
    ]
    for key, language, mode, times in calls:
        store.create_call(
            CallRecord(
                key,
                CallStatus.COMPLETED,
                "local",
                times[0] - 5,
                times[-1] + 5,
                params={
                    "request": {
                        "autotranscribeParams": {"language": language, "redactionOutput": mode}
                    }
                },
            )
        )
        for seq, created in enumerate(times):
            role, who = ("customer", "C-9") if seq % 2 == 0 else ("agent", "A-7")
            unredacted = f"my pin is 47{seq}9" if mode == "redacted_and_unredacted" else None
            text = "my pin is ####" if mode != "unredacted" else f"words {seq}"
            message = StoredMessage(
                key,
                seq,
                f"m-{key.guid}-{seq}",
                body(key, role, who, seq * 2000, text, unredacted),
                created_at=created,
                expires_at=created + 7 * 86400,
            )
            store.put_message(message)
            row = {
                "externalConversationId": key.guid,
                "namespace": key.namespace,
                "streamId": f"stream-{role}-{key.guid}",
                "role": role,
                "participantId": who,
                "startMs": seq * 2000,
                "endMs": seq * 2000 + 1500,
                "text": text,
                "language": language,
                "transcribedAt": datetime.fromtimestamp(created, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "messageId": message.message_id,
            }
            if unredacted is not None:
                row["unredactedText"] = unredacted
            expected[datetime.fromtimestamp(created, UTC).hour].append(row)
    for hour in expected:
        expected[hour].sort(key=lambda r: (r["transcribedAt"], r["messageId"]))
    # Outside the day, another tenant, an expired message: never in this tenant's day.
    edge = CallKey(tenant, "twilio", "CA-edges")
    store.put_message(
        StoredMessage(
            edge,
            0,
            "m-before",
            body(edge, "agent", "A", 0, "before"),
            DAY_START - 0.001,
            DAY_START + 86400 * 30,
        )
    )
    store.put_message(
        StoredMessage(
            edge,
            1,
            "m-after",
            body(edge, "agent", "A", 0, "after"),
            DAY_START + 86400,
            DAY_START + 86400 * 30,
        )
    )
    store.put_message(
        StoredMessage(edge, 2, "m-expired", body(edge, "agent", "A", 0, "gone"), at(12), at(12) + 1)
    )
    theirs = CallKey(other, "twilio", "CA-night")
    store.put_message(
        StoredMessage(
            theirs,
            0,
            "m-other",
            body(theirs, "agent", "B", 0, "not yours"),
            at(3),
            at(3) + 86400 * 30,
        )
    )
    return expected


def rows_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "data" / "callscribe.sqlite3")


def test_export_day_writes_24_hourly_files_per_tenant(store: SqliteStore, tmp_path: Path) -> None:
    expected = generate_day(store, "acme", "globex")
    blobs = DirectoryBlobStore(tmp_path / "blobs", BlobLinkSigner("k"))
    # As of a moment the day's messages had not expired yet.
    exporter = UtteranceExporter(store, blobs, tmp_path / "spool", now=lambda: at(12, 0, 2))
    summary = exporter.export_day(DAY)

    assert summary.tenants == {"acme": 7, "globex": 1}
    assert summary.files == 48
    for hour in range(24):
        start = datetime.fromtimestamp(at(hour), UTC)
        assert rows_of(blobs.get(feed_file_key("utterances", "acme", start))) == expected[hour]
    assert [
        r["messageId"]
        for r in rows_of(
            blobs.get(feed_file_key("utterances", "globex", datetime.fromtimestamp(at(3), UTC)))
        )
    ] == ["m-other"]
    assert exporter.is_exported(DAY) and not exporter.is_exported(DAY + timedelta(days=1))
    assert list((tmp_path / "spool").iterdir()) == []

    # Re-running rewrites identical files (gzip without a timestamp).
    key = feed_file_key("utterances", "acme", datetime.fromtimestamp(at(9), UTC))
    first = blobs.get(key)
    exporter.export_day(DAY, ["acme"])
    assert blobs.get(key) == first


def test_tenants_are_those_with_a_key_valid_that_day(store: SqliteStore, tmp_path: Path) -> None:
    store.put_api_key(
        ApiKey("k1", "old", hash_secret("a"), DAY_START - 9e5, revoked_at=DAY_START - 1)
    )
    store.put_api_key(ApiKey("k2", "leaving", hash_secret("b"), DAY_START - 9e5, revoked_at=at(10)))
    store.put_api_key(ApiKey("k3", "new", hash_secret("c"), DAY_START + 86400))
    store.put_api_key(ApiKey("k4", "steady", hash_secret("d"), DAY_START - 1))
    exporter = UtteranceExporter(
        store, DirectoryBlobStore(tmp_path / "b", BlobLinkSigner("k")), tmp_path / "s"
    )
    assert exporter.tenants_active_on(DAY) == ["leaving", "steady"]


def test_large_hour_is_paged(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("callscribe.export.PAGE_SIZE", 7)
    key = CallKey("acme", "twilio", "CA-busy")
    for seq in range(50):
        store.put_message(
            StoredMessage(
                key,
                seq,
                f"m{seq:03d}",
                body(key, "agent", "A", seq, f"w{seq}"),
                at(5, 0, seq // 3),
                at(5) + 86400,
            )
        )
    blobs = DirectoryBlobStore(tmp_path / "b", BlobLinkSigner("k"))
    UtteranceExporter(store, blobs, tmp_path / "s", now=lambda: at(6)).export_day(DAY, ["acme"])
    rows = rows_of(
        blobs.get(feed_file_key("utterances", "acme", datetime.fromtimestamp(at(5), UTC)))
    )
    assert [r["messageId"] for r in rows] == [f"m{seq:03d}" for seq in range(50)]


def test_schedule_times() -> None:
    assert datetime.fromtimestamp(next_run(at(1, 59), 2), UTC) == datetime(
        2026, 3, 14, 2, tzinfo=UTC
    )
    assert datetime.fromtimestamp(next_run(at(2), 2), UTC) == datetime(2026, 3, 15, 2, tzinfo=UTC)
    assert day_due(at(1, 59), 2) == date(2026, 3, 12)
    assert day_due(at(2, 0, 1), 2) == date(2026, 3, 13)


async def test_scheduler_catches_up_on_the_due_day(store: SqliteStore, tmp_path: Path) -> None:
    blobs = DirectoryBlobStore(tmp_path / "b", BlobLinkSigner("k"))
    exporter = UtteranceExporter(store, blobs, tmp_path / "s")
    due = day_due(time.time(), 2)
    task = asyncio.get_running_loop().create_task(run_daily(exporter, 2))
    try:
        deadline = time.monotonic() + 30
        while not exporter.is_exported(due):
            assert time.monotonic() < deadline, "the due day was not exported"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()


# Through the API ------------------------------------------------------------------------


async def test_feed_links_through_the_api(server_factory: Any) -> None:
    server: RunningServer = await server_factory(None, link_ttl_s=600)
    runtime = server.runtime
    expected = generate_day(runtime.store, "acme", "globex")
    runtime.exporter._now = lambda: at(13)  # export as of the day after: nothing expired yet
    await asyncio.to_thread(runtime.exporter.export_day, DAY)
    api = server.client("acme")

    before = time.time()
    response = await api.feed_files(
        "utterances", "2026-03-14T05:30:00Z", "2026-03-14T10:00:00+00:00"
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["complete"] is True
    assert [f["hourStart"] for f in answer["files"]] == [
        f"2026-03-14T{h:02d}:00:00.000Z" for h in range(5, 10)
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        for entry, hour in zip(answer["files"], range(5, 10), strict=True):
            assert entry["url"].startswith(server.base_url + "/callscribe/v1/files/")
            expires = datetime.fromisoformat(entry["expiresAt"]).timestamp()
            assert before + 599 <= expires <= time.time() + 601
            got = await http.get(entry["url"])  # no API credentials: the link is enough
            assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
            assert (
                f"utterances-acme-2026-03-14T{hour:02d}.jsonl.gz"
                in got.headers["content-disposition"]
            )
            assert rows_of(got.content) == expected[hour]
            assert entry["bytes"] == len(got.content)

        # An expired link (signed as if an hour ago, for 10 minutes) is refused.
        key = feed_file_key("utterances", "acme", datetime.fromtimestamp(at(9), UTC))
        stale = runtime.blobs.signer.token(key, time.time() - 3000)
        refused = await http.get(f"{server.base_url}/callscribe/v1/files/{stale}")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "403-201"

    # An interval reaching into days not exported yet is incomplete.
    partial = (
        await api.feed_files("utterances", "2026-03-14T22:00:00Z", "2026-03-15T02:00:00Z")
    ).json()
    assert [f["hourStart"][11:13] for f in partial["files"]] == ["22", "23"]
    assert partial["complete"] is False

    # Each tenant sees its own files only.
    theirs = (
        await server.client("globex").feed_files(
            "utterances", "2026-03-14T03:00:00Z", "2026-03-14T04:00:00Z"
        )
    ).json()
    (only,) = theirs["files"]
    async with httpx.AsyncClient() as http:
        assert [r["messageId"] for r in rows_of((await http.get(only["url"])).content)] == [
            "m-other"
        ]

    for start, end, feed in (
        ("2026-03-14T05:00:00Z", "2026-03-14T05:00:00Z", "utterances"),
        ("2026-03-14T05:00:00Z", "2026-04-20T05:00:00Z", "utterances"),
        ("2026-03-14T05:00:00Z", "2026-03-14T06:00:00Z", "calls"),
        ("yesterday", "2026-03-14T06:00:00Z", "utterances"),
    ):
        bad = await api.feed_files(feed, start, end)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "400-201", bad.text

    async with httpx.AsyncClient() as http:
        anonymous = await http.get(
            f"{server.base_url}/fileexporter/v1/feeds/utterances/files",
            params={"start": "2026-03-14T00:00:00Z", "end": "2026-03-14T01:00:00Z"},
        )
    assert anonymous.status_code == 401


async def test_the_startup_purge_is_over_before_the_server_answers(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge still running once clients are served would delete what they just stored (the
    feed-links test lost its rows that way under CPU load): the first one runs at startup."""
    purges: list[float] = []
    purge = Retention.purge

    def slow_purge(self: Retention, now: float) -> dict[str, int]:
        time.sleep(0.5)  # as on a loaded machine
        purges.append(now)
        return purge(self, now)

    monkeypatch.setattr(Retention, "purge", slow_purge)
    await server_factory(None)
    assert len(purges) == 1


async def test_feed_files_expire_with_retention(server_factory: Any) -> None:
    server: RunningServer = await server_factory(None, export_retention_days=7)
    runtime = server.runtime
    generate_day(runtime.store, "acme", "globex")
    runtime.exporter._now = lambda: at(13)
    await asyncio.to_thread(runtime.exporter.export_day, DAY, ["acme"])
    api = server.client("acme")
    key = feed_file_key("utterances", "acme", datetime.fromtimestamp(at(9), UTC))
    path = runtime.blobs.open_path(key)
    old = time.time() - 7 * 86400 - 60
    os.utime(path, (old, old))  # stored just over 7 days ago

    answer = (
        await api.feed_files("utterances", "2026-03-14T08:00:00Z", "2026-03-14T11:00:00Z")
    ).json()
    assert [f["hourStart"][11:13] for f in answer["files"]] == ["08", "10"]
    assert answer["complete"] is False
    purged = runtime.retention.purge(time.time())
    assert purged["feedFiles"] == 1
    assert not path.exists()
    assert (
        runtime.blobs.stat(feed_file_key("utterances", "acme", datetime.fromtimestamp(at(8), UTC)))
        is not None
    )


# The CLI --------------------------------------------------------------------------------


def callscribe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callscribe", *args], capture_output=True, text=True, timeout=300
    )


def test_export_cli_run_and_list(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data / "callscribe.sqlite3")
    generate_day(store, "acme", "globex")
    # Messages of 2026-03-14 expired a week later: keep them (but the one meant to be
    # expired) alive until long after today, for a CLI that exports as of now.
    store._db().execute(
        "UPDATE messages SET expires_at = expires_at + 1e9 WHERE message_id != 'm-expired'"
    )
    store.close()

    run = callscribe(
        "export", "run", "--date", "2026-03-14", "--tenant", "acme", "--data-dir", str(data)
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"date": "2026-03-14", "files": 24, "rows": {"acme": 7}}
    listed = callscribe(
        "export",
        "list",
        "--tenant",
        "acme",
        "--start",
        "2026-03-14T09:00:00",
        "--end",
        "2026-03-14T11:00:00",
        "--public-url",
        "https://cs.example.com",
        "--data-dir",
        str(data),
    )
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [line["hourStart"] for line in lines] == [
        "2026-03-14T09:00:00.000Z",
        "2026-03-14T10:00:00.000Z",
    ]
    assert all(
        line["url"].startswith("https://cs.example.com/callscribe/v1/files/") for line in lines
    )
    bad = callscribe(
        "export",
        "list",
        "--tenant",
        "acme",
        "--start",
        "2026-03-14T09:00:00",
        "--end",
        "2026-03-14T08:00:00",
        "--data-dir",
        str(data),
    )
    assert bad.returncode == 2
