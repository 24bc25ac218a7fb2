"""EventBridge adapter of the ``EventBus`` port.

Each transcript becomes one event on the deployment's custom bus. The stack's rule sends it to
an SQS FIFO queue whose message group is the event's ``group`` (one per conversation), so the
webhook Lambda delivers each conversation's messages in order while conversations proceed in
parallel. ``group`` is a SHA-256 of tenant, namespace and guid: SQS allows 128 characters and a
restricted alphabet, while the parts may be longer or contain other characters.
"""

from __future__ import annotations

import asyncio
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
    )


class EventBridgeBus:
    def __init__(self, bus_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("events")
        self.bus_name = bus_name
        self._client = client

    async def publish(self, event: TranscriptEvent) -> None:
        await asyncio.to_thread(self.put, event)

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
