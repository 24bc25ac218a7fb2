"""Retention of everything a call leaves behind: messages (Store), recordings and feed files
(BlobStore). Messages expire ``message_retention_days`` after their call completes;
recordings and feed files by age, ``recording_retention_days`` / ``export_retention_days``
after they were stored. Reads honour the expiry at once (an expired recording or feed file
gets no link); this purge removes the bytes."""

from __future__ import annotations

from dataclasses import dataclass

from callscribe.blobs.base import BlobStore
from callscribe.export import PREFIX as EXPORTS_PREFIX
from callscribe.recording import Recordings
from callscribe.store.base import Store


@dataclass
class Retention:
    store: Store
    blobs: BlobStore
    recordings: Recordings
    export_retention_s: float

    def purge(self, now: float) -> dict[str, int]:
        return {
            "messages": self.store.purge_expired(now),
            "recordings": self.recordings.purge(now),
            "feedFiles": self.blobs.purge_older_than(
                EXPORTS_PREFIX + "/", now - self.export_retention_s
            ),
        }
