"""moto-backed AWS resources shaped like the CDK stack's, for the AWS adapter tests."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

from callscribe.aws.adapters.dynamodb_store import create_table

REGION = "us-east-1"


@dataclass
class AwsResources:
    table_name: str
    token_secret_arn: str
    control_secret_arn: str
    control_secret: str
    event_bus_name: str
    # The webhook delivery queue (SQS FIFO) the tasks send to and the webhook Lambda reads.
    queue_url: str
    dlq_url: str
    bucket_name: str
    # A customer's own consumer of the bus: a standard queue behind a rule on transcripts.
    fan_out_url: str


def create_resources(endpoint_url: str | None = None, stage: str = "test") -> AwsResources:
    """Table, secrets, recordings/exports bucket, the delivery SQS FIFO queue (+ DLQ) and the
    transcript bus, as infra/ declares them; and a rule on the bus to a queue of its own,
    standing in for a customer's consumer of the fan-out."""
    kwargs = {"region_name": REGION, **({"endpoint_url": endpoint_url} if endpoint_url else {})}
    table_name = f"callscribe-{stage}"
    create_table(boto3.client("dynamodb", **kwargs), table_name)
    sm = boto3.client("secretsmanager", **kwargs)
    token_arn = sm.create_secret(
        Name=f"callscribe/{stage}/token-signing-key", SecretString=secrets.token_urlsafe(48)
    )["ARN"]
    control_secret = secrets.token_urlsafe(32)
    control_arn = sm.create_secret(Name=f"callscribe/{stage}/control", SecretString=control_secret)[
        "ARN"
    ]
    bucket_name = f"callscribe-{stage}-exports"
    boto3.client("s3", **kwargs).create_bucket(Bucket=bucket_name)
    sqs = boto3.client("sqs", **kwargs)

    def queue(name: str, **attributes: str) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=f"callscribe-{stage}-{name}", Attributes=attributes)[
            "QueueUrl"
        ]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return url, arn

    dlq_url, dlq_arn = queue("webhook-dlq.fifo", FifoQueue="true")
    # As infra/events.py: ids given by the publisher, high-throughput FIFO (deduplication and
    # throughput per message group), three receives before the dead-letter queue.
    queue_url, _ = queue(
        "webhook.fifo",
        FifoQueue="true",
        ContentBasedDeduplication="false",
        DeduplicationScope="messageGroup",
        FifoThroughputLimit="perMessageGroupId",
        RedrivePolicy=f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "3"}}',
    )
    events = boto3.client("events", **kwargs)
    bus_name = f"callscribe-{stage}"
    events.create_event_bus(Name=bus_name)
    fan_out_url, fan_out_arn = queue("customer-consumer")
    events.put_rule(
        Name="customer-transcripts",
        EventBusName=bus_name,
        EventPattern='{"source": ["callscribe"], "detail-type": ["transcript"]}',
    )
    events.put_targets(
        Rule="customer-transcripts",
        EventBusName=bus_name,
        Targets=[{"Id": "customer-queue", "Arn": fan_out_arn}],
    )
    return AwsResources(
        table_name,
        token_arn,
        control_arn,
        control_secret,
        bus_name,
        queue_url,
        dlq_url,
        bucket_name,
        fan_out_url,
    )


# Lambda invocation shapes ---------------------------------------------------------------


class LambdaContext:
    function_name = "callscribe-api"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:callscribe-api"
    memory_limit_in_mb = 512
    aws_request_id = "8f5b1c2e-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/callscribe-api"
    log_stream_name = "2026/11/21/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def rest_event(
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST API (payload v1.0) proxy event."""
    raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {
            "Host": "abc123.execute-api.us-east-1.amazonaws.com",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Port": "443",
            **headers,
        },
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "accountId": "123456789012",
            "apiId": "abc123",
            "protocol": "HTTP/1.1",
            "requestTimeEpoch": int(time.time() * 1000),
        },
        "body": raw,
        "isBase64Encoded": False,
    }


def http_api_event(
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload v2.0) event; its body arrives base64-encoded."""
    raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    query_string = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": {
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
            **{k.lower(): v for k, v in headers.items()},
        },
        "queryStringParameters": query,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "21/Nov/2026:10:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(raw.encode()).decode() if raw is not None else None,
        "isBase64Encoded": raw is not None,
    }


def _invoke_like_lambda(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]], event: dict[str, Any]
) -> dict[str, Any]:
    """Lambda's runtime calls the handler on a thread that has an event loop (Mangum uses it);
    a worker thread gets one of its own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return handler(event, LambdaContext())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def api_gateway_bridge(handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> Any:
    """An ASGI app standing in for API Gateway (HTTP API, payload v2): each HTTP request
    becomes the event API Gateway would send, given to the Lambda handler in a worker thread."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
        event = http_api_event(
            scope["method"], scope["path"], headers, body.decode() or None, query or None
        )
        response = await asyncio.to_thread(_invoke_like_lambda, handler, event)
        payload = response.get("body") or ""
        raw = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        await send(
            {
                "type": "http.response.start",
                "status": response["statusCode"],
                "headers": [
                    (k.lower().encode(), str(v).encode())
                    for k, v in (response.get("headers") or {}).items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    return app


def sqs_event(messages: list[dict[str, Any]], resources: AwsResources) -> dict[str, Any]:
    """The event an SQS event source mapping gives a Lambda for received FIFO messages."""
    queue_arn = f"arn:aws:sqs:{REGION}:123456789012:{resources.queue_url.rsplit('/', 1)[-1]}"
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": m["Attributes"].get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": m["Attributes"].get(
                        "SentTimestamp", str(int(time.time() * 1000))
                    ),
                    "SequenceNumber": m["Attributes"].get("SequenceNumber", "1"),
                    "MessageGroupId": m["Attributes"].get("MessageGroupId", ""),
                    "SenderId": m["Attributes"].get("SenderId", "AIDAEXAMPLE"),
                    "MessageDeduplicationId": m["Attributes"].get("MessageDeduplicationId", ""),
                    "ApproximateFirstReceiveTimestamp": m["Attributes"].get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


async def deliver_webhooks(
    resources: AwsResources, endpoint: str | None, stop: asyncio.Event
) -> int:
    """The SQS event source mapping and the webhook Lambda, in a loop, until ``stop`` is set
    and the delivery queue is empty; how many messages were delivered. ``endpoint``: a moto
    server's URL (None: moto in this process)."""
    from functions.webhook import handler

    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    delivered = 0
    while True:
        received = await asyncio.to_thread(
            lambda: sqs.receive_message(
                QueueUrl=resources.queue_url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
        )
        if received:
            result = await asyncio.to_thread(
                handler, sqs_event(received, resources), LambdaContext()
            )
            failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
            for message in received:
                if message["MessageId"] not in failed:
                    sqs.delete_message(
                        QueueUrl=resources.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
                    delivered += 1
        elif stop.is_set():
            return delivered
        else:
            await asyncio.sleep(0.2)
