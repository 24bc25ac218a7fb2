"""Directory adapter of the ``BlobStore`` port (local mode), with links signed by the local
server's key: ``/callscribe/v1/files/<token>`` serves a blob until the token's expiry."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

from callscribe.blobs.base import BlobInfo, BlobNotFound, validate_key
from callscribe.private_files import make_private, private_dir, private_file_descriptor

FILES_PATH = "/callscribe/v1/files/"
LINK_SALT = "callscribe.blob-link"


class LinkError(Exception):
    """A download link that is forged, damaged or expired; ``str(exc)`` is safe to show."""


@dataclass(frozen=True)
class LinkGrant:
    key: str
    download_name: str | None
    expires_at: int


class BlobLinkSigner:
    """Signs (key, expiry) into a URL-safe token. The expiry is part of the signed payload,
    so a link cannot be stretched, and is checked against the clock when the link is used."""

    def __init__(self, signing_key: str) -> None:
        self._serializer = URLSafeSerializer(signing_key, salt=LINK_SALT)

    def token(self, key: str, expires_at: float, download_name: str | None = None) -> str:
        payload: dict[str, object] = {"k": key, "e": int(expires_at)}
        if download_name:
            payload["n"] = download_name
        return self._serializer.dumps(payload)

    def verify(self, token: str, now: float | None = None) -> LinkGrant:
        try:
            payload = self._serializer.loads(token)
        except BadSignature:
            raise LinkError("invalid link") from None
        if not isinstance(payload, dict) or "k" not in payload or "e" not in payload:
            raise LinkError("invalid link")
        if (time.time() if now is None else now) >= payload["e"]:
            raise LinkError("link expired")
        return LinkGrant(payload["k"], payload.get("n"), payload["e"])


class DirectoryBlobStore:
    def __init__(
        self, root: Path, signer: BlobLinkSigner, now: Callable[[], float] = time.time
    ) -> None:
        self.root = root
        self.signer = signer
        self._now = now
        # Recordings and feed files: the owner's only (directories 0700, files 0600).
        private_dir(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _info(self, key: str, path: Path) -> BlobInfo:
        st = path.stat()
        return BlobInfo(key, st.st_size, st.st_mtime)

    def _temporary(self, path: Path) -> Path:
        private_dir(path.parent)
        # A dot name is never a valid key segment, so listings skip half-written files.
        return path.parent / f".{path.name}.{uuid.uuid4().hex}.partial"

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        path = self._path(key)
        tmp = self._temporary(path)
        with os.fdopen(private_file_descriptor(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # readers see the old blob or the new one, never half of one
        return self._info(key, path)

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        target = self._path(key)
        tmp = self._temporary(target)
        try:
            # A hard link costs no copy when the file is on the same file system (the spool
            # directory is inside the data directory); otherwise copy it.
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        # Whatever mode the source had (a link shares it; a copy takes the umask's).
        make_private(tmp)
        os.utime(tmp)  # the blob's age starts now, not when its source was last written
        os.replace(tmp, target)
        return self._info(key, target)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_path(self, key: str) -> Path:
        """The file behind a key, for streaming it out (local server only)."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path

    def stat(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            return self._info(key, path)
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[BlobInfo]:
        # Walk only the deepest directory the prefix names completely.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / directory if directory else self.root
        if directory:
            validate_key(directory)
        found: list[BlobInfo] = []
        if not start.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):  # purged meanwhile
                        found.append(self._info(key, path))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._remove_empty_parents(path.parent)
        return True

    def _remove_empty_parents(self, directory: Path) -> None:
        while directory != self.root:
            try:
                directory.rmdir()  # only succeeds when empty
            except OSError:
                return
            directory = directory.parent

    def signed_url(self, key: str, expires_in_s: int, download_name: str | None = None) -> str:
        validate_key(key)
        return FILES_PATH + self.signer.token(key, self._now() + expires_in_s, download_name)

    def purge_older_than(self, prefix: str, cutoff: float) -> int:
        removed = 0
        for info in self.list(prefix):
            if info.modified_at < cutoff and self.delete(info.key):
                removed += 1
        return removed
