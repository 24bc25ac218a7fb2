"""Webhook order under load, on the path the AWS deployment runs (moto's server on loopback):

    200 conversations, published interleaved through the tasks' bus (adapters.transcript_bus:
    SendMessage to the delivery FIFO queue in the conversation's group, a copy to EventBridge)
        ──▶ SQS FIFO ──▶ event source mapping stand-in: 4 execution environments (processes),
            each receiving batches and invoking the webhook Lambda's handler ──▶ a real HTTP
            receiver

Each conversation's messages must arrive in the order they were published while the
conversations proceed side by side. Each hop is timed and printed (run with -s); moto's
figures are not AWS's (the README's "Webhook latency" has those).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

from callscribe import adapters
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import webhook_lambda
from callscribe.aws.settings import AwsSettings
from callscribe.bus import DeliveryWithFanOut, TranscriptEvent
from callscribe.testing.simulate import WebhookReceiver
from callscribe.webhooks.delivery import MESSAGE_ID_HEADER
from tests.aws_fixtures import REGION, AwsResources, create_resources
from tests.cloud_support import DeliveryQueueMapping, moto_endpoint, print_hops

pytestmark = pytest.mark.e2e
__all__ = ["moto_endpoint"]  # the fixture

CONVERSATIONS = 200
MESSAGES_EACH = 5
POLLERS = 4


@pytest.fixture
def deployment(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> Iterator[AwsResources]:
    resources = create_resources(moto_endpoint)
    # What the stack gives the webhook Lambda.
    monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", receiver.url)
    webhook_lambda.webhook_delivery.cache_clear()
    yield resources
    webhook_lambda.webhook_delivery.cache_clear()


def transcript(conversation: int, seq: int) -> TranscriptEvent:
    guid = f"CA{conversation:032d}"
    return TranscriptEvent(
        tenant=("acme", "globex")[conversation % 2],
        namespace="twilio",
        conversation_id=guid,
        message_id=f"{guid}-{seq}",
        seq=seq,
        body={
            "type": "transcript",
            "externalConversationId": guid,
            "autotranscribeResponse": {"utterance": [{"text": f"utterance {seq} of {guid}"}]},
        },
    )


def received_count(queue_url: str) -> int:
    sqs = boto3.client("sqs", region_name=REGION)
    count = 0
    while batch := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        count += len(batch)
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return count


@dataclass
class Run:
    """What went out and what came back of one load run."""

    published: dict[str, tuple[float, float]]  # message id: publish called, returned
    publish_s: float
    mapping: DeliveryQueueMapping
    receiver: WebhookReceiver

    def arrivals(self) -> dict[str, float]:
        return {m.headers[MESSAGE_ID_HEADER.lower()]: m.received_at for m in self.receiver.messages}

    def print_hops(self, title: str) -> None:
        arrival, hops = self.arrivals(), self.mapping.hops
        print_hops(
            title,
            [
                (
                    "publish: SendMessage (fan-out runs beside)",
                    (r - s for s, r in self.published.values()),
                ),
                (
                    "queue: SQS accepted -> poller received",
                    (h.received_at - h.queued_at for h in hops.values()),
                ),
                (
                    "handler invoked -> receiver got the POST",
                    (arrival[m] - h.invoked_at for m, h in hops.items()),
                ),
                (
                    "handler invocation (batch of up to 10)",
                    (h.returned_at - h.invoked_at for h in hops.values()),
                ),
                (
                    "end to end: publish called -> receiver",
                    (arrival[m] - s for m, (s, _) in self.published.items()),
                ),
            ],
        )


def tasks_bus(resources: AwsResources) -> DeliveryWithFanOut:
    """The tasks' bus, composed as adapters.aws composes it from the stack's environment."""
    bus = adapters.transcript_bus(
        AwsSettings(
            table_name=resources.table_name,
            token_secret_arn=resources.token_secret_arn,
            control_secret_arn=resources.control_secret_arn,
            delivery_queue_url=resources.queue_url,
            event_bus_name=resources.event_bus_name,
        )
    )
    assert isinstance(bus, DeliveryWithFanOut)
    return bus


async def run_conversations(
    resources: AwsResources,
    endpoint: str,
    receiver: WebhookReceiver,
    bus: DeliveryWithFanOut,
    *,
    conversations: int,
    start_within_s: float,
    gap_s: tuple[float, float],
) -> Run:
    """The conversations side by side, each beginning within ``start_within_s`` and publishing
    its messages one at a time (as the pipeline does), ``gap_s`` apart, while the event source
    mapping stand-in consumes."""
    mapping = DeliveryQueueMapping(resources, endpoint, pollers=POLLERS)
    stop = asyncio.Event()
    consuming = asyncio.get_running_loop().create_task(mapping.run(stop))
    await mapping.ready.wait()  # the environments are up and warm, as in a running deployment
    published: dict[str, tuple[float, float]] = {}
    rng = random.Random(7)

    async def conversation(number: int) -> None:
        await asyncio.sleep(rng.uniform(0, start_within_s))  # calls do not begin in step
        for seq in range(MESSAGES_EACH):
            event = transcript(number, seq)
            started = time.time()
            await bus.publish(event)
            published[event.message_id] = (started, time.time())
            await asyncio.sleep(rng.uniform(*gap_s))

    started = time.monotonic()
    await asyncio.gather(*(conversation(n) for n in range(conversations)))
    publish_s = time.monotonic() - started
    deadline = time.monotonic() + 120
    while len(receiver.messages) < len(published) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await consuming
    # The copies to EventBridge lag behind delivery under a burst (two at a time): let them all
    # finish rather than give up after the tasks' shutdown bound.
    await bus.close(timeout_s=120)
    return Run(published, publish_s, mapping, receiver)


async def test_200_concurrent_conversations_each_keep_their_order(
    deployment: AwsResources, moto_endpoint: str, receiver: WebhookReceiver
) -> None:
    resources = deployment
    bus = tasks_bus(resources)
    # Each conversation's messages in a burst (as when both parties' last utterances end
    # together, or the ASR catches up), the bursts of all 200 spread over 20 s, and a slow
    # webhook target (200 ms an answer): a conversation's next messages sit in the queue beside
    # the one being posted, in batches that environments hold side by side. That is when an
    # order kept by accident would break (a message group per message instead of per
    # conversation puts dozens of conversations out of order here).
    receiver.delay_s = 0.2
    run = await run_conversations(
        resources,
        moto_endpoint,
        receiver,
        bus,
        conversations=CONVERSATIONS,
        start_within_s=20,
        gap_s=(0, 0),
    )

    # Order: each conversation's messages as the receiver got them.
    arrived: dict[str, list[int]] = defaultdict(list)
    for message in receiver.messages:
        guid, seq = message.headers[MESSAGE_ID_HEADER.lower()].rsplit("-", 1)
        arrived[guid].append(int(seq))
    violations = [guid for guid, seqs in arrived.items() if seqs != list(range(MESSAGES_EACH))]
    total = CONVERSATIONS * MESSAGES_EACH
    print(
        f"\n{CONVERSATIONS} conversations x {MESSAGES_EACH} messages, {POLLERS} pollers: "
        f"{len(receiver.messages)} delivered of {total}, {len(violations)} conversations out "
        f"of order; published in {run.publish_s:.1f} s, {run.mapping.invocations} invocations"
    )
    assert len(run.arrivals()) == len(receiver.messages) == total  # each once, none lost
    assert len(arrived) == CONVERSATIONS
    assert violations == []
    assert run.mapping.delivered == total
    store = DynamoStore(resources.table_name)
    assert store.list_delivery_failures("acme") == store.list_delivery_failures("globex") == []
    assert received_count(resources.dlq_url) == 0
    # The fan-out carried every transcript to the customers' own consumer too.
    assert bus.stats.as_dict() == {"sent": total, "failed": 0, "dropped": 0}
    assert received_count(resources.fan_out_url) == total
    run.print_hops("Hops under a burst moto cannot keep up with (one process, loopback; not AWS):")


async def test_each_hop_of_the_webhook_path_is_timed_at_a_load_moto_keeps_up_with(
    deployment: AwsResources, moto_endpoint: str, receiver: WebhookReceiver
) -> None:
    resources = deployment
    run = await run_conversations(
        resources,
        moto_endpoint,
        receiver,
        tasks_bus(resources),
        conversations=20,
        start_within_s=1.5,
        gap_s=(0.5, 1.5),
    )
    arrival = run.arrivals()
    assert len(arrival) == len(run.published) == 20 * MESSAGES_EACH
    run.print_hops("Hops at a light load (one process, loopback; moto's figures, not AWS's):")
    # No hop stalls: the path is a few SQS round trips and a POST, not seconds of waiting.
    assert max(arrival[m] - s for m, (s, _) in run.published.items()) < 10
