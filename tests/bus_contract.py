"""The contract every ``EventBus`` adapter honours (``callscribe/bus.py``): what a transcript
publisher may rely on, seen from the consumer that delivers the events (the webhook
dispatcher in-process; the delivery queue the webhook Lambda reads in AWS).

Subclass and provide two fixtures, as tests/test_bus_contract.py does for each adapter:
``bus``, the adapter, and ``deliveries``, a callable that returns what reached the consumer
since it was last called, in the order the consumer receives it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from callscribe.bus import EventBus, TranscriptEvent


@dataclass(frozen=True)
class Delivery:
    # The consumer keeps order within a group (an SQS FIFO message group in AWS).
    group: str
    event: TranscriptEvent


Deliveries = Callable[[], list[Delivery]]


def transcript(
    conversation: str, seq: int, tenant: str = "acme", namespace: str = "twilio"
) -> TranscriptEvent:
    return TranscriptEvent(
        tenant=tenant,
        namespace=namespace,
        conversation_id=conversation,
        message_id=f"{tenant}-{namespace}-{conversation}-{seq}",
        seq=seq,
        body={
            "type": "transcript",
            "externalConversationId": conversation,
            "autotranscribeResponse": {"utterance": [{"text": f"utterance {seq}"}]},
        },
    )


class EventBusContract:
    async def test_nothing_is_delivered_before_anything_is_published(
        self, bus: EventBus, deliveries: Deliveries
    ) -> None:
        assert deliveries() == []

    async def test_a_published_event_is_delivered_whole_once_publish_returns(
        self, bus: EventBus, deliveries: Deliveries
    ) -> None:
        event = TranscriptEvent(
            tenant="acme",
            namespace="siprec",
            conversation_id="UCID-00001-2026:a.b_c",
            message_id="5f0c4a52-6f1e-4d7e-9c53-0d7d1e9d8a10",
            seq=41,
            body={
                "type": "transcript",
                "externalConversationId": "UCID-00001-2026:a.b_c",
                "sender": {"externalId": "agent 7", "role": "agent"},
                "autotranscribeResponse": {
                    "start": 1520,
                    "end": 4980,
                    "utterance": [
                        {
                            "text": "Grüße, ça va? 你好 — card #### ####",
                            "tokens": [{"token": "Grüße", "start": 1520, "confidence": 0.875}],
                        }
                    ],
                },
                "redacted": True,
                "note": None,
            },
        )
        await bus.publish(event)
        # Persist-then-publish relies on it: once publish returns the event is handed off,
        # with nothing left to wait for.
        (delivered,) = deliveries()
        assert delivered.event == event
        assert deliveries() == []

    async def test_each_conversation_is_delivered_in_publish_order(
        self, bus: EventBus, deliveries: Deliveries
    ) -> None:
        published = [
            transcript(conversation, seq)
            for seq in range(6)
            for conversation in ("CA1", "CA2", "CA3")
        ]
        for event in published:
            await bus.publish(event)
        delivered = deliveries()
        assert sorted(d.event.message_id for d in delivered) == sorted(
            e.message_id for e in published
        )
        by_group: dict[str, list[TranscriptEvent]] = defaultdict(list)
        for delivery in delivered:
            by_group[delivery.group].append(delivery.event)
        assert len(by_group) == 3
        for events in by_group.values():
            (conversation,) = {e.conversation_id for e in events}
            assert [e.seq for e in events] == list(range(6)), conversation

    async def test_one_group_per_conversation_keyed_by_tenant_namespace_and_guid(
        self, bus: EventBus, deliveries: Deliveries
    ) -> None:
        # The same guid under another tenant or namespace is another conversation, and must
        # not be ordered behind (or delivered as) this one.
        keys = [("acme", "twilio"), ("globex", "twilio"), ("acme", "siprec")]
        for seq in range(2):
            for tenant, namespace in keys:
                await bus.publish(transcript("CA1", seq, tenant=tenant, namespace=namespace))
        groups: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for delivery in deliveries():
            event = delivery.event
            groups[(event.tenant, event.namespace, event.conversation_id)].add(delivery.group)
        assert sorted(groups) == sorted((tenant, namespace, "CA1") for tenant, namespace in keys)
        assert all(len(group) == 1 for group in groups.values())
        assert len(set.union(*groups.values())) == len(keys)

    async def test_events_published_concurrently_are_each_delivered_once(
        self, bus: EventBus, deliveries: Deliveries
    ) -> None:
        published = [transcript(f"CA{n}", 0) for n in range(8)]
        await asyncio.gather(*(bus.publish(event) for event in published))
        delivered = deliveries()
        assert sorted(d.event.message_id for d in delivered) == sorted(
            e.message_id for e in published
        )
        assert {d.event.message_id: d.event for d in delivered} == {
            e.message_id: e for e in published
        }
