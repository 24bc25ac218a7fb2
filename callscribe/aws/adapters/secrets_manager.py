"""Secrets Manager adapter of the ``Secrets`` port.

The stack creates the deployment's own secrets (the token-signing key and the control secret,
generated at deploy time) and passes their ARNs in: ``secret_ids`` maps the port's names to
them. Every other name (tenants' webhook credentials, ``webhook/<tenant>/token`` and so on) is
a secret named ``<name_prefix><name>``, created and replaced by `callscribe webhook set`.
Values are cached for the life of the process (a Lambda container or a task) for at most
``cache_ttl_s``, so a rotated credential is picked up without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# Deleted secrets stay recoverable this long (the Secrets Manager minimum is 7 days).
RECOVERY_WINDOW_DAYS = 7


class SecretsManagerSecrets:
    def __init__(
        self,
        secret_ids: dict[str, str],
        client: Any | None = None,
        name_prefix: str = "callscribe/",
        cache_ttl_s: float = 300.0,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("secretsmanager")
        self._client = client
        self._ids = dict(secret_ids)
        self._prefix = name_prefix
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _secret_id(self, name: str) -> str:
        return self._ids.get(name) or f"{self._prefix}{name}"

    def get(self, name: str) -> str | None:
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and time.monotonic() - cached[1] < self._cache_ttl_s:
                return cached[0]
        try:
            value = self._client.get_secret_value(SecretId=self._secret_id(name))["SecretString"]
        except (
            self._client.exceptions.ResourceNotFoundException,
            self._client.exceptions.InvalidRequestException,  # scheduled for deletion
        ):
            return None
        self._remember(name, value)
        return value

    def _remember(self, name: str, value: str) -> None:
        with self._lock:
            self._cache[name] = (value, time.monotonic())

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str:
        value = self.get(name)
        if value is not None:
            return value
        # Only for a deployment whose stack did not create it: make it once, then reuse it.
        value = generate()
        try:
            self._client.create_secret(Name=self._secret_id(name), SecretString=value)
        except self._client.exceptions.ResourceExistsException:
            value = self._client.get_secret_value(SecretId=self._secret_id(name))["SecretString"]
        self._remember(name, value)
        return value

    def put(self, name: str, value: str) -> None:
        secret_id = self._secret_id(name)
        try:
            self._client.put_secret_value(SecretId=secret_id, SecretString=value)
        except self._client.exceptions.ResourceNotFoundException:
            self._client.create_secret(Name=secret_id, SecretString=value)
        self._remember(name, value)

    def delete(self, name: str) -> bool:
        with self._lock:
            self._cache.pop(name, None)
        try:
            self._client.delete_secret(
                SecretId=self._secret_id(name), RecoveryWindowInDays=RECOVERY_WINDOW_DAYS
            )
        except (
            self._client.exceptions.ResourceNotFoundException,
            self._client.exceptions.InvalidRequestException,  # already scheduled for deletion
        ):
            return False
        return True
