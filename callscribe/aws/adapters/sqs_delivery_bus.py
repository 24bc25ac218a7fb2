"""SQS FIFO adapter of the ``EventBus`` port: each transcript straight onto the delivery queue.

The webhook Lambda reads that queue (an SQS event source mapping). Each message goes into its
conversation's message group (``message_group``: tenant, namespace and guid hashed), so SQS
keeps a conversation's messages in order and hands out the groups in parallel: a slow webhook
holds up only its own conversation. The deduplication id is the message id, so a send that is
retried after a lost answer is not queued twice (within SQS's five-minute window). The body is
the EventBridge-shaped envelope (``transcript_envelope``) the Lambda parses.

A failed send is retried a few times within about a second (throttling, 5xx, a dropped
connection), then raised: the transcription pipeline records it as a delivery failure the
customer sees. Errors no retry can fix (no such queue, access denied) are raised at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from callscribe.aws.adapters.eventbridge_bus import message_group, transcript_envelope
from callscribe.bus import TranscriptEvent

log = logging.getLogger(__name__)

# Client errors that a later attempt may not meet: SQS answers throttling with these codes.
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "RequestThrottled", "KmsThrottled", "SlowDown"}
)


class DeliveryQueueError(RuntimeError):
    """The delivery queue did not take a transcript."""


@dataclass(frozen=True)
class SendRetry:
    """``attempts`` sends in all, waiting ``first_backoff_s`` after the first failure and
    doubling: 0.05 + 0.1 + 0.2 + 0.4 s by default, with each attempt bounded by the client's
    timeouts. The call waits meanwhile, and so does its next message (order), so it stays
    short."""

    attempts: int = 5
    first_backoff_s: float = 0.05


def delivery_queue_client() -> Any:
    """An SQS client that does not retry by itself (``SendRetry`` does, visibly) and gives up
    on a silent connection quickly."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sqs",
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=2,
            read_timeout=5,
        ),
    )


def retryable(exc: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in THROTTLING_CODES or status == 429 or status >= 500
    if isinstance(exc, ParamValidationError):  # the request itself is wrong: it stays wrong
        return False
    # Connection refused or reset, timeouts, a truncated answer: the request may not have
    # arrived (or its answer was lost; the deduplication id makes the repeat harmless).
    return isinstance(exc, BotoCoreError)


class SqsFifoDeliveryBus:
    def __init__(
        self, queue_url: str, client: Any | None = None, retry: SendRetry | None = None
    ) -> None:
        self.queue_url = queue_url
        self.retry = retry or SendRetry()
        self._client = client if client is not None else delivery_queue_client()

    async def publish(self, event: TranscriptEvent) -> None:
        await asyncio.to_thread(self.send, event)

    async def close(self) -> None:
        pass  # publish returns once SQS has the message

    def send(self, event: TranscriptEvent) -> None:
        body = json.dumps(transcript_envelope(event, time.time()), ensure_ascii=False)
        backoff_s = self.retry.first_backoff_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                self._client.send_message(
                    QueueUrl=self.queue_url,
                    MessageBody=body,
                    MessageGroupId=message_group(event),
                    MessageDeduplicationId=event.message_id,
                )
                return
            except Exception as exc:
                if attempt == self.retry.attempts or not retryable(exc):
                    raise DeliveryQueueError(
                        f"delivery queue refused message {event.message_id} "
                        f"(attempt {attempt}): {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning(
                    "send of %s to the delivery queue failed (attempt %d), retrying: %s",
                    event.message_id,
                    attempt,
                    exc,
                )
            time.sleep(backoff_s)
            backoff_s *= 2
