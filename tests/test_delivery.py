"""``WebhookDispatcher`` (``callscribe/webhooks/delivery.py``) against real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from callscribe.bus import InProcessEventBus, TranscriptEvent
from callscribe.secrets import FileSecrets
from callscribe.store.base import DeliveryFailure
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import WebhookReceiver, free_port, running_receiver
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.webhooks.targets import WebhookTarget, WebhookTargets

TENANT = "acme"
MESSAGE_ID_HEADER = "x-callscribe-message-id"  # Starlette lower-cases header names


def event(conversation: str, seq: int, tenant: str = TENANT) -> TranscriptEvent:
    return TranscriptEvent(
        tenant=tenant,
        namespace="twilio",
        conversation_id=conversation,
        message_id=f"{conversation}-msg-{seq}",
        seq=seq,
        body={
            "externalConversationId": conversation,
            "seq": seq,
            "utterance": [{"text": f"utterance number {seq} — ünïcode", "start": seq * 1000}],
        },
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "delivery.sqlite3")
    yield s
    s.close()


@pytest.fixture
def secrets(tmp_path: Path) -> FileSecrets:
    return FileSecrets(tmp_path / "secrets.json")


@pytest.fixture
async def make_dispatcher(
    store: SqliteStore, secrets: FileSecrets
) -> AsyncIterator[Callable[..., WebhookDispatcher]]:
    """A dispatcher whose every tenant uses ``target`` (the deployment-wide default)."""
    made: list[WebhookDispatcher] = []

    def make(target: WebhookTarget, **kwargs: Any) -> WebhookDispatcher:
        dispatcher = WebhookDispatcher(
            WebhookTargets(store, secrets, default=target), store, **kwargs
        )
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def seqs(receiver: WebhookReceiver, conversation: str | None = None) -> list[int]:
    return [
        m.body["seq"]
        for m in receiver.messages
        if conversation is None or m.body["externalConversationId"] == conversation
    ]


@dataclass
class PerConversationDelayReceiver(WebhookReceiver):
    """Records each POST on arrival (as ``WebhookReceiver``) but answers some conversations
    slowly."""

    slow: dict[str, float] = field(default_factory=dict)

    async def _receive(self, request: Request) -> Response:
        response = await super()._receive(request)
        conversation = json.loads(await request.body())["externalConversationId"]
        await asyncio.sleep(self.slow.get(conversation, 0.0))
        return response


@asynccontextmanager
async def started(receiver: WebhookReceiver) -> AsyncIterator[WebhookReceiver]:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


# --------------------------------------------------------------------------- ordering


async def test_one_conversation_arrives_in_publish_order(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(delay_s=0.005) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(15):
            dispatcher(event("CA1", seq))
        await dispatcher.drain(10)

    assert seqs(receiver) == list(range(15))
    assert [m.headers[MESSAGE_ID_HEADER] for m in receiver.messages] == [
        f"CA1-msg-{seq}" for seq in range(15)
    ]
    assert dispatcher.stats.delivered == 15
    assert dispatcher.stats.failed == dispatcher.stats.dropped == 0
    assert store.list_delivery_failures(TENANT) == []


async def test_one_conversation_is_posted_one_at_a_time(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    in_flight, peak = 0, 0

    @dataclass
    class Counting(WebhookReceiver):
        async def _receive(self, request: Request) -> Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.01)
                return await super()._receive(request)
            finally:
                in_flight -= 1

    async with started(Counting()) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(8):
            dispatcher(event("CA1", seq))
        await dispatcher.drain(10)
    assert seqs(receiver) == list(range(8))
    assert peak == 1


async def test_two_conversations_are_independent(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with started(PerConversationDelayReceiver(slow={"CA-slow": 0.5})) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url, timeout_s=5))
        for seq in range(4):  # interleaved publication
            if seq < 2:
                dispatcher(event("CA-slow", seq))
            dispatcher(event("CA-fast", seq))

        await wait_for(lambda: len(seqs(receiver, "CA-fast")) == 4)
        # The fast conversation finished while the slow one was still on its first message.
        assert seqs(receiver, "CA-slow") == [0]
        await dispatcher.drain(10)

    assert seqs(receiver, "CA-fast") == list(range(4))
    assert seqs(receiver, "CA-slow") == [0, 1]
    fast_done = max(
        m.received_at for m in receiver.messages if m.body["externalConversationId"] == "CA-fast"
    )
    slow_second = next(
        m.received_at
        for m in receiver.messages
        if m.body["externalConversationId"] == "CA-slow" and m.body["seq"] == 1
    )
    assert fast_done < slow_second


async def test_same_guid_in_two_tenants_are_separate_conversations(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    assert event("CA1", 0, "acme").group != event("CA1", 0, "globex").group
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(3):
            dispatcher(event("CA1", seq, "acme"))
            dispatcher(event("CA1", seq, "globex"))
        await dispatcher.drain(10)
    assert len(receiver.messages) == 6
    assert dispatcher.stats.delivered == 6


# --------------------------------------------------------------------------- what is sent


async def test_body_and_message_id_header(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        sent = event("CA1", 7)
        dispatcher(sent)
        await dispatcher.drain(5)
    (got,) = receiver.messages
    assert got.body == sent.body
    assert got.headers[MESSAGE_ID_HEADER] == "CA1-msg-7"
    assert got.headers["content-type"].startswith("application/json")
    assert got.query == {}


async def test_secret_in_header(make_dispatcher: Callable[..., WebhookDispatcher]) -> None:
    async with running_receiver() as receiver:
        target = WebhookTarget(
            receiver.url, secret_name="X-Webhook-Token", secret="s3cr3t", secret_in="header"
        )
        dispatcher = make_dispatcher(target)
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
    (got,) = receiver.messages
    assert got.headers["x-webhook-token"] == "s3cr3t"
    assert got.query == {}
    assert got.headers[MESSAGE_ID_HEADER] == "CA1-msg-0"


async def test_secret_in_query(make_dispatcher: Callable[..., WebhookDispatcher]) -> None:
    async with running_receiver() as receiver:
        target = WebhookTarget(
            receiver.url, secret_name="token", secret="s3 cr&3t=", secret_in="query"
        )
        dispatcher = make_dispatcher(target)
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
    (got,) = receiver.messages
    assert got.query == {"token": "s3 cr&3t="}  # URL-encoded on the way, intact on arrival
    assert "token" not in got.headers
    assert got.headers[MESSAGE_ID_HEADER] == "CA1-msg-0"


@pytest.mark.parametrize(
    ("secret_name", "secret"), [(None, None), ("X-Webhook-Token", None), (None, "s3cr3t")]
)
async def test_no_secret_sent_unless_fully_configured(
    make_dispatcher: Callable[..., WebhookDispatcher], secret_name: str | None, secret: str | None
) -> None:
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(
            WebhookTarget(receiver.url, secret_name=secret_name, secret=secret)
        )
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
    (got,) = receiver.messages
    assert got.query == {}
    assert "x-webhook-token" not in got.headers
    assert "s3cr3t" not in json.dumps(got.headers)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_error_status_is_recorded_and_not_retried(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore, status: int
) -> None:
    async with running_receiver(status_code=status) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        before = time.time()
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
        await asyncio.sleep(0.2)  # a retry, if any, would arrive now
    assert len(receiver.messages) == 1
    (failure,) = store.list_delivery_failures(TENANT, "CA1")
    assert failure.status_code == status
    assert failure.reason == f"http {status}"
    assert failure.message_id == "CA1-msg-0"
    assert failure.tenant == TENANT and failure.conversation_id == "CA1"
    assert before <= failure.at <= time.time()
    assert (dispatcher.stats.failed, dispatcher.stats.delivered) == (1, 0)


async def test_failed_message_is_dropped_and_the_next_still_sent(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(status_code=500) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(3):
            dispatcher(event("CA1", seq))
        await dispatcher.drain(5)
    assert seqs(receiver) == [0, 1, 2]  # each once, in order
    assert [f.message_id for f in store.list_delivery_failures(TENANT, "CA1")] == [
        "CA1-msg-0",
        "CA1-msg-1",
        "CA1-msg-2",
    ]


async def test_redirect_is_not_success(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(status_code=302) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
    assert len(receiver.messages) == 1
    (failure,) = store.list_delivery_failures(TENANT)
    assert failure.status_code == 302


async def test_timeout_is_recorded(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(delay_s=0.6) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url, timeout_s=0.1))
        started_at = time.monotonic()
        dispatcher(event("CA1", 0))
        dispatcher(event("CA1", 1))
        await dispatcher.drain(5)
        elapsed = time.monotonic() - started_at
        assert len(receiver.messages) == 2  # each attempted once
    assert elapsed < 0.6  # neither waited for the slow answer
    failures = store.list_delivery_failures(TENANT, "CA1")
    assert [f.message_id for f in failures] == ["CA1-msg-0", "CA1-msg-1"]
    for failure in failures:
        assert failure.reason.startswith("timeout")
        assert failure.status_code is None
    assert dispatcher.stats.failed == 2


async def test_connection_refused_is_recorded(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhook"  # nobody listens there
    dispatcher = make_dispatcher(WebhookTarget(url, timeout_s=2))
    dispatcher(event("CA1", 0))
    dispatcher(event("CA1", 1))
    await dispatcher.drain(5)
    failures = store.list_delivery_failures(TENANT, "CA1")
    assert [f.message_id for f in failures] == ["CA1-msg-0", "CA1-msg-1"]
    for failure in failures:
        assert failure.status_code is None
        assert "Connect" in failure.reason
        assert not failure.reason.startswith(("timeout", "dropped", "http"))
    assert dispatcher.stats.failed == 2 and dispatcher.stats.delivered == 0


async def test_failures_are_filed_under_their_tenant_and_conversation(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(status_code=500) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        dispatcher(event("CA1", 0, "acme"))
        dispatcher(event("CA2", 0, "acme"))
        dispatcher(event("CA1", 0, "globex"))
        await dispatcher.drain(5)
    assert len(receiver.messages) == 3
    assert [f.conversation_id for f in store.list_delivery_failures("acme", "CA1")] == ["CA1"]
    assert [f.conversation_id for f in store.list_delivery_failures("acme", "CA2")] == ["CA2"]
    assert [f.tenant for f in store.list_delivery_failures("globex")] == ["globex"]


async def test_a_broken_store_does_not_stop_delivery(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    def broken(_: DeliveryFailure) -> None:
        raise RuntimeError("database is gone")

    store.put_delivery_failure = broken  # type: ignore[method-assign]
    async with running_receiver(status_code=500) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(3):
            dispatcher(event("CA1", seq))
        await dispatcher.drain(5)
    assert seqs(receiver) == [0, 1, 2]
    assert dispatcher.stats.failed == 3
    assert dispatcher.pending == 0


# --------------------------------------------------------------------------- back-pressure


async def test_overflow_drops_the_oldest_pending_first(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver(delay_s=0.1) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url), max_pending=3)
        dispatcher(event("CA1", 0))
        await wait_for(lambda: len(receiver.messages) == 1)  # 0 is in flight now
        for seq in range(1, 10):
            dispatcher(event("CA1", seq))
        # Another conversation has its own allowance.
        dispatcher(event("CA2", 0))
        await dispatcher.drain(10)

    # In flight (0) is never dropped; of the 9 queued behind it, the newest 3 survive.
    assert seqs(receiver, "CA1") == [0, 7, 8, 9]
    assert seqs(receiver, "CA2") == [0]
    failures = store.list_delivery_failures(TENANT, "CA1")
    assert [f.message_id for f in failures] == [f"CA1-msg-{seq}" for seq in range(1, 7)]
    for failure in failures:
        assert failure.reason.startswith("dropped")
        assert failure.status_code is None
    assert store.list_delivery_failures(TENANT, "CA2") == []
    assert dispatcher.stats.dropped == 6
    assert dispatcher.stats.delivered == 5


async def test_burst_beyond_max_pending_keeps_the_newest(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url), max_pending=5)
        for seq in range(12):  # all queued before the worker gets to run
            dispatcher(event("CA1", seq))
        await dispatcher.drain(10)
    assert seqs(receiver) == [7, 8, 9, 10, 11]
    dropped = store.list_delivery_failures(TENANT, "CA1")
    assert [f.message_id for f in dropped] == [f"CA1-msg-{seq}" for seq in range(7)]
    assert all(f.reason.startswith("dropped") for f in dropped)


# --------------------------------------------------------------------------- drain and bus


async def test_drain_waits_for_pending_posts(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with running_receiver(delay_s=0.1) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(3):
            dispatcher(event("CA1", seq))
        dispatcher(event("CA2", 0))
        assert dispatcher.pending > 0
        assert receiver.messages == []

        await dispatcher.drain(10)

        assert dispatcher.pending == 0
        assert len(receiver.messages) == 4
        assert dispatcher.stats.delivered == 4


async def test_drain_is_bounded_by_its_timeout(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with running_receiver(delay_s=0.3) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(3):
            dispatcher(event("CA1", seq))
        started_at = time.monotonic()
        await dispatcher.drain(0.05)
        assert time.monotonic() - started_at < 0.25
        assert dispatcher.pending > 0  # still going
        await dispatcher.drain(10)
        assert dispatcher.pending == 0
        assert seqs(receiver) == [0, 1, 2]


async def test_drain_with_nothing_pending_returns_at_once(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    dispatcher = make_dispatcher(WebhookTarget("http://127.0.0.1:9/never"))
    started_at = time.monotonic()
    await dispatcher.drain(5)
    assert time.monotonic() - started_at < 0.1
    assert dispatcher.pending == 0


async def test_worker_restarts_for_a_conversation_after_idling(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        dispatcher(event("CA1", 0))
        await dispatcher.drain(5)
        assert dispatcher.pending == 0
        dispatcher(event("CA1", 1))
        await dispatcher.drain(5)
    assert seqs(receiver) == [0, 1]


async def test_subscribed_to_the_in_process_bus(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    async with running_receiver() as receiver:
        bus = InProcessEventBus()
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        bus.subscribe(dispatcher)
        for seq in range(4):
            await bus.publish(event("CA1", seq))
        await dispatcher.drain(5)
    assert seqs(receiver) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_records_every_message_not_delivered(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    """A target far slower than the shutdown drain: whatever was not delivered when the
    server stops (queued, or its POST still unanswered) is recorded as a delivery failure, so
    the webhook-failures API accounts for every message."""
    async with running_receiver(delay_s=2.0) as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url, timeout_s=30))
        published = [
            event(conversation, seq) for conversation in ("CA1", "CA2") for seq in range(8)
        ]
        for e in published:
            dispatcher(e)
        await dispatcher.drain(0.2)  # the shutdown drain ends long before the target answers
        await dispatcher.close()
        # Published after close (a call completing late): recorded at once, never queued.
        late = event("CA3", 0)
        dispatcher(late)
        assert dispatcher.pending == 0

    failures = store.list_delivery_failures(TENANT)
    failed = {f.message_id: f.reason for f in failures}
    received = {m.headers[MESSAGE_ID_HEADER] for m in receiver.messages}
    all_ids = {e.message_id for e in published} | {late.message_id}
    assert dispatcher.stats.delivered == 0
    assert set(failed) == all_ids, "a message was neither delivered nor recorded"
    assert len(failures) == len(all_ids)  # each recorded once
    for message_id, reason in failed.items():
        if message_id in received:  # its POST was under way, unanswered, when we stopped
            assert reason == "shutdown during delivery: no answer before the drain ended"
        else:
            assert reason == "shutdown before delivery"
    assert sum(reason == "shutdown before delivery" for reason in failed.values()) >= 14
    assert dispatcher.stats.abandoned == len(all_ids)


async def test_shutdown_after_everything_was_delivered_records_nothing(
    make_dispatcher: Callable[..., WebhookDispatcher], store: SqliteStore
) -> None:
    async with running_receiver() as receiver:
        dispatcher = make_dispatcher(WebhookTarget(receiver.url))
        for seq in range(4):
            dispatcher(event("CA1", seq))
        await dispatcher.drain(30)
        await dispatcher.close()
    assert seqs(receiver) == [0, 1, 2, 3]
    assert store.list_delivery_failures(TENANT) == []
    assert dispatcher.stats.abandoned == 0
