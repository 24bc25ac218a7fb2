"""EventBridge adapter of the ``EventBus`` port, and the transcript event's shape.

Each transcript becomes one event (source ``callscribe``, detail-type ``transcript``) on the
deployment's custom bus, for customers' own rules and consumers: the fan-out. Webhook delivery
does not go through the bus (EventBridge keeps no order between events, and a rule can give an
SQS FIFO target only one fixed message group); the tasks send each transcript straight to the
delivery queue (``sqs_delivery_bus``), in this same shape, so the webhook Lambda reads one
format. ``group`` is a SHA-256 of tenant, namespace and guid: SQS allows 128 characters and a
restricted alphabet, while the parts may be longer or contain other characters.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from typing import Any

from callscribe.bus import TranscriptEvent

SOURCE = "callscribe"
DETAIL_TYPE = "transcript"


class EventBusError(RuntimeError):
    pass


def message_group(event: TranscriptEvent) -> str:
    return hashlib.sha256(event.group.encode()).hexdigest()


def event_detail(event: TranscriptEvent) -> dict[str, Any]:
    return {
        "tenant": event.tenant,
        "namespace": event.namespace,
        "conversationId": event.conversation_id,
        "messageId": event.message_id,
        "seq": event.seq,
        "group": message_group(event),
        "body": event.body,
        "endpointedAt": event.endpointed_at,
    }


def event_from_detail(detail: dict[str, Any]) -> TranscriptEvent:
    """Inverse of ``event_detail``; raises KeyError/TypeError on a malformed detail."""
    return TranscriptEvent(
        tenant=str(detail["tenant"]),
        namespace=str(detail["namespace"]),
        conversation_id=str(detail["conversationId"]),
        message_id=str(detail["messageId"]),
        seq=int(detail["seq"]),
        body=dict(detail["body"]),
        endpointed_at=_optional_time(detail.get("endpointedAt")),
    )


def _optional_time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def transcript_envelope(event: TranscriptEvent, at: float) -> dict[str, Any]:
    """The event as EventBridge delivers it to a target (``version``, ``id``, ``source``,
    ``detail-type``, ``time``, ``detail``), without the account and region EventBridge adds:
    the delivery queue's message body, which the webhook Lambda parses."""
    return {
        "version": "0",
        "id": event.message_id,
        "source": SOURCE,
        "detail-type": DETAIL_TYPE,
        "time": datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resources": [],
        "detail": event_detail(event),
    }


class EventBridgeBus:
    def __init__(self, bus_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("events")
        self.bus_name = bus_name
        self._client = client

    async def publish(self, event: TranscriptEvent) -> None:
        await asyncio.to_thread(self.put, event)

    async def close(self) -> None:
        pass  # publish returns once EventBridge has the event

    def put(self, event: TranscriptEvent) -> None:
        response = self._client.put_events(
            Entries=[
                {
                    "Source": SOURCE,
                    "DetailType": DETAIL_TYPE,
                    "EventBusName": self.bus_name,
                    "Detail": json.dumps(event_detail(event)),
                }
            ]
        )
        if response.get("FailedEntryCount"):
            entry = response["Entries"][0]
            raise EventBusError(
                f"EventBridge refused message {event.message_id}: "
                f"{entry.get('ErrorCode')} {entry.get('ErrorMessage')}"
            )
