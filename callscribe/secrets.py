"""The ``Secrets`` port: the stream-token signing key and webhook credentials.

Local adapter: one JSON file in the data directory, readable by its owner only. The AWS
adapter (Secrets Manager) implements the same two methods.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

TOKEN_SIGNING_KEY = "stream-token-signing-key"


class Secrets(Protocol):
    def get(self, name: str) -> str | None: ...

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str: ...


def new_signing_key() -> str:
    return secrets.token_urlsafe(48)


class FileSecrets:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._read().get(name)

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str:
        with self._lock:
            values = self._read()
            if name not in values:
                values[name] = generate()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(values, f)
                os.replace(tmp, self.path)
            return values[name]
