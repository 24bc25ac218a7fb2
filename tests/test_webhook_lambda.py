"""The webhook Lambda (functions.webhook.handler) with SQS FIFO event shapes, the DynamoDB and
Secrets Manager adapters under moto, and real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.adapters.eventbridge_bus import DETAIL_TYPE, SOURCE, event_detail
from callscribe.aws.services import webhook_lambda
from callscribe.bus import TranscriptEvent
from callscribe.store.base import WebhookAuth, WebhookConfig
from callscribe.testing.simulate import WebhookReceiver, running_receiver
from tests.aws_fixtures import REGION, AwsResources, LambdaContext, create_resources

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "CALLSCRIBE_SECRETS_PREFIX": "callscribe/t/",
        "CALLSCRIBE_WEBHOOK_TIMEOUT_S": "2",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
        webhook_lambda.webhook_delivery.cache_clear()
        yield resources
        webhook_lambda.webhook_delivery.cache_clear()


def transcript(conversation: str, seq: int, tenant: str = "acme") -> TranscriptEvent:
    return TranscriptEvent(
        tenant=tenant,
        namespace="twilio",
        conversation_id=conversation,
        message_id=str(uuid.uuid4()),
        seq=seq,
        body={"type": "transcript", "externalConversationId": conversation, "seq": seq},
    )


def record(
    event: TranscriptEvent | str, sent_at: float | None = None, group: str = "g"
) -> dict[str, Any]:
    if isinstance(event, TranscriptEvent):
        body = json.dumps(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "source": SOURCE,
                "detail-type": DETAIL_TYPE,
                "detail": event_detail(event),
            }
        )
        group = event_detail(event)["group"]
    else:
        body = event
    sent = int((sent_at if sent_at is not None else time.time()) * 1000)
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "rh",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent),
            "SequenceNumber": "1",
            "MessageGroupId": group,
            "SenderId": "AIDA",
            "MessageDeduplicationId": str(uuid.uuid4()),
            "ApproximateFirstReceiveTimestamp": str(sent),
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:q.fifo",
        "awsRegion": REGION,
    }


async def invoke(records: list[dict[str, Any]]) -> dict[str, Any]:
    from functions.webhook import handler

    # The handler runs its own event loop; the receivers live on this test's loop.
    return await asyncio.to_thread(handler, {"Records": records}, LambdaContext())


def store(aws: AwsResources) -> DynamoStore:
    return DynamoStore(aws.table_name, boto3.resource("dynamodb"))


async def test_delivers_in_order_with_the_deployment_secret(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    arn = boto3.client("secretsmanager").create_secret(
        Name="deployment-webhook",
        SecretString=json.dumps({"name": "X-Token", "value": "t0k", "in": "header"}),
    )["ARN"]
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_SECRET_ARN", arn)
    events = [transcript("CA1", n) for n in range(4)] + [transcript("CA2", n) for n in range(3)]
    result = await invoke([record(e) for e in events])
    assert result == {"batchItemFailures": []}
    got = [(m.body["externalConversationId"], m.body["seq"]) for m in receiver.messages]
    assert [s for c, s in got if c == "CA1"] == [0, 1, 2, 3]
    assert [s for c, s in got if c == "CA2"] == [0, 1, 2]
    assert all(m.headers["x-token"] == "t0k" for m in receiver.messages)
    assert all(m.headers["webhook-signature"].startswith("v1,") for m in receiver.messages)


async def test_failed_posts_are_recorded_and_not_retried(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_receiver(status_code=500) as failing:
        monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", failing.url)
        events = [transcript("CA3", n) for n in range(3)]
        result = await invoke([record(e) for e in events])
    assert result == {"batchItemFailures": []}  # recorded and dropped: SQS must not redeliver
    assert len(failing.messages) == 3
    failures = store(aws).list_delivery_failures("acme", "CA3")
    assert [(f.status_code, f.reason) for f in failures] == [(500, "http 500")] * 3
    assert {f.message_id for f in failures} == {e.message_id for e in events}


async def test_messages_that_waited_too_long_are_dropped_oldest_first(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_MAX_QUEUE_AGE_S", "60")
    now = time.time()
    stale = [transcript("CA4", n) for n in range(2)]
    fresh = [transcript("CA4", n) for n in range(2, 4)]
    records = [record(e, sent_at=now - 300) for e in stale] + [
        record(e, sent_at=now) for e in fresh
    ]
    result = await invoke(records)
    assert result == {"batchItemFailures": []}
    assert [m.body["seq"] for m in receiver.messages] == [2, 3]
    failures = store(aws).list_delivery_failures("acme", "CA4")
    assert [f.message_id for f in failures] == [e.message_id for e in stale]
    assert all(f.reason.startswith("dropped: waited") for f in failures)


async def test_poison_message_fails_only_its_group_from_there_on(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", receiver.url)
    good = transcript("CA5", 0)
    after = transcript("CA5", 1)
    poison = record("{not an event", group=event_detail(good)["group"])
    trailing = record(after)
    other = transcript("CA6", 0)
    result = await invoke([record(good), poison, trailing, record(other)])
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    # The poison message and everything after it in its group are retried; not the others.
    assert failed == {poison["messageId"], trailing["messageId"]}
    delivered = {(m.body["externalConversationId"], m.body["seq"]) for m in receiver.messages}
    assert delivered == {("CA5", 0), ("CA6", 0)}


async def test_tenant_webhook_configuration_and_credentials_from_secrets_manager(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    monkeypatch.delenv("CALLSCRIBE_WEBHOOK_URL", raising=False)
    store(aws).put_webhook_config(
        WebhookConfig(
            tenant="globex",
            url=receiver.url,
            auth=WebhookAuth.SECRET_TOKEN,
            token_name="api_key",
            token_in="query",
            updated_at=time.time(),
        )
    )
    boto3.client("secretsmanager").create_secret(
        Name="callscribe/t/webhook/globex/token", SecretString="q-secret"
    )
    event = transcript("CA7", 0, tenant="globex")
    result = await invoke([record(event)])
    assert result == {"batchItemFailures": []}
    assert len(receiver.messages) == 1
    assert receiver.messages[0].query == {"api_key": "q-secret"}
    # A tenant with no target of its own and no deployment default has chosen no webhook:
    # nothing is sent or recorded as failed, and it is counted as unrouted.
    lonely = transcript("CA8", 0, tenant="initech")
    assert await invoke([record(lonely)]) == {"batchItemFailures": []}
    assert len(receiver.messages) == 1
    assert store(aws).list_delivery_failures("initech") == []
    assert webhook_lambda.webhook_delivery().dispatcher.stats.unrouted == 1


async def test_each_delivered_message_reports_its_latency_from_the_end_of_its_utterance(
    aws: AwsResources,
    monkeypatch: pytest.MonkeyPatch,
    receiver: WebhookReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_URL", receiver.url)
    endpointed = time.time() - 0.5
    timed = [replace(transcript("CA9", n), endpointed_at=endpointed) for n in range(3)]
    untimed = transcript("CA9", 3)  # from a task that did not say when: no latency
    capsys.readouterr()
    result = await invoke([record(e) for e in [*timed, untimed]])
    assert result == {"batchItemFailures": []} and len(receiver.messages) == 4
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    latencies = [
        value
        for line in lines
        if "DeliveryLatency" in line
        for value in (
            line["DeliveryLatency"]
            if isinstance(line["DeliveryLatency"], list)
            else [line["DeliveryLatency"]]
        )
    ]
    assert len(latencies) == 3
    assert all(500 <= v < 60_000 for v in latencies), latencies
    (definition,) = [line for line in lines if "DeliveryLatency" in line][0]["_aws"][
        "CloudWatchMetrics"
    ]
    assert {"Name": "DeliveryLatency", "Unit": "Milliseconds"} in definition["Metrics"]
    assert line_service(lines) == "callscribe-webhook"


def line_service(lines: list[dict[str, Any]]) -> str:
    (service,) = {line["service"] for line in lines}
    return str(service)
