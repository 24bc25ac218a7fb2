"""Interim webhooks (``WebhookDispatcher.publish``): tenants that opt in get the interim results
of calls that ask for them, best effort and never ahead of, or after, a final. Real HTTP
receivers on loopback; the dispatcher as local mode composes it (a tenant's webhook
configuration in the Store, its signing secret in the secrets file)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from callscribe.api.schemas import InterimMessage
from callscribe.bus import TranscriptEvent
from callscribe.live import CallEnded, InterimTranscript, LiveFeed, LiveHub, LivePublishers
from callscribe.model import RedactionOutput
from callscribe.secrets import FileSecrets
from callscribe.store.base import CallKey
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import WebhookReceiver, running_receiver
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.webhooks.management import set_webhook, signing_secret
from callscribe.webhooks.signing import sign
from callscribe.webhooks.targets import WebhookTargets

TENANT = "acme"
GUID = "CA1"


def final(seq: int, role: str, start: int, guid: str = GUID) -> TranscriptEvent:
    return TranscriptEvent(
        tenant=TENANT,
        namespace="twilio",
        conversation_id=guid,
        message_id=f"{guid}-msg-{seq}",
        seq=seq,
        body={
            "type": "transcript",
            "externalConversationId": guid,
            "streamId": f"stream-{role}",
            "sender": {"externalId": f"id-{role}", "role": role},
            "autotranscribeResponse": {
                "message": "transcript",
                "start": start,
                "end": start + 900,
                "utterance": [{"text": f"final {seq}"}],
            },
        },
    )


def interim(
    role: str, start: int, text: str, stable: int = 0, guid: str = GUID
) -> InterimTranscript:
    return InterimTranscript(TENANT, "twilio", guid, role, start, text, stable)


def kinds(receiver: WebhookReceiver) -> list[str]:
    """Each POST as "interim:<text>" or "final:<seq text>", in arrival order."""
    return [
        f"interim:{m.body['text']}"
        if m.body["type"] == "interim"
        else f"final:{m.body['autotranscribeResponse']['utterance'][0]['text']}"
        for m in receiver.messages
    ]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class SlowReceiver(WebhookReceiver):
    """Records each POST on arrival, then answers those whose body says a text in ``slow``
    after that many seconds (finals by their utterance text, interims by theirs)."""

    slow: dict[str, float] = field(default_factory=dict)

    async def _receive(self, request: Request) -> Response:
        response = await super()._receive(request)
        body = json.loads(await request.body())
        text = (
            body["text"]
            if body["type"] == "interim"
            else body["autotranscribeResponse"]["utterance"][0]["text"]
        )
        await asyncio.sleep(self.slow.get(text, 0.0))
        return response


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "interim.sqlite3")


@pytest.fixture
def secrets(tmp_path: Path) -> FileSecrets:
    return FileSecrets(tmp_path / "secrets.json")


@pytest.fixture
async def dispatcher(store: SqliteStore, secrets: FileSecrets) -> AsyncIterator[WebhookDispatcher]:
    made = WebhookDispatcher(WebhookTargets(store, secrets), store)
    yield made
    await made.close()


async def test_an_opted_in_tenant_gets_signed_interims_before_the_final(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with running_receiver() as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        dispatcher.publish(interim("agent", 400, "Hello, this is"))
        await wait_for(lambda: len(receiver.messages) == 1)
        dispatcher.publish(interim("agent", 400, "Hello, this is Sarah", 14))
        await wait_for(lambda: len(receiver.messages) == 2)
        dispatcher(final(0, "agent", 400))
        await dispatcher.drain(5)

    assert kinds(receiver) == [
        "interim:Hello, this is",
        "interim:Hello, this is Sarah",
        "final:final 0",
    ]
    second = receiver.messages[1]
    assert second.body == {
        "type": "interim",
        "externalConversationId": GUID,
        "sender": {"role": "agent"},
        "utteranceId": "agent-400",
        "start": 400,
        "text": "Hello, this is Sarah",
        "stablePrefix": 14,
    }
    # What the OpenAPI document describes, field for field.
    assert InterimMessage.model_validate(second.body).model_dump(exclude_none=True) == second.body
    # Signed like every message (Standard Webhooks), each with an id of its own.
    message_id = second.headers["webhook-id"]
    assert message_id.startswith("interim-")
    assert message_id != receiver.messages[0].headers["webhook-id"]
    expected = sign(
        signing_secret(secrets, TENANT),
        message_id,
        int(second.headers["webhook-timestamp"]),
        second.raw,
    )
    assert second.headers["webhook-signature"] == expected
    assert dispatcher.interim_stats.as_dict() == {
        "delivered": 2,
        "failed": 0,
        "dropped": 0,
        "notOptedIn": 0,
    }
    assert dispatcher.as_dict()["interims"]["delivered"] == 2
    assert store.list_delivery_failures(TENANT) == []


async def test_without_the_opt_in_the_webhook_stays_final_only(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with running_receiver() as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url)  # the default: off
        dispatcher.publish(interim("agent", 400, "Hello"))
        await wait_for(lambda: dispatcher.interim_stats.not_opted_in == 1)
        dispatcher(final(0, "agent", 400))
        await dispatcher.drain(5)

    assert kinds(receiver) == ["final:final 0"]
    assert dispatcher.interim_stats.delivered == 0


async def test_interims_wait_for_a_final_in_flight_are_replaced_and_dropped_behind_finals(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with _slow({"final 0": 0.4}) as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        dispatcher(final(0, "customer", 0))
        await wait_for(lambda: len(receiver.messages) == 1)  # final 0 is being answered
        # Wait behind it, the newer replacing the older of the same speaker.
        dispatcher.publish(interim("agent", 2000, "I can"))
        dispatcher.publish(interim("agent", 2000, "I can help"))
        dispatcher(final(1, "customer", 1000))  # queued: a final waits now
        dispatcher.publish(interim("customer", 3000, "thanks"))  # behind a final: dropped
        await dispatcher.drain(5)

    # Finals in order; the agent's latest interim after them (its own final has not come).
    assert kinds(receiver) == ["final:final 0", "final:final 1", "interim:I can help"]
    assert dispatcher.interim_stats.dropped == 2
    assert dispatcher.interim_stats.delivered == 1


async def test_no_interim_is_sent_after_the_final_of_its_utterance(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with _slow({"final 0": 0.3}) as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        dispatcher(final(0, "customer", 0))
        await wait_for(lambda: len(receiver.messages) == 1)
        dispatcher.publish(interim("agent", 1500, "my account"))  # waits
        dispatcher(final(1, "agent", 1500))  # its final: the waiting interim goes
        dispatcher.publish(interim("agent", 1500, "my account number"))  # late: dropped
        dispatcher.publish(interim("agent", 900, "earlier"))  # before that final: dropped
        await dispatcher.drain(5)

    assert kinds(receiver) == ["final:final 0", "final:final 1"]
    assert dispatcher.interim_stats.dropped == 3


async def test_a_final_does_not_wait_for_an_interim_post_in_flight(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with _slow({"slow interim": 3.0}) as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        dispatcher.publish(interim("agent", 400, "slow interim"))
        await wait_for(lambda: len(receiver.messages) == 1)  # its POST is being answered
        published = time.monotonic()
        dispatcher(final(0, "agent", 400))
        await wait_for(lambda: len(receiver.messages) == 2)
        waited = time.monotonic() - published
        await dispatcher.drain(5)

    assert kinds(receiver) == ["interim:slow interim", "final:final 0"]
    assert waited < 2.0  # the interim's answer would have taken 3 s
    assert dispatcher.stats.delivered == 1
    assert dispatcher.interim_stats.dropped == 1 and dispatcher.interim_stats.delivered == 0


async def test_a_failed_interim_is_counted_not_retried_and_not_recorded(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    async with running_receiver(status_code=503) as receiver:
        # A retry policy for finals does not apply to interims.
        set_webhook(
            store,
            secrets,
            tenant=TENANT,
            url=receiver.url,
            interim_results=True,
            retry_attempts=2,
            retry_backoff_s=0.01,
        )
        dispatcher.publish(interim("agent", 400, "Hello"))
        await wait_for(lambda: dispatcher.interim_stats.failed == 1)
        await dispatcher.drain(5)

    assert len(receiver.messages) == 1
    assert store.list_delivery_failures(TENANT) == []  # the failures API lists messages only


async def test_local_mode_feed_takes_interims_to_viewers_and_the_webhook(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    """As ``LocalRuntime`` composes it: one live feed, the hub and the dispatcher behind it;
    the interim's text is redacted as the call asks, for the webhook as for viewers."""
    hub = LiveHub()
    feed = LiveFeed(LivePublishers(hub, dispatcher))
    viewer = hub.subscribe(TENANT)
    async with running_receiver() as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        key = CallKey(TENANT, "twilio", GUID)
        feed.interim(
            key, "customer", 0, "my card is 4111 1111 1111 1111", 0, RedactionOutput.REDACTED
        )
        await wait_for(lambda: len(receiver.messages) == 1)
        feed.publisher.publish(CallEnded(TENANT, "twilio", GUID, time.time()))

    seen = json.loads(await viewer.next())
    posted = receiver.messages[0].body
    assert posted["text"] == seen["text"] and "4111" not in posted["text"]
    assert posted["utteranceId"] == seen["utteranceId"] == "customer-0"


