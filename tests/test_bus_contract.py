"""Every ``EventBus`` adapter passes the same contract: the in-process fan-out (local mode),
and the AWS deployment's, under moto: SqsFifoDeliveryBus (each transcript straight onto the
delivery FIFO queue, grouped by conversation, which the webhook Lambda reads) and the
composition the tasks use, DeliveryWithFanOut (that queue, plus a best-effort copy on the
EventBridge bus for customers' own rules)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.stub import ANY, Stubber
from moto import mock_aws

from callscribe.aws.adapters.eventbridge_bus import (
    DETAIL_TYPE,
    SOURCE,
    EventBridgeBus,
    EventBusError,
    event_from_detail,
    message_group,
)
from callscribe.aws.adapters.sqs_delivery_bus import (
    DeliveryQueueError,
    SendRetry,
    SqsFifoDeliveryBus,
    retryable,
)
from callscribe.bus import DeliveryWithFanOut, EventBus, InProcessEventBus, TranscriptEvent
from tests.aws_fixtures import REGION, AwsResources, create_resources
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


def queued(queue_url: str) -> list[dict[str, Any]]:
    """Everything on a queue now, received and deleted as the webhook Lambda's event source
    mapping would, in the order SQS hands it out."""
    sqs = boto3.client("sqs", region_name=REGION)
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        for message in batch:
            messages.append(message)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def delivery_queue_deliveries(aws: AwsResources) -> Deliveries:
    def drain() -> list[Delivery]:
        # As the webhook Lambda reads them: the EventBridge-shaped envelope is the body.
        return [
            Delivery(
                message["Attributes"]["MessageGroupId"],
                event_from_detail(json.loads(message["Body"])["detail"]),
            )
            for message in queued(aws.queue_url)
        ]

    return drain


def sqs_client() -> Any:
    return boto3.client("sqs", region_name=REGION)


class TestSqsFifoDeliveryBus(EventBusContract):
    @pytest.fixture
    def bus(self, aws: AwsResources) -> SqsFifoDeliveryBus:
        return SqsFifoDeliveryBus(aws.queue_url, client=sqs_client())

    @pytest.fixture
    def deliveries(self, aws: AwsResources) -> Deliveries:
        return delivery_queue_deliveries(aws)

    async def test_the_message_is_what_the_webhook_lambda_parses(
        self, bus: SqsFifoDeliveryBus, aws: AwsResources
    ) -> None:
        event = transcript("CA1", 3)
        before = time.time()
        await bus.publish(event)
        (message,) = queued(aws.queue_url)
        envelope = json.loads(message["Body"])
        assert envelope["source"] == SOURCE and envelope["detail-type"] == DETAIL_TYPE
        assert envelope["id"] == event.message_id
        assert event_from_detail(envelope["detail"]) == event
        assert envelope["detail"]["group"] == message["Attributes"]["MessageGroupId"]
        assert message["Attributes"]["MessageGroupId"] == message_group(event)
        # The message id, so that a retried send is not queued twice.
        assert message["Attributes"]["MessageDeduplicationId"] == event.message_id
        assert int(message["Attributes"]["SentTimestamp"]) / 1000 >= before - 1

    async def test_a_send_repeated_after_a_lost_answer_is_not_queued_twice(
        self, bus: SqsFifoDeliveryBus, aws: AwsResources
    ) -> None:
        event = transcript("CA1", 0)
        await bus.publish(event)
        await bus.publish(event)
        assert [json.loads(m["Body"])["id"] for m in queued(aws.queue_url)] == [event.message_id]

    async def test_a_queue_that_does_not_exist_fails_at_once(self, aws: AwsResources) -> None:
        missing = SqsFifoDeliveryBus(
            aws.queue_url.replace("webhook.fifo", "nowhere.fifo"), client=sqs_client()
        )
        started = time.monotonic()
        with pytest.raises(DeliveryQueueError, match=r"attempt 1\)"):
            await missing.publish(transcript("CA1", 0))
        assert time.monotonic() - started < 1  # nothing a retry could fix


def stubbed_sqs() -> Any:
    return boto3.client("sqs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")


SEND_OK = {"MessageId": "5fea7756-0ea4-451a-a703-a558b933e274", "SequenceNumber": "1"}


async def test_throttling_and_server_errors_are_retried_briefly_then_succeed() -> None:
    client = stubbed_sqs()
    event = transcript("CA1", 0)
    with Stubber(client) as stubbed:
        stubbed.add_client_error("send_message", "ThrottlingException", http_status_code=400)
        stubbed.add_client_error("send_message", "InternalError", http_status_code=500)
        stubbed.add_response(
            "send_message",
            SEND_OK,
            {
                "QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo",
                "MessageBody": ANY,  # the envelope carries the time it was sent
                "MessageGroupId": message_group(event),
                "MessageDeduplicationId": event.message_id,
            },
        )
        bus = SqsFifoDeliveryBus(
            "https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo",
            client=client,
            retry=SendRetry(attempts=3, first_backoff_s=0.01),
        )
        await asyncio.wait_for(bus.publish(event), 10)
        stubbed.assert_no_pending_responses()


async def test_a_send_still_failing_after_its_attempts_raises() -> None:
    client = stubbed_sqs()
    with Stubber(client) as stubbed:
        for _ in range(3):
            stubbed.add_client_error("send_message", "ServiceUnavailable", http_status_code=503)
        bus = SqsFifoDeliveryBus(
            "https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo",
            client=client,
            retry=SendRetry(attempts=3, first_backoff_s=0.01),
        )
        with pytest.raises(DeliveryQueueError, match=r"m-0.*attempt 3\).*ServiceUnavailable"):
            await asyncio.wait_for(
                bus.publish(TranscriptEvent("acme", "twilio", "CA1", "m-0", 0, {"text": "x"})), 10
            )
        stubbed.assert_no_pending_responses()


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "SendMessage",
    )


@pytest.mark.parametrize(
    ("error", "worth_retrying"),
    [
        (client_error("ThrottlingException", 400), True),
        (client_error("RequestThrottled", 403), True),
        (client_error("InternalError", 500), True),
        (client_error("ServiceUnavailable", 503), True),
        (EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com"), True),
        (ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com"), True),
        (client_error("AccessDenied", 403), False),
        (client_error("AWS.SimpleQueueService.NonExistentQueue", 400), False),
        (client_error("InvalidParameterValue", 400), False),
        (ParamValidationError(report="MessageGroupId is missing"), False),
    ],
)
def test_only_what_a_later_attempt_may_not_meet_is_retried(
    error: Exception, worth_retrying: bool
) -> None:
    assert retryable(error) is worth_retrying


# The tasks' bus: delivery queue + EventBridge fan-out ------------------------------------------


class TestDeliveryWithFanOut(EventBusContract):
    @pytest.fixture
    async def bus(self, aws: AwsResources) -> AsyncIterator[DeliveryWithFanOut]:
        bus = DeliveryWithFanOut(
            SqsFifoDeliveryBus(aws.queue_url, client=sqs_client()),
            EventBridgeBus(aws.event_bus_name, client=boto3.client("events", region_name=REGION)),
        )
        yield bus
        # The copies finish inside this test's moto, not the next one's.
        await bus.close()

    @pytest.fixture
    def deliveries(self, aws: AwsResources) -> Deliveries:
        return delivery_queue_deliveries(aws)

    async def test_every_transcript_is_also_on_the_bus_for_customers_rules(
        self, bus: DeliveryWithFanOut, aws: AwsResources
    ) -> None:
        published = [transcript(f"CA{n}", seq) for n in range(3) for seq in range(2)]
        for event in published:
            await bus.publish(event)
        await bus.close()
        copies = [json.loads(m["Body"]) for m in queued(aws.fan_out_url)]
        assert {c["source"] for c in copies} == {SOURCE}
        assert {c["detail-type"] for c in copies} == {DETAIL_TYPE}
        assert sorted(event_from_detail(c["detail"]).message_id for c in copies) == sorted(
            e.message_id for e in published
        )
        assert bus.stats.as_dict() == {"sent": 6, "failed": 0, "dropped": 0}


class Recording:
    """A bus that keeps what it is given, optionally after a wait or with an error."""

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.error = error
        self.published: list[TranscriptEvent] = []
        self.closed = False

    async def publish(self, event: TranscriptEvent) -> None:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        self.published.append(event)

    async def close(self) -> None:
        self.closed = True


async def test_a_failing_fan_out_neither_fails_nor_delays_delivery(aws: AwsResources) -> None:
    # A bus that does not exist: every PutEvents fails.
    fan_out = EventBridgeBus(
        "callscribe-nowhere", client=boto3.client("events", region_name=REGION)
    )
    bus: EventBus = DeliveryWithFanOut(
        SqsFifoDeliveryBus(aws.queue_url, client=sqs_client()), fan_out
    )
    published = [transcript("CA1", seq) for seq in range(4)]
    for event in published:
        await bus.publish(event)
    await bus.close()
    delivered = [event_from_detail(json.loads(m["Body"])["detail"]) for m in queued(aws.queue_url)]
    assert delivered == published
    assert isinstance(bus, DeliveryWithFanOut)
    assert bus.stats.as_dict() == {"sent": 0, "failed": 4, "dropped": 0}


async def test_a_slow_fan_out_does_not_hold_up_the_next_message() -> None:
    delivery, fan_out = Recording(), Recording(delay_s=5)
    bus = DeliveryWithFanOut(delivery, fan_out)
    started = time.monotonic()
    for seq in range(3):
        await bus.publish(transcript("CA1", seq))
    assert time.monotonic() - started < 1
    assert [e.seq for e in delivery.published] == [0, 1, 2]
    assert bus.pending == 3
    await bus.close(timeout_s=0.1)  # bounded: the copies still waiting are given up
    assert bus.stats.as_dict() == {"sent": 0, "failed": 0, "dropped": 3}
    assert bus.pending == 0 and delivery.closed and fan_out.closed


async def test_a_failed_delivery_is_raised_and_the_copy_still_goes_out() -> None:
    delivery = Recording(error=DeliveryQueueError("queue refused message m-1"))
    fan_out = Recording()
    bus = DeliveryWithFanOut(delivery, fan_out)
    with pytest.raises(DeliveryQueueError, match="m-1"):
        await bus.publish(transcript("CA1", 0))
    await bus.close()
    assert [e.seq for e in fan_out.published] == [0]


async def test_copies_beyond_the_backlog_are_dropped_and_counted() -> None:
    fan_out = Recording(delay_s=0.2)
    bus = DeliveryWithFanOut(Recording(), fan_out, concurrency=1, max_pending=2)
    for seq in range(5):
        await bus.publish(transcript("CA1", seq))
    await bus.close()
    assert [e.seq for e in fan_out.published] == [0, 1]
    assert bus.stats.as_dict() == {"sent": 2, "failed": 0, "dropped": 3}


# EventBridge alone: the fan-out's adapter --------------------------------------------------


async def test_a_bus_that_does_not_exist_fails_the_publish(aws: AwsResources) -> None:
    missing = EventBridgeBus("callscribe-nowhere", client=boto3.client("events"))
    with pytest.raises(ClientError, match="ResourceNotFound"):
        await missing.publish(transcript("CA1", 0))


async def test_an_entry_eventbridge_refuses_fails_the_publish() -> None:
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
