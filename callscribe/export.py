"""The File Exporter's ``utterances`` feed.

A daily job (02:00 UTC in ``callscribe serve``; ``callscribe export run`` by hand) writes the
previous day's utterances of each tenant to feed files in the BlobStore: JSON Lines, gzip, one
file per hour of the day (all 24, empty hours too, so a missing file always means "not
exported yet")::

    exports/utterances/<tenant>/<YYYY-MM-DD>/<HH>.jsonl.gz

An hour's file holds the messages *created* (transcribed) in that hour, UTC. Re-running a day
rewrites its files with the same content (gzip without a timestamp). A request for a time
interval returns expiring links to the files that cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from callscribe.blobs.base import BlobInfo, BlobStore, key_segment
from callscribe.store.base import CallKey, Store, StoredMessage

log = logging.getLogger(__name__)

FEEDS = ("utterances",)
PREFIX = "exports"
RUNS_PREFIX = f"{PREFIX}/_runs"
HOUR = timedelta(hours=1)
PAGE_SIZE = 1000
MAX_INTERVAL = timedelta(days=31)
FAILED_RUN_RETRY_S = 3600.0


def day_prefix(feed: str, tenant: str, day: date) -> str:
    return f"{PREFIX}/{feed}/{key_segment(tenant)}/{day.isoformat()}/"


def feed_file_key(feed: str, tenant: str, hour_start: datetime) -> str:
    return f"{day_prefix(feed, tenant, hour_start.date())}{hour_start.hour:02d}.jsonl.gz"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utterance_rows(message: StoredMessage, language: str | None) -> list[dict[str, Any]]:
    """One row per utterance entry of a message (a message normally has one)."""
    body = message.body
    response = body.get("autotranscribeResponse", {})
    sender = body.get("sender", {})
    rows = []
    for entry in response.get("utterance", []):
        row: dict[str, Any] = {
            "externalConversationId": body.get("externalConversationId", message.key.guid),
            "namespace": message.key.namespace,
            "streamId": body.get("streamId"),
            "role": sender.get("role"),
            "participantId": sender.get("externalId"),
            "startMs": response.get("start"),
            "endMs": response.get("end"),
            # As delivered: redacted unless the call asked for unredacted output.
            "text": entry.get("text"),
            "language": language,
            # When the utterance was transcribed: within about a second of its end.
            "transcribedAt": iso(message.created_at),
            "messageId": message.message_id,
        }
        if "unredactedText" in entry:  # the call asked for redacted_and_unredacted
            row["unredactedText"] = entry["unredactedText"]
        rows.append(row)
    return rows


@dataclass
class ExportSummary:
    day: date
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> rows written
    files: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "files": self.files, "rows": self.tenants}


class UtteranceExporter:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        spool_dir: Path,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.spool_dir = spool_dir
        self._now = now

    def tenants_active_on(self, day: date) -> list[str]:
        """Tenants holding a key that was valid at some time of ``day``."""
        start, end = _day_bounds(day)
        tenants = {
            key.tenant
            for key in self.store.list_api_keys()
            if key.created_at < end and (key.revoked_at is None or key.revoked_at >= start)
        }
        return sorted(tenants)

    def export_day(self, day: date, tenants: list[str] | None = None) -> ExportSummary:
        summary = ExportSummary(day)
        for tenant in tenants if tenants is not None else self.tenants_active_on(day):
            languages: dict[CallKey, str | None] = {}
            rows = 0
            start, _ = _day_bounds(day)
            for hour in range(24):
                hour_start = datetime.fromtimestamp(start, UTC) + hour * HOUR
                rows += self._export_hour(tenant, hour_start, languages)
                summary.files += 1
            summary.tenants[tenant] = rows
        marker = json.dumps(summary.as_dict() | {"finishedAt": iso(self._now())}).encode()
        self.blobs.put(
            f"{RUNS_PREFIX}/utterances/{day.isoformat()}.json", marker, "application/json"
        )
        log.info("exported %s: %s", day, summary.as_dict())
        return summary

    def _export_hour(
        self, tenant: str, hour_start: datetime, languages: dict[CallKey, str | None]
    ) -> int:
        start = hour_start.timestamp()
        end = (hour_start + HOUR).timestamp()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / f"export-{uuid.uuid4().hex}.jsonl.gz"
        rows = 0
        try:
            # Rows are streamed page by page into the compressed file: memory stays bounded
            # however busy the hour was.
            with (
                open(path, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out,
            ):
                after: tuple[float, str] | None = None
                while True:
                    page = self.store.list_messages_between(
                        tenant, start, end, now=self._now(), limit=PAGE_SIZE, after=after
                    )
                    for message in page:
                        for row in utterance_rows(message, self._language(message.key, languages)):
                            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
                            rows += 1
                    if len(page) < PAGE_SIZE:
                        break
                    after = (page[-1].created_at, page[-1].message_id)
            self.blobs.put_file(
                feed_file_key("utterances", tenant, hour_start), path, "application/gzip"
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return rows

    def _language(self, key: CallKey, cache: dict[CallKey, str | None]) -> str | None:
        if key not in cache:
            call = self.store.get_call(key)
            request = (call.params.get("request") or {}) if call else {}
            cache[key] = (request.get("autotranscribeParams") or {}).get("language")
        return cache[key]

    def is_exported(self, day: date) -> bool:
        return self.blobs.stat(f"{RUNS_PREFIX}/utterances/{day.isoformat()}.json") is not None


def _day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


# Links --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedFile:
    key: str
    hour_start: datetime
    bytes: int
    url: str
    expires_at: float


@dataclass(frozen=True)
class FeedFiles:
    files: list[FeedFile]
    complete: bool  # every hour of the interval has a file


def hours_covering(start: datetime, end: datetime) -> list[datetime]:
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    hour = first
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


def feed_files(
    blobs: BlobStore,
    feed: str,
    tenant: str,
    start: datetime,
    end: datetime,
    *,
    retention_s: float,
    link_ttl_s: int,
    now: float,
) -> FeedFiles:
    """Links to the files of ``feed`` whose hours overlap [start, end), oldest first."""
    wanted = hours_covering(start, end)
    present: dict[str, BlobInfo] = {}
    for day in sorted({hour.date() for hour in wanted}):
        for blob in blobs.list(day_prefix(feed, tenant, day)):
            if blob.modified_at + retention_s > now:  # a file past retention is gone
                present[blob.key] = blob
    files = []
    for hour in wanted:
        stored = present.get(feed_file_key(feed, tenant, hour))
        if stored is None:
            continue
        name = f"{feed}-{tenant}-{hour:%Y-%m-%dT%H}.jsonl.gz"
        files.append(
            FeedFile(
                stored.key,
                hour,
                stored.size,
                blobs.signed_url(stored.key, link_ttl_s, name),
                now + link_ttl_s,
            )
        )
    return FeedFiles(files, complete=len(files) == len(wanted))


# Schedule -----------------------------------------------------------------------------


def next_run(now: float, hour_utc: int) -> float:
    current = datetime.fromtimestamp(now, UTC)
    run = current.replace(hour=hour_utc, minute=0, second=0, microsecond=0)
    if run.timestamp() <= now:
        run += timedelta(days=1)
    return run.timestamp()


def day_due(now: float, hour_utc: int) -> date:
    """The day whose export is due by ``now``: yesterday once today's run hour has passed,
    otherwise the day before."""
    current = datetime.fromtimestamp(now, UTC)
    days_back = 1 if current.hour >= hour_utc else 2
    return (current - timedelta(days=days_back)).date()


async def run_daily(exporter: UtteranceExporter, hour_utc: int) -> None:
    """Forever: export the previous day at ``hour_utc``. On start, catch up on the day that is
    due if a stopped server missed it."""
    while True:
        due = day_due(time.time(), hour_utc)
        wait = next_run(time.time(), hour_utc) - time.time()
        try:
            if not await asyncio.to_thread(exporter.is_exported, due):
                await asyncio.to_thread(exporter.export_day, due)
        except Exception:
            log.exception("export of %s failed; trying again within the hour", due)
            wait = min(wait, FAILED_RUN_RETRY_S)
        await asyncio.sleep(max(1.0, wait))
