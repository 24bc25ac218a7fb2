"""Webhook delivery with the contract's semantics.

Per conversation, messages are POSTed one at a time in the order transcribed. An error
response or a timeout is recorded in the Store (status, reason, time, message id) and the
message is dropped: no retries, as the reference API promises, unless the tenant's config asks
for a retry policy. When a slow target lets more than ``max_pending`` messages queue up for one
conversation, the oldest pending are dropped first, and each drop is recorded. At shutdown,
whatever the drain did not deliver (still queued, or a POST still unanswered) is recorded too,
so every message is either delivered or listed by the webhook-failures API.

Every POST is signed (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) and carries the tenant's credentials: a secret token in a header or
query parameter, or an OAuth2 bearer token (fetched anew and the POST repeated once on a 401).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from callscribe.bus import TranscriptEvent
from callscribe.store.base import DeliveryFailure, Store
from callscribe.webhooks.signing import signature_headers
from callscribe.webhooks.targets import (
    ResolvedTarget,
    TargetResolver,
    WebhookAuthError,
    WebhookTarget,
)

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, and a tenant's secret token may travel as a query
# parameter: credentials must never reach the logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

MESSAGE_ID_HEADER = "X-CallScribe-Message-Id"
# Answers worth another attempt when a retry policy is on: the target may recover.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Reasons recorded for messages the shutdown drain did not deliver. An unanswered POST may
# still have reached the target: its reason says so, as the target may see it twice after a
# replay from the after-call API.
SHUTDOWN_BEFORE_DELIVERY = "shutdown before delivery"
SHUTDOWN_DURING_DELIVERY = "shutdown during delivery: no answer before the drain ended"

__all__ = ["WebhookDispatcher", "WebhookTarget", "DeliveryStats", "MESSAGE_ID_HEADER"]


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0  # extra attempts made under a retry policy
    unrouted: int = 0  # messages of tenants with no webhook configured
    abandoned: int = 0  # not delivered when the dispatcher closed (shutdown)


@dataclass(frozen=True)
class _Outcome:
    reason: str
    status: int | None
    retryable: bool


class WebhookDispatcher:
    def __init__(
        self,
        targets: TargetResolver,
        store: Store,
        max_pending: int = 100,
        on_delivered: Callable[[TranscriptEvent, float], None] | None = None,
    ) -> None:
        """``on_delivered``: told of each event its receiver accepted, with the time (UNIX) it
        did: what the webhook Lambda's delivery-latency metric counts."""
        self.targets = targets
        self.store = store
        self.max_pending = max_pending
        self.on_delivered = on_delivered
        self.stats = DeliveryStats()
        self._queues: dict[str, deque[TranscriptEvent]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._in_flight: dict[str, TranscriptEvent] = {}  # per conversation, being POSTed
        self._closed = False

    def __call__(self, event: TranscriptEvent) -> None:
        """EventBus subscriber: queue the event and make sure its conversation has a worker."""
        if self._closed:  # published after shutdown began: no worker will ever take it
            self._abandon(event, SHUTDOWN_BEFORE_DELIVERY)
            return
        queue = self._queues.setdefault(event.group, deque())
        queue.append(event)
        while len(queue) > self.max_pending:
            dropped = queue.popleft()
            self.stats.dropped += 1
            self._record(dropped, f"dropped: more than {self.max_pending} pending", None)
        if event.group not in self._workers:
            self._workers[event.group] = asyncio.get_running_loop().create_task(
                self._drain(event.group), name=f"webhook {event.group}"
            )

    async def _drain(self, group: str) -> None:
        queue = self._queues[group]
        try:
            while queue:
                event = self._in_flight[group] = queue.popleft()
                await self._deliver(event)
                del self._in_flight[group]
        finally:
            # No await since the loop's last check, so nothing was queued in between.
            self._workers.pop(group, None)
            if not queue:
                self._queues.pop(group, None)

    async def _deliver(self, event: TranscriptEvent) -> None:
        try:
            target = await self.targets.resolve(event.tenant)
        except Exception as exc:  # a broken configuration (bad PEM, missing credential)
            self._fail(event, f"webhook configuration: {exc}"[:500], None)
            return
        if target is None:
            self.stats.unrouted += 1
            return
        # Serialised once: the signature covers exactly these bytes.
        body = json.dumps(event.body, ensure_ascii=False, separators=(",", ":")).encode()
        attempts = 1 + max(0, target.retry_attempts)
        for attempt in range(attempts):
            try:
                outcome = await self._attempt(target, event, body)
            except Exception as exc:  # never lose a message silently, whatever went wrong
                log.exception("webhook delivery of %s raised", event.message_id)
                outcome = _Outcome(f"internal error: {type(exc).__name__}", None, retryable=False)
            if outcome is None:
                self.stats.delivered += 1
                if self.on_delivered is not None:
                    self.on_delivered(event, time.time())
                return
            if not outcome.retryable or attempt + 1 == attempts:
                break
            self.stats.retried += 1
            await asyncio.sleep(target.retry_backoff_s * 2**attempt)
        assert outcome is not None  # the loop left only on a failed attempt
        reason = outcome.reason
        if attempt:
            reason += f" (after {attempt + 1} attempts)"
        self._fail(event, target.redact(reason), outcome.status)

    async def _attempt(
        self, target: ResolvedTarget, event: TranscriptEvent, body: bytes
    ) -> _Outcome | None:
        """One POST (two when an OAuth2 token is refused and renewed); None on success."""
        refreshed = False
        while True:
            headers, params = target.credential_parts()
            headers = {
                **headers,
                "content-type": "application/json",
                MESSAGE_ID_HEADER: event.message_id,
                **signature_headers(target.signing_secret, event.message_id, body),
            }
            token = None
            if target.oauth is not None:
                try:
                    token = await target.oauth.token()
                except WebhookAuthError as exc:
                    return _Outcome(str(exc), None, retryable=True)
                headers["authorization"] = f"Bearer {token}"
            try:
                response = await target.client.post(
                    target.url,
                    content=body,
                    headers=headers,
                    params=params,
                    timeout=target.timeout_s,
                )
            except httpx.TimeoutException:
                return _Outcome(f"timeout after {target.timeout_s:g} s", None, retryable=True)
            except httpx.HTTPError as exc:
                return _Outcome(f"{type(exc).__name__}: {exc}"[:500], None, retryable=True)
            if response.is_success:
                return None
            if response.status_code == 401 and token is not None and not refreshed:
                assert target.oauth is not None
                target.oauth.invalidate(token)
                refreshed = True
                continue
            status = response.status_code
            return _Outcome(f"http {status}", status, retryable=status in RETRYABLE_STATUS)

    def _fail(self, event: TranscriptEvent, reason: str, status: int | None) -> None:
        self.stats.failed += 1
        self._record(event, reason, status)

    def _record(self, event: TranscriptEvent, reason: str, status: int | None) -> None:
        log.warning("webhook delivery of %s (%s) failed: %s", event.message_id, event.group, reason)
        failure = DeliveryFailure(
            tenant=event.tenant,
            conversation_id=event.conversation_id,
            message_id=event.message_id,
            reason=reason,
            status_code=status,
            at=time.time(),
        )
        try:
            self.store.put_delivery_failure(failure)
        except Exception:
            log.exception("could not record delivery failure of %s", event.message_id)

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.stats.delivered,
            "failed": self.stats.failed,
            "dropped": self.stats.dropped,
            "retried": self.stats.retried,
            "unrouted": self.stats.unrouted,
            "abandoned": self.stats.abandoned,
            "pending": self.pending,
        }

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued has been attempted."""
        deadline = time.monotonic() + timeout_s
        while self._workers and time.monotonic() < deadline:
            await asyncio.wait(list(self._workers.values()), timeout=deadline - time.monotonic())

    async def close(self) -> None:
        """Stop delivering (after ``drain``): every message not delivered by now is recorded
        as a delivery failure, never silently lost."""
        self._closed = True
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        # Let the workers unwind, so that none is left between taking and recording a message.
        await asyncio.gather(*workers, return_exceptions=True)
        for event in self._in_flight.values():
            self._abandon(event, SHUTDOWN_DURING_DELIVERY)
        self._in_flight.clear()
        for queue in self._queues.values():
            for event in queue:
                self._abandon(event, SHUTDOWN_BEFORE_DELIVERY)
        self._queues.clear()
        await self.targets.close()

    def _abandon(self, event: TranscriptEvent, reason: str) -> None:
        self.stats.abandoned += 1
        self._record(event, reason, None)
