"""The AWS side of the cloud-shaped tests, on moto's server: the server itself, and the webhook
path after the tasks as the cloud runs it.

``DeliveryQueueMapping`` stands in for the Lambda SQS event source mapping on the delivery
queue: pollers receive up to ten messages (a FIFO source has no batching window), invoke the
webhook Lambda's handler with the SQS event, and delete (in one batch) what it did not report
as failed. It
notes when each message was queued (SQS's SentTimestamp), received, and handed to the handler,
so that each hop of the path can be timed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from moto.sqs.models import Queue

from callscribe.testing.simulate import free_port
from tests.aws_fixtures import REGION, AwsResources, LambdaContext, sqs_event


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        # The handler's metrics would print a line per invocation among the test's figures.
        "POWERTOOLS_METRICS_DISABLED": "true",
    }


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # moto's SQS rebuilds a queue's message list on DeleteMessage without the lock its sends
    # take: a message sent while another is deleted can vanish. SQS does not lose messages, and
    # these tests send (the tasks) while they delete (the event source mapping).
    unlocked_delete = Queue.delete_message

    def delete_message(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            unlocked_delete(self, receipt_handle)

    monkeypatch.setattr(Queue, "delete_message", delete_message)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in aws_env(endpoint).items():
        monkeypatch.setenv(name, value)
    yield endpoint
    # moto keeps its accounts' state in the process, whichever server serves them.
    httpx.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    server.stop()


@dataclass
class Hops:
    """One message's times on the path (``time.time()`` seconds)."""

    queued_at: float  # SentTimestamp: SQS accepted the SendMessage
    received_at: float  # a poller's ReceiveMessage returned it
    invoked_at: float = 0.0  # the handler was called with its batch
    returned_at: float = 0.0  # the handler returned


@dataclass
class DeliveryQueueMapping:
    resources: AwsResources
    endpoint: str
    pollers: int = 1
    # Between empty receives: stands in for long polling, which answers as soon as a message
    # arrives (moto's long polls hold a stale view of the groups in flight).
    idle_s: float = 0.01
    delivered: int = 0
    invocations: int = 0
    hops: dict[str, Hops] = field(default_factory=dict)  # by transcript message id
    # moto's receives and deletes are not atomic against each other (in-flight groups are read
    # once per receive): the pollers take turns at SQS, never while another's call is running.
    # Batches are still in flight side by side, which is what FIFO ordering has to survive.
    _sqs_turn: threading.Lock = field(default_factory=threading.Lock)
    # The handler keeps one event loop per execution environment; this is one environment.
    _environment: threading.Lock = field(default_factory=threading.Lock)

    async def run(self, stop: asyncio.Event) -> int:
        """Poll until ``stop`` is set and the queue is empty; how many were delivered."""
        # Threads of its own: the pollers are other machines than the tasks, and must not wait
        # in the publishers' default executor queue.
        with ThreadPoolExecutor(self.pollers, thread_name_prefix="esm") as threads:
            await asyncio.gather(*(self._poll(stop, threads) for _ in range(self.pollers)))
        return self.delivered

    async def _poll(self, stop: asyncio.Event, threads: ThreadPoolExecutor) -> None:
        from functions.webhook import handler

        sqs = boto3.client("sqs", region_name=REGION, endpoint_url=self.endpoint)

        def receive() -> list[dict[str, Any]]:
            with self._sqs_turn:
                return sqs.receive_message(
                    QueueUrl=self.resources.queue_url,
                    MaxNumberOfMessages=10,
                    MessageSystemAttributeNames=["All"],
                    WaitTimeSeconds=0,
                ).get("Messages", [])

        def invoke(messages: list[dict[str, Any]]) -> dict[str, Any]:
            with self._environment:
                invoked = time.time()
                for message in messages:
                    self._hops(message).invoked_at = invoked
                result = handler(sqs_event(messages, self.resources), LambdaContext())
                returned = time.time()
                for message in messages:
                    self._hops(message).returned_at = returned
                self.invocations += 1
                return result

        def delete(messages: list[dict[str, Any]]) -> None:
            if not messages:
                return
            with self._sqs_turn:
                sqs.delete_message_batch(
                    QueueUrl=self.resources.queue_url,
                    Entries=[
                        {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                        for n, m in enumerate(messages)
                    ],
                )

        loop = asyncio.get_running_loop()
        while True:
            received = await loop.run_in_executor(threads, receive)
            if not received:
                if stop.is_set():
                    return
                await asyncio.sleep(self.idle_s)
                continue
            now = time.time()
            for message in received:
                detail = json.loads(message["Body"])["detail"]
                self.hops[detail["messageId"]] = Hops(
                    queued_at=int(message["Attributes"]["SentTimestamp"]) / 1000, received_at=now
                )
            result = await loop.run_in_executor(threads, invoke, received)
            failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
            done = [m for m in received if m["MessageId"] not in failed]
            await loop.run_in_executor(threads, delete, done)
            self.delivered += len(done)

    def _hops(self, message: dict[str, Any]) -> Hops:
        return self.hops[json.loads(message["Body"])["detail"]["messageId"]]


def milliseconds(seconds: Iterable[float]) -> str:
    """p50, p95 and max of durations, in ms."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return "no samples"
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"p50 {statistics.median(values):7.1f}  p95 {p95:7.1f}  max {values[-1]:7.1f} ms"
        f"  (n={len(values)})"
    )


def print_hops(title: str, rows: list[tuple[str, Iterable[float]]]) -> None:
    """The figures, for the test's output (-s): moto on loopback, not AWS."""
    print(f"\n{title}")
    for name, seconds in rows:
        print(f"  {name:<44} {milliseconds(seconds)}")
