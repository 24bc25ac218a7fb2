"""Transcript events: the ordered delivery queue, the webhook Lambda, the fan-out bus.

    tasks that hold calls ──SendMessage (MessageGroupId = the conversation)──▶ delivery FIFO
        ──▶ webhook Lambda (SQS event source mapping, batches of 10, partial batch failures)
    tasks that hold calls ──PutEvents (a copy, best effort)──▶ bus callscribe-<stage>
        ──▶ customers' own rules and consumers

Why straight to the FIFO queue: ordering is needed per conversation only, and the tasks know the
conversation when they publish. EventBridge keeps no order between events, and a rule can give
an SQS FIFO target only one fixed MessageGroupId: routed through the bus, every conversation
shared one group (one stalled batch held up the whole deployment) and the order the rule
delivered in was already not the publish order. Sending each message into its conversation's
group from the first hop keeps each conversation's order end to end and lets conversations
proceed in parallel (high-throughput FIFO: deduplication and throughput per message group). The
bus stays for fan-out, off the webhook path: a failed copy never blocks or fails delivery.
Weighed and not taken (README, "Why straight to the FIFO queue"): EventBridge's Custom Event Bus
with a FIFO subscriber per event group (one more hop before the same queue, latency
undocumented, nothing to run the bus contract against), an SNS FIFO topic in front of the queue
(a hop for a fan-out the bus already gives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aws_cdk import Aws, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import DataConstruct
from infra.functions import callscribe_function
from infra.images import WEBHOOK_HANDLER
from infra.nag import acknowledge, acknowledge_table_index_grant
from infra.network import NetworkConstruct

EVENT_SOURCE = "callscribe"
TRANSCRIPT_DETAIL_TYPE = "transcript"
WEBHOOK_BATCH_SIZE = 10
# Receives before a message is parked in the dead-letter queue: the webhook Lambda reports a
# message as failed only when it could not even record the outcome (DynamoDB unreachable…);
# a failed POST itself is recorded and not retried, as the API promises.
MAX_RECEIVES = 3


def _fifo_queue(scope: Construct, id: str, **props: object) -> sqs.Queue:
    props.setdefault("retention_period", Duration.days(4))
    return sqs.Queue(
        scope,
        id,
        fifo=True,
        # SQS-managed SSE: the tasks and the Lambda need no KMS key permissions.
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        **props,
    )


@dataclass(frozen=True)
class TranscriptDestinations:
    """Where the tasks that hold calls publish each transcript: the delivery queue (webhooks)
    and the bus (fan-out). What they are told (``environment``) and may do (``grant_publish``)."""

    delivery_queue: sqs.IQueue
    bus: events.IEventBus

    def environment(self) -> dict[str, str]:
        return {
            "CALLSCRIBE_DELIVERY_QUEUE_URL": self.delivery_queue.queue_url,
            "CALLSCRIBE_EVENT_BUS_NAME": self.bus.event_bus_name,
        }

    def grant_publish(self, role: iam.IRole) -> None:
        # SendMessage on this queue only: the adapter is given the URL, so it needs neither
        # GetQueueUrl nor GetQueueAttributes (which grant_send_messages would add).
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["sqs:SendMessage"], resources=[self.delivery_queue.queue_arn]
            )
        )
        self.bus.grant_put_events_to(role)


class EventsConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        data: DataConstruct,
        network: NetworkConstruct,
    ) -> None:
        super().__init__(scope, id)

        self.bus = events.EventBus(self, "Bus", event_bus_name=config.event_bus_name)

        # Webhook Lambda: one POST may take up to the webhook timeout, ten to a batch.
        function_timeout_s = min(900, math.ceil(WEBHOOK_BATCH_SIZE * config.webhook_timeout_s) + 30)
        # AWS's guidance for SQS event sources: visibility timeout six times the function's.
        visibility_timeout = Duration.seconds(6 * function_timeout_s)

        self.delivery_dlq = _fifo_queue(
            self, "DeliveryDeadLetterQueue", retention_period=Duration.days(14)
        )
        self.delivery_queue = _fifo_queue(
            self,
            "DeliveryQueue",
            visibility_timeout=visibility_timeout,
            # Explicit deduplication ids (the publisher's messageId: a retried send is not
            # queued twice), scoped per group, with per-group throughput limits (high-throughput
            # FIFO): thousands of concurrent conversations in parallel.
            content_based_deduplication=False,
            deduplication_scope=sqs.DeduplicationScope.MESSAGE_GROUP,
            fifo_throughput_limit=sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.delivery_dlq, max_receive_count=MAX_RECEIVES
            ),
        )

        self.destinations = TranscriptDestinations(self.delivery_queue, self.bus)

        # What the monitoring alarms on: anything in it was not delivered.
        self.dead_letter_queues = [self.delivery_dlq]

        in_vpc = config.webhook_via_nat
        self.webhook_function = callscribe_function(
            self,
            "WebhookFunction",
            config=config,
            handler=WEBHOOK_HANDLER,
            service_name="callscribe-webhook",
            memory_mib=512,
            timeout=Duration.seconds(function_timeout_s),
            # Outside the VPC by default: it needs only DynamoDB, Secrets Manager and the
            # customer's webhook on the internet, and a VPC would add NAT data charges and ENI
            # set-up for nothing. webhookViaNat puts it behind the NAT gateways so the receiver
            # can allowlist their fixed Elastic IPs.
            vpc=network.vpc if in_vpc else None,
            vpc_subnets=network.private_subnets if in_vpc else None,
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_WEBHOOK_URL": str(config.webhook_url),
                "CALLSCRIBE_WEBHOOK_SECRET_ARN": data.webhook_secret.secret_arn,
                "CALLSCRIBE_WEBHOOK_TIMEOUT_S": f"{config.webhook_timeout_s:g}",
                "CALLSCRIBE_MESSAGE_RETENTION_DAYS": str(config.retention_days),
                "CALLSCRIBE_SECRETS_PREFIX": config.secrets_prefix,
                "CALLSCRIBE_WEBHOOK_MAX_QUEUE_AGE_S": str(config.webhook_max_queue_age_s),
            },
        )
        data.table.grant_write_data(self.webhook_function)
        acknowledge_table_index_grant(self.webhook_function.role, data.table)
        data.webhook_secret.grant_read(self.webhook_function)
        # Tenants' own webhook credentials (`callscribe webhook set --secrets-prefix`), named
        # <prefix>webhook/<tenant>/<credential>: created after deployment, so only a name
        # pattern can cover them (Secrets Manager appends a random suffix to every ARN, too).
        # Pseudo parameters rather than the stack's env: the same policy text (and cdk-nag
        # finding) whether or not the account is known at synthesis.
        tenant_secrets = (
            f"arn:{Aws.PARTITION}:secretsmanager:{Aws.REGION}:{Aws.ACCOUNT_ID}"
            f":secret:{config.secrets_prefix}webhook/*"
        )
        self.webhook_function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"], resources=[tenant_secrets]
            )
        )
        acknowledge(
            self.webhook_function.role,
            "AwsSolutions-IAM5",
            "Tenants' webhook credentials are secrets the operator creates after deployment "
            "under this stage's webhook/ name prefix; read-only, and nothing outside it.",
            findings=[
                "Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>"
                f":secret:{config.secrets_prefix}webhook/*"
            ],
        )
        self.webhook_function.add_event_source(
            event_sources.SqsEventSource(
                self.delivery_queue,
                batch_size=WEBHOOK_BATCH_SIZE,
                report_batch_item_failures=True,
            )
        )
