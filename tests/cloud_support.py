"""The AWS side of the cloud-shaped tests, on moto's server: the server itself, and the webhook
path after the tasks as the cloud runs it.

``DeliveryQueueMapping`` stands in for the Lambda SQS event source mapping on the delivery
queue. Each of its pollers is a process of its own, as each Lambda execution environment is:
it receives up to ten messages (a FIFO source has no batching window), invokes the webhook
Lambda's handler with the SQS event, and deletes (in one batch) what the handler did not report
as failed. Invocations run side by side, so a conversation's order rests on what it rests on
in AWS: SQS handing out a message group to one receiver at a time, and the handler keeping a
batch's order within each group. Each message's times on the way are noted, to time each hop.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from moto.sqs.models import Queue, SQSBackend

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


def make_moto_sqs_atomic(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS's ReceiveMessage and DeleteMessage are atomic; moto's server runs them on threads
    without a common lock. A receive reads which message groups are in flight once, then picks
    messages while a delete elsewhere changes that set; a delete rebuilds the queue's message
    list without the lock that sends take, so a message sent meanwhile can vanish. One lock
    around receives and deletes (and the queue's own around the rebuild) restores SQS's
    behaviour for what these tests do: send, receive and delete from many threads at once."""
    turn = threading.RLock()
    receive, delete = SQSBackend.receive_message, Queue.delete_message

    def atomic_receive(self: SQSBackend, *args: Any, **kwargs: Any) -> Any:
        with turn:
            return receive(self, *args, **kwargs)

    def atomic_delete(self: Queue, receipt_handle: str) -> None:
        with turn, self._messages_lock:
            delete(self, receipt_handle)

    monkeypatch.setattr(SQSBackend, "receive_message", atomic_receive)
    monkeypatch.setattr(Queue, "delete_message", atomic_delete)


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    make_moto_sqs_atomic(monkeypatch)
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
    invoked_at: float  # the handler was called with its batch
    returned_at: float  # the handler returned


def execution_environment(
    resources: AwsResources, endpoint: str, ready: Any, stop: Any, results: Any, idle_s: float
) -> None:
    """One Lambda execution environment and the poller that feeds it (a process of its own:
    the handler keeps its event loop and clients for the environment's life). Says so on
    ``ready`` once warm; polls until ``stop`` is set and the queue is empty; then puts what it
    did on ``results``."""
    from callscribe.aws.services import webhook_lambda
    from functions.webhook import handler

    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    # Warm: the delivery (clients, the deployment's webhook secret) is built, as after a first
    # invocation. The timings are a warm environment's; a cold start is another matter.
    webhook_lambda.webhook_delivery()
    ready.put(True)
    hops: dict[str, Hops] = {}
    delivered = invocations = 0
    while True:
        received = sqs.receive_message(
            QueueUrl=resources.queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not received:
            if stop.is_set():
                break
            time.sleep(idle_s)
            continue
        received_at = invoked_at = time.time()
        result = handler(sqs_event(received, resources), LambdaContext())
        returned_at = time.time()
        invocations += 1
        for message in received:
            message_id = json.loads(message["Body"])["detail"]["messageId"]
            queued_at = int(message["Attributes"]["SentTimestamp"]) / 1000
            hops[message_id] = Hops(queued_at, received_at, invoked_at, returned_at)
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        done = [m for m in received if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(
                QueueUrl=resources.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)
                ],
            )
        delivered += len(done)
    results.put((hops, delivered, invocations))


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
    # Set once every environment has started and is warm.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> DeliveryQueueMapping:
        """Poll until ``stop`` is set and the queue is empty."""
        # Spawned, not forked: the test process runs threads (moto, the receiver's loop).
        context = multiprocessing.get_context("spawn")
        warm, stopping, results = context.Queue(), context.Event(), context.Queue()
        environments = [
            context.Process(
                target=execution_environment,
                args=(self.resources, self.endpoint, warm, stopping, results, self.idle_s),
                name=f"webhook-environment-{n}",
            )
            for n in range(self.pollers)
        ]
        for environment in environments:
            environment.start()
        try:
            for _ in environments:
                await asyncio.to_thread(warm.get, True, 120)
            self.ready.set()
            await stop.wait()
        finally:
            stopping.set()
            for _ in environments:
                hops, delivered, invocations = await asyncio.to_thread(results.get, True, 120)
                self.hops.update(hops)
                self.delivered += delivered
                self.invocations += invocations
            for environment in environments:
                await asyncio.to_thread(environment.join, 30)
        return self


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
