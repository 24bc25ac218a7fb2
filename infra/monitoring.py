"""What watches the deployment: CloudWatch alarms on what loses or delays transcripts, one
dashboard, and an SNS topic the alarms notify (subscribe to it, or set `alarmEmail`).

The metrics come from the services themselves, as CloudWatch embedded metric format lines in
their logs (namespace ``CallScribe``, dimension ``service``): the webhook Lambda
(``WebhookDelivered``, ``WebhookFailed``, ``WebhookDropped``, ``DeliveryLatency``), the tasks
that hold calls (``LiveCalls``, ``AsrLost``, ``AsrRefused``, ``UtteranceWaitP95``,
``KvsMillisBehindNow``, ``LiveEventsDropped``, ``LiveEventsPosted``:
``callscribe.aws.services.task_load``) and the ASR workers
(``AsrQueueDepth``, ``AsrWaitP95``: ``callscribe.asr.worker``); the dead-letter queues' depth is
SQS's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeploymentConfig

NAMESPACE = "CallScribe"
# The services' ``service`` dimension, as each one publishes it (tests/test_infra_monitoring.py
# holds them to the code's names).
WEBHOOK_METRICS = "callscribe-webhook"
ASR_WORKER_METRICS = "callscribe-asr-worker"
TWILIO_GATEWAY_METRICS = "callscribe-twilio-gateway"
KVS_READER_METRICS = "callscribe-kvs-reader"
SIPREC_RECORDER_METRICS = "callscribe-siprec-recorder"
MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)
# Alarms that catch a trend look at this many minutes, all of them over the threshold: one
# slow minute (a burst, a cold start) is not an incident.
SUSTAINED_MINUTES = 3


@dataclass(frozen=True)
class IngestMetrics:
    """One service of tasks holding calls, as its metrics name it."""

    title: str  # "Twilio gateway"
    service: str  # the metrics' service dimension (callscribe.aws.services.task_load)


def metric(name: str, service: str, statistic: str, period: Duration = MINUTE) -> cloudwatch.Metric:
    """One of the services' own metrics (no label: an alarm on a labelled metric becomes a
    metric-math alarm)."""
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=name,
        dimensions_map={"service": service},
        statistic=statistic,
        period=period,
    )


class MonitoringConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        dead_letter_queues: Sequence[sqs.IQueue],
        ingests: Sequence[IngestMetrics],
    ) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(
            self,
            "Alarms",
            display_name=f"CallScribe {config.stage} alarms",
            # SNS's AWS-managed key: CloudWatch alarms publish to it without a key policy.
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
            enforce_ssl=True,
        )
        if config.alarm_email is not None:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        self.alarms: list[cloudwatch.Alarm] = []

        # Anything in a dead-letter queue is a transcript (or a rule's event) nobody handled.
        for index, queue in enumerate(dead_letter_queues):
            self._alarm(
                f"DeadLetters{index}",
                queue.metric_approximate_number_of_messages_visible(
                    period=FIVE_MINUTES, statistic="Maximum"
                ),
                threshold=1,
                periods=1,
                description=f"Messages are waiting in the dead-letter queue {queue.queue_name}: "
                "transcripts that were not delivered or recorded. Read them, fix the cause, "
                "redrive them.",
            )
        # Webhook POSTs that failed (each is recorded for its tenant) or waited too long.
        self._alarm(
            "WebhookFailures",
            metric("WebhookFailed", WEBHOOK_METRICS, "Sum", FIVE_MINUTES),
            threshold=config.alarm_webhook_failures,
            periods=1,
            description="Webhook POSTs are failing: a tenant's receiver is down or refusing.",
        )
        self._alarm(
            "WebhookDropped",
            metric("WebhookDropped", WEBHOOK_METRICS, "Sum", FIVE_MINUTES),
            threshold=1,
            periods=1,
            description="Transcripts waited so long in the delivery queue that they were "
            "dropped (and recorded): delivery is backed up.",
        )
        self._alarm(
            "DeliveryLatency",
            metric("DeliveryLatency", WEBHOOK_METRICS, "p95"),
            threshold=config.alarm_delivery_p95_ms,
            periods=SUSTAINED_MINUTES,
            description="From the endpointer closing an utterance (after its end-of-speech "
            "silence wait) to the receiver accepting the webhook, p95, is over the threshold.",
        )
        # The ASR: refusals mean every worker's queue was full; waits grow before they do.
        self._alarm(
            "AsrWait",
            metric("AsrWaitP95", ASR_WORKER_METRICS, "Maximum"),
            threshold=config.alarm_asr_wait_p95_ms,
            periods=SUSTAINED_MINUTES,
            description="Utterances wait long for a batch on the ASR workers: more workers "
            "are needed than scaling has started (GPU quota? instance capacity?).",
        )
        for ingest in ingests:
            slug = ingest.title.replace(" ", "")
            self._alarm(
                f"{slug}AsrRefused",
                metric("AsrRefused", ingest.service, "Sum"),
                threshold=1,
                periods=SUSTAINED_MINUTES,
                description=f"{ingest.title} tasks keep meeting full ASR workers (503).",
            )
            self._alarm(
                f"{slug}AsrLost",
                metric("AsrLost", ingest.service, "Sum", FIVE_MINUTES),
                threshold=1,
                periods=1,
                description=f"{ingest.title} tasks lost utterances to the ASR (each is "
                "recorded among the tenant's failures).",
            )
        connect = [i for i in ingests if i.service == KVS_READER_METRICS]
        for ingest in connect:
            self._alarm(
                "KvsBehind",
                metric("KvsMillisBehindNow", ingest.service, "Maximum"),
                threshold=config.alarm_kvs_behind_ms,
                periods=SUSTAINED_MINUTES,
                description="A KVS reader is falling behind its Amazon Connect call's live "
                "audio: readers are short of CPU or GetMedia is slow.",
            )

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"callscribe-{config.stage}"
        )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms), width=24, height=4
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Live calls per task (max, average)",
                left=[
                    m
                    for ingest in ingests
                    for m in (
                        metric("LiveCalls", ingest.service, "Maximum"),
                        metric("LiveCalls", ingest.service, "Average"),
                    )
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="End of utterance → webhook delivered (ms)",
                left=[
                    metric("DeliveryLatency", WEBHOOK_METRICS, "p50"),
                    metric("DeliveryLatency", WEBHOOK_METRICS, "p95"),
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Webhooks (per 5 minutes)",
                left=[
                    metric(name, WEBHOOK_METRICS, "Sum", FIVE_MINUTES)
                    for name in ("WebhookDelivered", "WebhookFailed", "WebhookDropped")
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="ASR: queue per worker, p95 wait (ms), refusals",
                left=[metric("AsrQueueDepth", ASR_WORKER_METRICS, "Average")],
                right=[
                    metric("AsrWaitP95", ASR_WORKER_METRICS, "Maximum"),
                    *(metric("AsrRefused", i.service, "Sum") for i in ingests),
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Utterance wait for the ASR, p95 per task (ms)",
                left=[metric("UtteranceWaitP95", i.service, "Maximum") for i in ingests],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Dead-letter queues and KVS lag",
                left=[
                    q.metric_approximate_number_of_messages_visible(statistic="Maximum")
                    for q in dead_letter_queues
                ],
                right=[metric("KvsMillisBehindNow", i.service, "Maximum") for i in connect],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Live event stream: events posted to viewers, dropped (per 5 minutes)",
                left=[metric("LiveEventsPosted", i.service, "Sum", FIVE_MINUTES) for i in ingests],
                right=[
                    metric("LiveEventsDropped", i.service, "Sum", FIVE_MINUTES) for i in ingests
                ],
                width=12,
            ),
        )

    def _alarm(
        self,
        id: str,
        watched: cloudwatch.IMetric,
        *,
        threshold: float,
        periods: int,
        description: str,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            id,
            metric=watched,
            threshold=threshold,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            # No data is no traffic (or a service not deployed): not an incident.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        alarm.add_ok_action(cloudwatch_actions.SnsAction(self.topic))
        self.alarms.append(alarm)
