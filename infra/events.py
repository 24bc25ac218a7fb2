"""Transcript events: the custom bus, the ordered queue per conversation, webhook delivery.

    gateway tasks ──PutEvents──▶ bus callscribe-<stage>
        ──rule (source "callscribe", detail-type "transcript")──▶ ingress FIFO queue
        ──pipe (MessageGroupId = $.detail.group)──▶ delivery FIFO queue
        ──▶ webhook Lambda (batches of 10, partial batch failures)

Why the pipe: an EventBridge rule can only give an SQS FIFO target one fixed MessageGroupId
(`SqsParameters.MessageGroupId` is a literal; EventField paths are not evaluated there), which
would put every conversation in one group and make one slow webhook call hold up all of them.
EventBridge Pipes evaluate JSON paths in target parameters, so the pipe re-queues each event
into its conversation's own group, with the publisher's messageId as the deduplication id, and
passes the original EventBridge event through unchanged as the message body. The ingress queue
is a single group, so the pipe forwards events in the order EventBridge delivered them.
"""

from __future__ import annotations

import math

from aws_cdk import Aws, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_pipes as pipes
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import DataConstruct
from infra.functions import callscribe_function
from infra.images import WEBHOOK_HANDLER
from infra.logs import log_group
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
        # SQS-managed SSE: EventBridge and Pipes can send to it without a KMS key policy.
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        **props,
    )


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
            # Explicit deduplication ids (the publisher's messageId), scoped per group, with
            # per-group throughput limits: thousands of concurrent conversations in parallel.
            content_based_deduplication=False,
            deduplication_scope=sqs.DeduplicationScope.MESSAGE_GROUP,
            fifo_throughput_limit=sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.delivery_dlq, max_receive_count=MAX_RECEIVES
            ),
        )

        self.ingress_dlq = _fifo_queue(
            self, "IngressDeadLetterQueue", retention_period=Duration.days(14)
        )
        self.ingress_queue = _fifo_queue(
            self,
            "IngressQueue",
            # EventBridge retries a delivery with the same event (same id, same body): the
            # content hash drops those duplicates.
            content_based_deduplication=True,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.ingress_dlq, max_receive_count=MAX_RECEIVES
            ),
        )
        # Events EventBridge could not put on the ingress queue at all (EventBridge dead-letter
        # queues must be standard queues).
        self.rule_dlq = sqs.Queue(
            self,
            "RuleDeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            self.rule_dlq,
            "AwsSolutions-SQS3",
            "This queue is the EventBridge rule target's dead-letter queue "
            "(DeadLetterConfig), which cdk-nag does not recognise as a DLQ.",
        )

        # What the monitoring alarms on: anything in any of them was not delivered.
        self.dead_letter_queues = [self.delivery_dlq, self.ingress_dlq, self.rule_dlq]

        self.rule = events.Rule(
            self,
            "TranscriptRule",
            event_bus=self.bus,
            description="Transcript events to the ordered webhook delivery",
            event_pattern=events.EventPattern(
                source=[EVENT_SOURCE], detail_type=[TRANSCRIPT_DETAIL_TYPE]
            ),
        )
        self.rule.add_target(
            targets.SqsQueue(
                self.ingress_queue,
                message_group_id="transcripts",
                dead_letter_queue=self.rule_dlq,
                retry_attempts=20,
                max_event_age=Duration.hours(1),
            )
        )

        self.pipe_role = pipe_role = iam.Role(
            self, "PipeRole", assumed_by=iam.ServicePrincipal("pipes.amazonaws.com")
        )
        self.ingress_queue.grant_consume_messages(pipe_role)
        self.delivery_queue.grant_send_messages(pipe_role)
        pipe_logs = log_group(self, "PipeLogs", config)
        pipe_logs.grant_write(pipe_role)
        self.pipe = pipes.CfnPipe(
            self,
            "ConversationOrderPipe",
            role_arn=pipe_role.role_arn,
            source=self.ingress_queue.queue_arn,
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                sqs_queue_parameters=pipes.CfnPipe.PipeSourceSqsQueueParametersProperty(
                    batch_size=WEBHOOK_BATCH_SIZE
                )
            ),
            target=self.delivery_queue.queue_arn,
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                # The SQS body is the EventBridge event (JSON): forward it as it is.
                input_template="<$.body>",
                sqs_queue_parameters=pipes.CfnPipe.PipeTargetSqsQueueParametersProperty(
                    message_group_id="$.body.detail.group",
                    message_deduplication_id="$.body.detail.messageId",
                ),
            ),
            log_configuration=pipes.CfnPipe.PipeLogConfigurationProperty(
                level="ERROR",
                cloudwatch_logs_log_destination=pipes.CfnPipe.CloudwatchLogsLogDestinationProperty(
                    log_group_arn=pipe_logs.log_group_arn
                ),
            ),
        )
        self.pipe.node.add_dependency(pipe_role)

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
