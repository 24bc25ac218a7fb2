"""Secrets Manager adapter of the ``Secrets`` port.

The stack creates the secrets (the token-signing key and the control secret are generated at
deploy time) and passes their ARNs in; the adapter maps the port's names to those ARNs and
caches values for the life of the process (a Lambda container or a task).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class SecretsManagerSecrets:
    def __init__(self, secret_ids: dict[str, str], client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("secretsmanager")
        self._client = client
        self._ids = dict(secret_ids)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        secret_id = self._ids.get(name)
        if secret_id is None:
            return None
        try:
            value = self._client.get_secret_value(SecretId=secret_id)["SecretString"]
        except self._client.exceptions.ResourceNotFoundException:
            return None
        with self._lock:
            self._cache[name] = value
        return value

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str:
        value = self.get(name)
        if value is not None:
            return value
        secret_id = self._ids.get(name)
        if secret_id is None:
            raise KeyError(f"no secret is configured for {name!r}")
        # Only for a deployment whose stack did not create it: make it once, then reuse it.
        value = generate()
        try:
            self._client.create_secret(Name=secret_id, SecretString=value)
        except self._client.exceptions.ResourceExistsException:
            value = self._client.get_secret_value(SecretId=secret_id)["SecretString"]
        with self._lock:
            self._cache[name] = value
        return value
