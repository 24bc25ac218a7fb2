"""Persist, then publish: a message the delivery queue would not take is still in the Store
(the after-call API has it) and is listed among the webhook failures, never silently lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from callscribe.aws.adapters.sqs_delivery_bus import SendRetry, SqsFifoDeliveryBus
from callscribe.bus import InProcessEventBus, TranscriptEvent
from callscribe.store.base import CallKey
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import free_port
from callscribe.transcription import TranscriptionPipeline


class NoAsr:
    """persist_and_publish takes a finished message body: nothing is transcribed here."""

    async def transcribe(self, request: object) -> object:
        raise AssertionError("nothing is transcribed")

    async def close(self) -> None:
        pass


def body(seq: int) -> dict[str, Any]:
    return {
        "type": "transcript",
        "externalConversationId": "CA-pub",
        "autotranscribeResponse": {"utterance": [{"text": f"utterance {seq}"}]},
    }


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.sqlite3")


async def test_a_send_sqs_never_answers_is_retried_then_listed_as_a_webhook_failure(
    store: SqliteStore,
) -> None:
    # Nothing listens on this port: every attempt is refused, as an unreachable SQS would be.
    unreachable = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )
    bus = SqsFifoDeliveryBus(
        "http://127.0.0.1/123456789012/callscribe-test-webhook.fifo",
        client=unreachable,
        retry=SendRetry(attempts=3, first_backoff_s=0.05),
    )
    pipeline = TranscriptionPipeline(NoAsr(), store, bus, retention_s=3600)  # type: ignore[arg-type]
    key = CallKey("acme", "twilio", "CA-pub")
    started = time.monotonic()
    message_id = await pipeline.persist_and_publish(key, 0, body(0))
    elapsed = time.monotonic() - started
    # Retried (two backoffs: 0.05 s and 0.1 s), and briefly: the call's next message waits.
    assert 0.15 <= elapsed < 5
    (stored,) = store.list_messages(key, limit=10, now=time.time())
    assert stored.message_id == message_id and stored.body == body(0)
    (failure,) = store.list_delivery_failures("acme", "CA-pub")
    assert failure.message_id == message_id
    assert failure.reason.startswith("not queued for delivery: DeliveryQueueError")
    assert "attempt 3" in failure.reason and failure.status_code is None
    assert pipeline.publish_failures == 1


async def test_published_messages_record_no_failure(store: SqliteStore) -> None:
    bus = InProcessEventBus()
    received: list[TranscriptEvent] = []
    bus.subscribe(received.append)
    pipeline = TranscriptionPipeline(NoAsr(), store, bus, retention_s=3600)  # type: ignore[arg-type]
    key = CallKey("acme", "twilio", "CA-pub")
    ids = [await pipeline.persist_and_publish(key, seq, body(seq)) for seq in range(2)]
    assert [e.message_id for e in received] == ids
    assert store.list_delivery_failures("acme") == []
    assert pipeline.publish_failures == 0