@asynccontextmanager
async def _slow(slow: dict[str, float]) -> AsyncIterator[WebhookReceiver]:
    receiver = SlowReceiver(slow=slow)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def test_conversations_without_interims_leave_nothing_behind(
    dispatcher: WebhookDispatcher, store: SqliteStore, secrets: FileSecrets
) -> None:
    """As in the webhook Lambda, which sees finals only (and no call's end): delivery keeps no
    per-conversation state for interims that never came; one that had them forgets its call
    once it ends."""
    async with running_receiver() as receiver:
        set_webhook(store, secrets, tenant=TENANT, url=receiver.url, interim_results=True)
        for n in range(20):
            dispatcher(final(0, "agent", 0, guid=f"CA-final-only-{n}"))
        dispatcher.publish(interim("agent", 0, "hello", guid="CA-with"))
        await wait_for(lambda: dispatcher.interim_stats.delivered == 1)
        dispatcher(final(0, "agent", 0, guid="CA-with"))
        await dispatcher.drain(5)
        assert list(dispatcher._final_starts) == [f"{TENANT}/twilio/CA-with"]
        dispatcher.publish(CallEnded(TENANT, "twilio", "CA-with", time.time()))
    assert dispatcher._final_starts == {} and dispatcher._interims == {}
    assert dispatcher.stats.delivered == 21
