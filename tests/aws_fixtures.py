"""moto-backed AWS resources shaped like the CDK stack's, for the AWS adapter tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import boto3

from callscribe.aws.dynamodb_store import create_table

REGION = "us-east-1"


@dataclass
class AwsResources:
    table_name: str
    token_secret_arn: str
    control_secret_arn: str
    control_secret: str
    event_bus_name: str
    queue_url: str
    dlq_url: str


def create_resources(endpoint_url: str | None = None, stage: str = "test") -> AwsResources:
    """Table, secrets, bus → rule → SQS FIFO queue (+ DLQ), as infra/ declares them."""
    kwargs = {"region_name": REGION, **({"endpoint_url": endpoint_url} if endpoint_url else {})}
    table_name = f"callscribe-{stage}"
    create_table(boto3.client("dynamodb", **kwargs), table_name)
    sm = boto3.client("secretsmanager", **kwargs)
    token_arn = sm.create_secret(
        Name=f"callscribe/{stage}/token-signing-key", SecretString=secrets.token_urlsafe(48)
    )["ARN"]
    control_secret = secrets.token_urlsafe(32)
    control_arn = sm.create_secret(
        Name=f"callscribe/{stage}/control", SecretString=control_secret
    )["ARN"]
    sqs = boto3.client("sqs", **kwargs)
    dlq_url = sqs.create_queue(
        QueueName=f"callscribe-{stage}-webhook-dlq.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"callscribe-{stage}-webhook.fifo",
        Attributes={
            "FifoQueue": "true",
            "ContentBasedDeduplication": "true",
            "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "3"}}',
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events = boto3.client("events", **kwargs)
    bus_name = f"callscribe-{stage}"
    events.create_event_bus(Name=bus_name)
    events.put_rule(
        Name="transcripts-to-webhook",
        EventBusName=bus_name,
        EventPattern='{"source": ["callscribe"], "detail-type": ["transcript"]}',
    )
    events.put_targets(
        Rule="transcripts-to-webhook",
        EventBusName=bus_name,
        Targets=[
            {
                "Id": "webhook-queue",
                "Arn": queue_arn,
                "SqsParameters": {"MessageGroupId": "$.detail.group"},
            }
        ],
    )
    return AwsResources(
        table_name, token_arn, control_arn, control_secret, bus_name, queue_url, dlq_url
    )
