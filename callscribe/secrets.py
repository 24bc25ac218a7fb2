"""The ``Secrets`` port: the stream-token signing key and webhook credentials.

Local adapter: one JSON file in the data directory, readable by its owner only. The AWS
adapter (Secrets Manager) implements the same four methods. Values are never logged.

Names: ``stream-token-signing-key``, ``file-link-signing-key`` (local download links), and per
tenant ``webhook/<tenant>/<credential>`` (see ``callscribe.webhooks.targets``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

TOKEN_SIGNING_KEY = "stream-token-signing-key"
FILE_LINK_SIGNING_KEY = "file-link-signing-key"


class Secrets(Protocol):
    def get(self, name: str) -> str | None: ...

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str: ...

    def put(self, name: str, value: str) -> None:
        """Create or replace."""
        ...

    def delete(self, name: str) -> bool:
        """True if the secret existed."""
        ...


def new_signing_key() -> str:
    return secrets.token_urlsafe(48)


class FileSecrets:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Threads of this process and other processes (the CLI writes webhook credentials
        while the server runs) take turns at a read-modify-write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())

    def get(self, name: str) -> str | None:
        with self._lock():
            return self._read().get(name)

    def _write(self, values: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        os.replace(tmp, self.path)

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str:
        with self._lock():
            values = self._read()
            if name not in values:
                values[name] = generate()
                self._write(values)
            return values[name]

    def put(self, name: str, value: str) -> None:
        with self._lock():
            values = self._read()
            values[name] = value
            self._write(values)

    def delete(self, name: str) -> bool:
        with self._lock():
            values = self._read()
            if name not in values:
                return False
            del values[name]
            self._write(values)
            return True
