"""The ``EventBus`` port: a transcript, once persisted, is published here for delivery.

Local adapter: an in-process fan-out to subscribers (the webhook dispatcher). The AWS adapter
puts the same event on an EventBridge bus whose rule feeds an SQS FIFO queue grouped by
conversation.
"""

from __future__ import annotations

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

    @property
    def group(self) -> str:
        """Delivery order is kept within this group."""
        return f"{self.tenant}/{self.namespace}/{self.conversation_id}"


class EventBus(Protocol):
    async def publish(self, event: TranscriptEvent) -> None: ...


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
