"""ECS task scale-in protection for a task that holds live calls.

Service auto scaling and deployments stop tasks; a task stopped with calls in flight cuts them
(Fargate gives at most 120 s after SIGTERM). While a task holds calls it asks ECS not to choose
it, through the ECS agent's endpoint inside the task (``$ECS_AGENT_URI/task-protection/v1/state``,
which acts with the task role: ``ecs:UpdateTaskProtection``), and it gives the protection up once
it holds none. Protection is asked for with an expiry and renewed at half of it, so a task that
hangs does not stay protected forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)

PROTECTION_PATH = "/task-protection/v1/state"
# What each request asks for: renewed at half of it while calls are live.
PROTECTION_MINUTES = 60
CHECK_INTERVAL_S = 5.0


class TaskProtectionError(RuntimeError):
    """The agent refused or could not be reached."""


class TaskProtection:
    """The ECS agent's task-protection endpoint, for this task."""

    def __init__(self, agent_uri: str, timeout_s: float = 5.0) -> None:
        self._url = agent_uri.rstrip("/") + PROTECTION_PATH
        self._timeout_s = timeout_s

    async def set(self, enabled: bool, expires_minutes: int = PROTECTION_MINUTES) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = expires_minutes
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s) as http:
                response = await http.put(self._url, json=body)
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TaskProtectionError(f"ECS agent unreachable: {exc}") from exc
        # The agent answers {"protection": {...}} or {"failure"|"error": {...}}.
        problem = answer.get("failure") or answer.get("error") if isinstance(answer, dict) else None
        if response.status_code != 200 or problem or "protection" not in answer:
            raise TaskProtectionError(f"ECS agent answered {response.status_code}: {answer}")


class ScaleInGuard:
    """Keeps the task protected exactly while ``live_calls()`` is above zero."""

    def __init__(
        self,
        protection: TaskProtection,
        live_calls: Callable[[], int],
        *,
        interval_s: float = CHECK_INTERVAL_S,
        expires_minutes: int = PROTECTION_MINUTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protection = protection
        self.live_calls = live_calls
        self.interval_s = interval_s
        self.expires_minutes = expires_minutes
        self.clock = clock
        self.protected = False
        self._renew_at = 0.0
        self.failures = 0

    async def check(self) -> None:
        """One look: protect, renew or release as the live calls say."""
        busy = self.live_calls() > 0
        now = self.clock()
        if busy and (not self.protected or now >= self._renew_at):
            await self.protection.set(True, self.expires_minutes)
            self.protected = True
            self._renew_at = now + self.expires_minutes * 60 / 2
            log.info("scale-in protection on (%d live calls)", self.live_calls())
        elif not busy and self.protected:
            await self.protection.set(False)
            self.protected = False
            log.info("scale-in protection off (no live calls)")

    async def run(self) -> None:
        """Checks every ``interval_s`` until cancelled; a failure is logged and tried again."""
        while True:
            try:
                await self.check()
            except TaskProtectionError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 60 == 0:
                    log.warning("scale-in protection: %s (%d failures)", exc, self.failures)
            await asyncio.sleep(self.interval_s)
