"""The ``BlobStore`` port: large outputs (call recordings, export feed files) kept by key.

Keys are ``/``-separated paths (``recordings/acme/twilio/CA…/….wav``). Every adapter (the
directory here, S3 in the AWS deployment) passes ``tests/blobstore_contract.py``. Methods are
synchronous; async callers run them in a thread. Times are UNIX seconds.

Retention is by age: a blob is kept until ``modified_at`` + the retention of its kind. The
directory adapter is purged by ``purge_older_than``; on S3 a bucket lifecycle rule does it
(``purge_older_than`` works there too, for a deployment without the rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

# Characters kept as they are in a key segment. Anything else in a value (a Twilio callSid is
# any string) is percent-encoded by ``key_segment``, so no value can climb out of its prefix.
_SAFE_CHARS = "-_.="
_VALID_SEGMENT = re.compile(r"[A-Za-z0-9_%][A-Za-z0-9._=%-]*")


class BlobNotFound(KeyError):
    """No blob under this key."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int  # bytes
    modified_at: float  # when it was last written


def key_segment(value: str) -> str:
    """``value`` as one safe key segment: letters, digits and ``-_.=`` kept, the rest
    percent-encoded, and never ``.``, ``..`` or empty."""
    encoded = quote(value, safe=_SAFE_CHARS)
    if not encoded or encoded.startswith("."):
        encoded = "%2E" + encoded[1:] if encoded else "%00"
    return encoded


def validate_key(key: str) -> str:
    """Refuse keys that are not ``/``-joined safe segments (``%`` allowed, from
    ``key_segment``)."""
    parts = key.split("/")
    for part in parts:
        if not _VALID_SEGMENT.fullmatch(part):
            raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobStore(Protocol):
    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        """Write (or replace) a small blob from memory."""
        ...

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        """Write (or replace) a blob from a local file, streamed (hours of audio); the file is
        left in place for the caller to remove."""
        ...

    def get(self, key: str) -> bytes:
        """The blob's bytes; ``BlobNotFound`` if there is none."""
        ...

    def stat(self, key: str) -> BlobInfo | None: ...

    def list(self, prefix: str) -> list[BlobInfo]:
        """Blobs whose key starts with ``prefix``, ordered by key."""
        ...

    def delete(self, key: str) -> bool:
        """True if a blob was deleted."""
        ...

    def signed_url(self, key: str, expires_in_s: int, download_name: str | None = None) -> str:
        """A link that fetches the blob without other credentials until it expires. The S3
        adapter returns an absolute pre-signed URL; the directory adapter returns a path on
        the local server (``/callscribe/v1/files/…``), which callers resolve against the
        server's base URL."""
        ...

    def purge_older_than(self, prefix: str, cutoff: float) -> int:
        """Delete blobs under ``prefix`` last written before ``cutoff``; how many."""
        ...
