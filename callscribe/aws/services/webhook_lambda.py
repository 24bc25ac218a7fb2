"""The webhook Lambda: SQS FIFO (one message group per conversation) → the customer's webhook.

Each SQS message is a transcript event in EventBridge's shape, sent by the task that
transcribed it (``SqsFifoDeliveryBus``): its SentTimestamp is when it was published. Delivery
keeps the contract's semantics with the same code as local mode (``WebhookDispatcher`` and
per-tenant ``WebhookTargets``): in order per conversation, a failed POST is recorded and
dropped, never retried by default. Two things are particular to a queue:

- *Oldest pending dropped first*: a message that waited in the queue longer than
  ``CALLSCRIBE_WEBHOOK_MAX_QUEUE_AGE_S`` (``WebhookFunctionSettings``) (a slow or failing target made the queue back up) is
  recorded as dropped and not sent; FIFO order means the oldest go first.
- *Poison messages*: a body that is not a transcript event is reported as a batch item failure
  (powertools' FIFO processor also fails the rest of that message group, keeping its order),
  so SQS redelivers it and, after the queue's maxReceiveCount, parks it in the dead-letter queue.

The event loop lives as long as the Lambda container, so HTTP connections and OAuth2 tokens
are reused across invocations.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from callscribe import adapters
from callscribe.aws.adapters.eventbridge_bus import event_from_detail
from callscribe.aws.settings import WebhookFunctionSettings
from callscribe.bus import TranscriptEvent
from callscribe.config import WebhookSettings
from callscribe.secrets import Secrets
from callscribe.store.base import DeliveryFailure, Store
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.webhooks.targets import WebhookTargets, default_webhook_target

logger = Logger(service="callscribe-webhook")
tracer = Tracer(service="callscribe-webhook")
metrics = Metrics(namespace="CallScribe", service="callscribe-webhook")

DEPLOYMENT_WEBHOOK = "deployment-webhook"


class PoisonMessage(ValueError):
    """An SQS message that is not a transcript event."""


@dataclass
class WebhookDelivery:
    store: Store
    dispatcher: WebhookDispatcher
    loop: asyncio.AbstractEventLoop
    max_queue_age_s: float
    drain_timeout_s: float

    def parse(self, record: SQSRecord, now: float) -> TranscriptEvent | None:
        """The transcript in a record, or None when it waited too long and was dropped."""
        try:
            event = event_from_detail(json.loads(record.body)["detail"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PoisonMessage(f"message {record.message_id} is not a transcript event") from exc
        waited_s = now - int(record.attributes.sent_timestamp) / 1000
        if waited_s > self.max_queue_age_s:
            self.store.put_delivery_failure(
                DeliveryFailure(
                    tenant=event.tenant,
                    conversation_id=event.conversation_id,
                    message_id=event.message_id,
                    reason=f"dropped: waited {waited_s:.0f} s in the queue",
                    status_code=None,
                    at=now,
                )
            )
            metrics.add_metric(name="WebhookDropped", unit=MetricUnit.Count, value=1)
            return None
        return event

    def deliver(self, events: list[TranscriptEvent]) -> None:
        async def send_all() -> None:
            for event in events:
                self.dispatcher(event)
            await self.dispatcher.drain(self.drain_timeout_s)

        before = self.dispatcher.stats.delivered, self.dispatcher.stats.failed
        self.loop.run_until_complete(send_all())
        metrics.add_metric(
            name="WebhookDelivered",
            unit=MetricUnit.Count,
            value=self.dispatcher.stats.delivered - before[0],
        )
        metrics.add_metric(
            name="WebhookFailed",
            unit=MetricUnit.Count,
            value=self.dispatcher.stats.failed - before[1],
        )


def record_latency(event: TranscriptEvent, delivered_at: float) -> None:
    """``DeliveryLatency``: from the endpointer closing the utterance (on the task) to its
    receiver accepting the POST, in ms; one value per message, so CloudWatch's percentiles
    are the messages' (the stack alarms on its p95)."""
    if event.endpointed_at is not None:
        latency_ms = max(0.0, (delivered_at - event.endpointed_at) * 1000)
        metrics.add_metric(
            name="DeliveryLatency", unit=MetricUnit.Milliseconds, value=round(latency_ms, 1)
        )


def deployment_webhook(configured: WebhookSettings, secrets: Secrets) -> WebhookSettings:
    """The deployment-wide target: URL and timeout from the stack, credentials from its
    webhook secret (JSON ``{"name": …, "value": …, "in": "header"|"query"}``, set by the
    operator)."""
    fields: dict[str, Any] = {"url": configured.url, "timeout_s": configured.timeout_s}
    credentials = secrets.get(DEPLOYMENT_WEBHOOK)
    if credentials:
        parsed = json.loads(credentials)
        if parsed.get("name") and parsed.get("value"):
            fields.update(
                secret_name=parsed["name"],
                secret=parsed["value"],
                secret_in=parsed.get("in", "header"),
            )
    return WebhookSettings(**fields)


@functools.cache
def webhook_delivery() -> WebhookDelivery:
    """Built once per Lambda container (cold start), from the function's environment."""
    resources = WebhookFunctionSettings()
    store = adapters.dynamodb_store(resources.table_name)
    secret_ids = {}
    if resources.webhook_secret_arn:
        secret_ids[DEPLOYMENT_WEBHOOK] = resources.webhook_secret_arn
    secrets = adapters.secrets_manager(secret_ids, resources.secrets_prefix)
    settings = deployment_webhook(WebhookSettings(), secrets)
    loop = asyncio.new_event_loop()
    targets = WebhookTargets(store, secrets, default=default_webhook_target(settings))
    return WebhookDelivery(
        store=store,
        dispatcher=WebhookDispatcher(
            targets, store, max_pending=settings.max_pending, on_delivered=record_latency
        ),
        loop=loop,
        max_queue_age_s=resources.webhook_max_queue_age_s,
        drain_timeout_s=settings.timeout_s * 10 + 5,
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    delivery = webhook_delivery()
    now = time.time()
    events: list[TranscriptEvent] = []

    def record_handler(record: SQSRecord) -> None:
        transcript = delivery.parse(record, now)
        if transcript is not None:
            events.append(transcript)

    processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    with processor(records=event["Records"], handler=record_handler):
        processor.process()
    delivery.deliver(events)
    return dict(processor.response())
