"""The ``EventBus`` port: a transcript, once persisted, is published here for delivery.

Local adapter: an in-process fan-out to subscribers (the webhook dispatcher). The AWS adapter
sends each transcript straight to the SQS FIFO delivery queue that the webhook Lambda reads,
in its conversation's message group, and copies it to the EventBridge bus for customers' own
rules (``DeliveryWithFanOut``: the copy is best effort and never holds up delivery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscriptEvent:
    tenant: str
    namespace: str
    conversation_id: str  # the call's guid
    message_id: str
    seq: int
    body: dict[str, Any]
    # When the endpointer closed the utterance (UNIX time, after its end-of-speech silence
    # wait): where the webhook's delivery latency counts from. None: not known.
    endpointed_at: float | None = None

    @property
    def group(self) -> str:
        """Delivery order is kept within this group."""
        return f"{self.tenant}/{self.namespace}/{self.conversation_id}"


class EventBus(Protocol):
    async def publish(self, event: TranscriptEvent) -> None:
        """Hand ``event`` to delivery; raises when it could not be handed off (the caller
        records that as a delivery failure)."""
        ...

    async def close(self) -> None:
        """At shutdown, after the last publish: wait (bounded) for what publish left running
        in the background."""
        ...


class InProcessEventBus:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[TranscriptEvent], None]] = []

    def subscribe(self, handler: Callable[[TranscriptEvent], None]) -> None:
        self._subscribers.append(handler)

    async def publish(self, event: TranscriptEvent) -> None:
        for handler in self._subscribers:
            try:
                handler(event)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event subscriber failed for message %s", event.message_id)

    async def close(self) -> None:
        pass  # subscribers run inside publish: nothing is left running


@dataclass
class FanOutStats:
    sent: int = 0
    failed: int = 0
    # Not attempted: more than ``max_pending`` copies were waiting (the fan-out is down or slow).
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}


class DeliveryWithFanOut:
    """One bus for delivery, another for fan-out.

    ``publish`` returns once ``delivery`` has the event, and raises what ``delivery`` raises.
    The copy to ``fan_out`` runs in the background: a slow or failing fan-out neither delays
    nor fails delivery, and no conversation's next message waits for it. Fan-out failures are
    logged and counted; at most ``concurrency`` copies are in flight (each holds a thread of
    the default executor, which the Store and delivery need too) and at most ``max_pending``
    wait, beyond which copies are dropped and counted.
    """

    def __init__(
        self,
        delivery: EventBus,
        fan_out: EventBus,
        *,
        concurrency: int = 2,
        max_pending: int = 1000,
    ) -> None:
        self.delivery = delivery
        self.fan_out = fan_out
        self.max_pending = max_pending
        self.stats = FanOutStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._copies: set[asyncio.Task[None]] = set()

    async def publish(self, event: TranscriptEvent) -> None:
        # Started first: the copy and the delivery go out side by side, and a delivery that
        # fails does not stop the copy (customers' own consumers may still want the event).
        if len(self._copies) >= self.max_pending:
            self.stats.dropped += 1
            log.warning(
                "fan-out of %s dropped: %d copies already waiting",
                event.message_id,
                self.max_pending,
            )
        else:
            copy = asyncio.get_running_loop().create_task(
                self._copy(event), name=f"fan-out {event.message_id}"
            )
            self._copies.add(copy)
            copy.add_done_callback(self._copies.discard)
        await self.delivery.publish(event)

    async def _copy(self, event: TranscriptEvent) -> None:
        async with self._slots:
            try:
                await self.fan_out.publish(event)
            except Exception as exc:
                self.stats.failed += 1
                log.warning(
                    "fan-out of %s (%s) failed (%d so far): %s",
                    event.message_id,
                    event.group,
                    self.stats.failed,
                    exc,
                )
            else:
                self.stats.sent += 1

    @property
    def pending(self) -> int:
        return len(self._copies)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Give the copies still running ``timeout_s`` to finish; the rest are cancelled and
        counted as dropped."""
        if self._copies:
            _, unfinished = await asyncio.wait(set(self._copies), timeout=timeout_s)
            for copy in unfinished:
                copy.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            self.stats.dropped += len(unfinished)
            if unfinished:
                log.warning("fan-out: %d copies unfinished at shutdown", len(unfinished))
        await self.delivery.close()
        await self.fan_out.close()
