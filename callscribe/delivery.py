"""Webhook delivery with the contract's semantics.

Per conversation, messages are POSTed one at a time in the order transcribed. An error
response or a timeout is recorded in the Store and the message is dropped (no retries, as the
reference API promises). When a slow target lets more than ``max_pending`` messages queue up
for one conversation, the oldest pending are dropped first, and each drop is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass

import httpx

from callscribe.bus import TranscriptEvent
from callscribe.store.base import DeliveryFailure, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret_name: str | None = None
    secret: str | None = None
    secret_in: str = "header"  # or "query"
    timeout_s: float = 5.0

    def request_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query parameters) carrying the shared secret, if one is configured."""
        if not self.secret_name or self.secret is None:
            return {}, {}
        if self.secret_in == "query":
            return {}, {self.secret_name: self.secret}
        return {self.secret_name: self.secret}, {}


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class WebhookDispatcher:
    def __init__(
        self,
        target: WebhookTarget,
        store: Store,
        max_pending: int = 100,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.target = target
        self.store = store
        self.max_pending = max_pending
        self.stats = DeliveryStats()
        self._client = client or httpx.AsyncClient(
            timeout=target.timeout_s,
            # httpx writes headers and body separately; without TCP_NODELAY, Nagle's algorithm
            # and the receiver's delayed ACK add ~40 ms to every POST.
            transport=httpx.AsyncHTTPTransport(
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            ),
        )
        self._queues: dict[str, deque[TranscriptEvent]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def __call__(self, event: TranscriptEvent) -> None:
        """EventBus subscriber: queue the event and make sure its conversation has a worker."""
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
                await self._post(queue.popleft())
        finally:
            # No await since the loop's last check, so nothing was queued in between.
            self._workers.pop(group, None)
            if not queue:
                self._queues.pop(group, None)

    async def _post(self, event: TranscriptEvent) -> None:
        headers, params = self.target.request_parts()
        headers = {**headers, "X-CallScribe-Message-Id": event.message_id}
        try:
            response = await self._client.post(
                self.target.url,
                json=event.body,
                headers=headers,
                params=params,
                timeout=self.target.timeout_s,
            )
        except httpx.TimeoutException:
            self._fail(event, f"timeout after {self.target.timeout_s:g} s", None)
            return
        except httpx.HTTPError as exc:
            self._fail(event, f"{type(exc).__name__}: {exc}"[:500], None)
            return
        if response.is_success:
            self.stats.delivered += 1
        else:
            self._fail(event, f"http {response.status_code}", response.status_code)

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

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued has been attempted."""
        deadline = time.monotonic() + timeout_s
        while self._workers and time.monotonic() < deadline:
            await asyncio.wait(list(self._workers.values()), timeout=deadline - time.monotonic())

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await self._client.aclose()
