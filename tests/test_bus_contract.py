"""Both ``EventBus`` adapters pass the same contract: the in-process fan-out (local mode) and
EventBridge (the AWS deployment, under moto: bus → rule → ingress FIFO queue → the stack's pipe
→ delivery FIFO queue grouped by conversation, which the webhook Lambda reads)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from callscribe.aws.adapters.eventbridge_bus import EventBridgeBus, EventBusError, event_from_detail
from callscribe.bus import InProcessEventBus, TranscriptEvent
from tests.aws_fixtures import REGION, AwsResources, create_resources, pipe_ingress_to_delivery
from tests.bus_contract import Deliveries, Delivery, EventBusContract, transcript


class TestInProcessEventBus(EventBusContract):
    @pytest.fixture
    def in_process(self) -> tuple[InProcessEventBus, list[Delivery]]:
        bus = InProcessEventBus()
        received: list[Delivery] = []
        bus.subscribe(lambda event: received.append(Delivery(event.group, event)))
        return bus, received

    @pytest.fixture
    def bus(self, in_process: tuple[InProcessEventBus, list[Delivery]]) -> InProcessEventBus:
        return in_process[0]

    @pytest.fixture
    def deliveries(self, in_process: tuple[InProcessEventBus, list[Delivery]]) -> Deliveries:
        received = in_process[1]

        def drain() -> list[Delivery]:
            delivered = list(received)
            received.clear()
            return delivered

        return drain

    async def test_a_failing_subscriber_neither_stops_the_others_nor_the_publisher(
        self, bus: InProcessEventBus, deliveries: Deliveries
    ) -> None:
        def broken(event: TranscriptEvent) -> None:
            raise RuntimeError("subscriber bug")

        bus.subscribe(broken)
        later: list[TranscriptEvent] = []
        bus.subscribe(later.append)
        await bus.publish(transcript("CA1", 0))
        assert [d.event.seq for d in deliveries()] == [0]
        assert [e.seq for e in later] == [0]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield create_resources()


class TestEventBridgeBus(EventBusContract):
    @pytest.fixture
    def bus(self, aws: AwsResources) -> EventBridgeBus:
        return EventBridgeBus(aws.event_bus_name, client=boto3.client("events", region_name=REGION))

    @pytest.fixture
    def deliveries(self, aws: AwsResources) -> Deliveries:
        sqs = boto3.client("sqs", region_name=REGION)

        def drain() -> list[Delivery]:
            # moto runs no pipes: move the rule's deliveries on as the stack's pipe does.
            pipe_ingress_to_delivery(aws)
            delivered: list[Delivery] = []
            while True:
                messages = sqs.receive_message(
                    QueueUrl=aws.queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=0,
                    MessageSystemAttributeNames=["MessageGroupId"],
                ).get("Messages", [])
                if not messages:
                    return delivered
                for message in messages:
                    # As the webhook Lambda reads it: the EventBridge event is the body.
                    detail = json.loads(message["Body"])["detail"]
                    delivered.append(
                        Delivery(message["Attributes"]["MessageGroupId"], event_from_detail(detail))
                    )
                    sqs.delete_message(
                        QueueUrl=aws.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )

        return drain

    async def test_a_bus_that_does_not_exist_fails_the_publish(self, aws: AwsResources) -> None:
        missing = EventBridgeBus("callscribe-nowhere", client=boto3.client("events"))
        with pytest.raises(ClientError, match="ResourceNotFound"):
            await missing.publish(transcript("CA1", 0))

    async def test_an_entry_eventbridge_refuses_fails_the_publish(self) -> None:
        client = boto3.client(
            "events", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        with Stubber(client) as stubbed:
            stubbed.add_response(
                "put_events",
                {
                    "FailedEntryCount": 1,
                    "Entries": [{"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"}],
                },
            )
            bus = EventBridgeBus("callscribe-test", client=client)
            with pytest.raises(EventBusError, match="m-throttled.*ThrottlingException slow down"):
                await asyncio.wait_for(
                    bus.publish(
                        TranscriptEvent("acme", "twilio", "CA1", "m-throttled", 0, {"text": "x"})
                    ),
                    10,
                )
