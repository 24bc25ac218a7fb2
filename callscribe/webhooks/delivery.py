"""Webhook delivery with the contract's semantics.

Per conversation, messages are POSTed one at a time in the order transcribed. An error
response or a timeout is recorded in the Store (status, reason, time, message id) and the
message is dropped: no retries, as the reference API promises, unless the tenant's config asks
for a retry policy. When a slow target lets more than ``max_pending`` messages queue up for one
conversation, the oldest pending are dropped first, and each drop is recorded. At shutdown,
whatever the drain did not deliver (still queued, or a POST still unanswered) is recorded too,
so every message is either delivered or listed by the webhook-failures API.

Every POST is signed (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) and carries the tenant's credentials: a secret token in a header or
query parameter, or an OAuth2 bearer token (fetched anew and the POST repeated once on a 401).

Interim results (tenants whose webhook configuration opts in, calls that ask for them): the
dispatcher is also a ``LivePublisher``, and POSTs each ``InterimTranscript`` as a message of
type ``interim``, best effort. Finals come first: an interim is sent only while no final of its
conversation is waiting, dropped when one is (the queue is backed up), replaced by a newer
interim of the same speaker while it waits, dropped once a final of its speaker from the same
utterance or a later one has arrived, and a final that arrives while an interim POST of its
conversation is in flight cancels that POST rather than wait for it. Interims are never
persisted, retried or recorded as failures; what becomes of them is counted
(``InterimStats``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from callscribe.bus import TranscriptEvent
from callscribe.live import CallEnded, InterimTranscript, LiveEvent, utterance_id
from callscribe.store.base import DeliveryFailure, Store
from callscribe.webhooks.signing import signature_headers
from callscribe.webhooks.targets import (
    ResolvedTarget,
    TargetResolver,
    WebhookAuthError,
    WebhookTarget,
)

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, and a tenant's secret token may travel as a query
# parameter: credentials must never reach the logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

MESSAGE_ID_HEADER = "X-CallScribe-Message-Id"
# Answers worth another attempt when a retry policy is on: the target may recover.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Reasons recorded for messages the shutdown drain did not deliver. An unanswered POST may
# still have reached the target: its reason says so, as the target may see it twice after a
# replay from the after-call API.
SHUTDOWN_BEFORE_DELIVERY = "shutdown before delivery"
SHUTDOWN_DURING_DELIVERY = "shutdown during delivery: no answer before the drain ended"

__all__ = [
    "WebhookDispatcher",
    "WebhookTarget",
    "DeliveryStats",
    "InterimStats",
    "MESSAGE_ID_HEADER",
]


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0  # extra attempts made under a retry policy
    unrouted: int = 0  # messages of tenants with no webhook configured
    abandoned: int = 0  # not delivered when the dispatcher closed (shutdown)


@dataclass
class InterimStats:
    """What became of the interim results handed to the dispatcher."""

    delivered: int = 0
    failed: int = 0  # the target answered an error, or did not answer in time
    # Not sent: a final of the conversation was waiting, a newer interim of the speaker
    # replaced it, its speaker's final came first, or a final cancelled its POST.
    dropped: int = 0
    not_opted_in: int = 0  # the tenant's webhook does not take interim results

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "notOptedIn": self.not_opted_in,
        }


def interim_body(event: InterimTranscript) -> dict[str, Any]:
    """An interim result as the webhook gets it. ``utteranceId`` is the speaker's role and the
    utterance's ``start``, so the final that replaces it is the transcript message whose
    ``sender.role`` and ``autotranscribeResponse.start`` are those."""
    sender: dict[str, str] = {"role": event.role}
    if event.external_id is not None:
        sender = {"externalId": event.external_id, **sender}
    body: dict[str, Any] = {
        "type": "interim",
        "externalConversationId": event.guid,
        **({"streamId": event.stream_id} if event.stream_id is not None else {}),
        "sender": sender,
        "utteranceId": utterance_id(event.role, event.start_ms),
        "start": event.start_ms,
        "text": event.text,
        "stablePrefix": event.stable_prefix,
    }
    if event.unredacted_text is not None:
        body["unredactedText"] = event.unredacted_text
    return body


def _final_speaker(event: TranscriptEvent) -> tuple[str, int] | None:
    """(role, start ms) of a transcript message, None for a body without them."""
    try:
        return str(event.body["sender"]["role"]), int(event.body["autotranscribeResponse"]["start"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _Outcome:
    reason: str
    status: int | None
    retryable: bool


class WebhookDispatcher:
    def __init__(
        self,
        targets: TargetResolver,
        store: Store,
        max_pending: int = 100,
        on_delivered: Callable[[TranscriptEvent, float], None] | None = None,
    ) -> None:
        """``on_delivered``: told of each event its receiver accepted, with the time (UNIX) it
        did: what the webhook Lambda's delivery-latency metric counts."""
        self.targets = targets
        self.store = store
        self.max_pending = max_pending
        self.on_delivered = on_delivered
        self.stats = DeliveryStats()
        self._queues: dict[str, deque[TranscriptEvent]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._in_flight: dict[str, TranscriptEvent] = {}  # per conversation, being POSTed
        self._closed = False
        self.interim_stats = InterimStats()
        # Per conversation: the latest interim of each speaker waiting to be sent, the POST
        # of an interim in flight, and where each speaker's latest final started (ms; kept
        # only for conversations that had an interim, until their call ends, so that the
        # webhook Lambda, which sees finals only, keeps nothing per conversation).
        self._interims: dict[str, dict[str, InterimTranscript]] = {}
        self._interim_posts: dict[str, asyncio.Task[None]] = {}
        self._final_starts: dict[str, dict[str, int]] = {}

    def __call__(self, event: TranscriptEvent) -> None:
        """EventBus subscriber: queue the event and make sure its conversation has a worker."""
        if self._closed:  # published after shutdown began: no worker will ever take it
            self._abandon(event, SHUTDOWN_BEFORE_DELIVERY)
            return
        self._supersede_interims(event)
        queue = self._queues.setdefault(event.group, deque())
        queue.append(event)
        while len(queue) > self.max_pending:
            dropped = queue.popleft()
            self.stats.dropped += 1
            self._record(dropped, f"dropped: more than {self.max_pending} pending", None)
        self._ensure_worker(event.group)

    def publish(self, event: LiveEvent) -> None:
        """``LivePublisher``: an interim result goes to its tenant's webhook when the tenant
        opted in (checked as it is sent); the other live events are not the webhook's."""
        group = f"{event.tenant}/{event.namespace}/{event.guid}"
        if isinstance(event, CallEnded):
            # Its last finals were published before it ended: nothing left to supersede.
            self._final_starts.pop(group, None)
            return
        if not isinstance(event, InterimTranscript) or self._closed:
            return
        if self._queues.get(group):
            self.interim_stats.dropped += 1  # finals are waiting: they go first
            return
        if self._final_starts.get(group, {}).get(event.role, -1) >= event.start_ms:
            self.interim_stats.dropped += 1  # its final (or a later one) came first
            return
        self._final_starts.setdefault(group, {})
        waiting = self._interims.setdefault(group, {})
        if event.role in waiting:
            self.interim_stats.dropped += 1  # replaced by this newer text
        waiting[event.role] = event
        self._ensure_worker(group)

    def _supersede_interims(self, event: TranscriptEvent) -> None:
        """A final arrived: no interim of its speaker from its utterance or before is sent
        after it, and no interim POST of its conversation holds it up."""
        speaker = _final_speaker(event)
        finals = self._final_starts.get(event.group)
        if speaker is not None and finals is not None:
            role, start = speaker
            finals[role] = max(start, finals.get(role, -1))
            waiting = self._interims.get(event.group)
            if waiting is not None and role in waiting and waiting[role].start_ms <= start:
                del waiting[role]
                self.interim_stats.dropped += 1
        posting = self._interim_posts.get(event.group)
        if posting is not None:
            posting.cancel()

    def _ensure_worker(self, group: str) -> None:
        if group not in self._workers:
            self._workers[group] = asyncio.get_running_loop().create_task(
                self._drain(group), name=f"webhook {group}"
            )

    async def _drain(self, group: str) -> None:
        queue = self._queues.setdefault(group, deque())
        try:
            while True:
                if queue:  # finals first
                    event = self._in_flight[group] = queue.popleft()
                    await self._deliver(event)
                    del self._in_flight[group]
                    continue
                waiting = self._interims.get(group)
                if not waiting:
                    break
                # The speaker whose interim waited longest (dicts keep insertion order).
                interim = waiting.pop(next(iter(waiting)))
                await self._deliver_interim(group, interim)
        finally:
            # No await since the loop's last check, so nothing was queued in between.
            self._workers.pop(group, None)
            if not queue:
                self._queues.pop(group, None)
            if not self._interims.get(group):
                self._interims.pop(group, None)

    async def _deliver_interim(self, group: str, event: InterimTranscript) -> None:
        """One POST, not retried. It runs as its own task, which a final of the conversation
        cancels (``_supersede_interims``): the final never waits for an interim."""
        post = asyncio.get_running_loop().create_task(
            self._post_interim(event), name=f"webhook interim {group}"
        )
        self._interim_posts[group] = post
        try:
            # asyncio.wait, not await: a POST cancelled by a final must not cancel this worker.
            await asyncio.wait({post})
        finally:
            self._interim_posts.pop(group, None)
            if not post.done():  # this worker itself was cancelled (shutdown)
                post.cancel()
        if post.cancelled():
            self.interim_stats.dropped += 1
        elif post.exception() is not None:
            self.interim_stats.failed += 1
            log.warning("interim webhook of %s raised: %r", group, post.exception())

    async def _post_interim(self, event: InterimTranscript) -> None:
        try:
            target = await self.targets.resolve(event.tenant)
        except Exception:  # a broken configuration: its finals record the reason
            self.interim_stats.failed += 1
            return
        if target is None or not target.interim_results:
            self.interim_stats.not_opted_in += 1
            return
        body = json.dumps(interim_body(event), ensure_ascii=False, separators=(",", ":")).encode()
        # Its own id, for the signature and for receivers that de-duplicate; never stored.
        message_id = f"interim-{uuid.uuid4()}"
        outcome = await self._attempt(target, message_id, body)
        if outcome is None:
            self.interim_stats.delivered += 1
        else:
            self.interim_stats.failed += 1
            log.info(
                "interim webhook of %s/%s failed: %s",
                event.tenant,
                event.guid,
                target.redact(outcome.reason),
            )

    async def _deliver(self, event: TranscriptEvent) -> None:
        try:
            target = await self.targets.resolve(event.tenant)
        except Exception as exc:  # a broken configuration (bad PEM, missing credential)
            self._fail(event, f"webhook configuration: {exc}"[:500], None)
            return
        if target is None:
            self.stats.unrouted += 1
            return
        # Serialised once: the signature covers exactly these bytes.
        body = json.dumps(event.body, ensure_ascii=False, separators=(",", ":")).encode()
        attempts = 1 + max(0, target.retry_attempts)
        for attempt in range(attempts):
            try:
                outcome = await self._attempt(target, event.message_id, body)
            except Exception as exc:  # never lose a message silently, whatever went wrong
                log.exception("webhook delivery of %s raised", event.message_id)
                outcome = _Outcome(f"internal error: {type(exc).__name__}", None, retryable=False)
            if outcome is None:
                self.stats.delivered += 1
                if self.on_delivered is not None:
                    self.on_delivered(event, time.time())
                return
            if not outcome.retryable or attempt + 1 == attempts:
                break
            self.stats.retried += 1
            await asyncio.sleep(target.retry_backoff_s * 2**attempt)
        assert outcome is not None  # the loop left only on a failed attempt
        reason = outcome.reason
        if attempt:
            reason += f" (after {attempt + 1} attempts)"
        self._fail(event, target.redact(reason), outcome.status)

    async def _attempt(
        self, target: ResolvedTarget, message_id: str, body: bytes
    ) -> _Outcome | None:
        """One POST (two when an OAuth2 token is refused and renewed); None on success."""
        refreshed = False
        while True:
            headers, params = target.credential_parts()
            headers = {
                **headers,
                "content-type": "application/json",
                MESSAGE_ID_HEADER: message_id,
                **signature_headers(target.signing_secret, message_id, body),
            }
            token = None
            if target.oauth is not None:
                try:
                    token = await target.oauth.token()
                except WebhookAuthError as exc:
                    return _Outcome(str(exc), None, retryable=True)
                headers["authorization"] = f"Bearer {token}"
            try:
                response = await target.client.post(
                    target.url,
                    content=body,
                    headers=headers,
                    params=params,
                    timeout=target.timeout_s,
                )
            except httpx.TimeoutException:
                return _Outcome(f"timeout after {target.timeout_s:g} s", None, retryable=True)
            except httpx.HTTPError as exc:
                return _Outcome(f"{type(exc).__name__}: {exc}"[:500], None, retryable=True)
            if response.is_success:
                return None
            if response.status_code == 401 and token is not None and not refreshed:
                assert target.oauth is not None
                target.oauth.invalidate(token)
                refreshed = True
                continue
            status = response.status_code
            return _Outcome(f"http {status}", status, retryable=status in RETRYABLE_STATUS)

    def _fail(self, event: TranscriptEvent, reason: str, status: int | None) -> None:
        self.stats.failed += 1
        self._record(event, reason, status)

    def _record(self, event: TranscriptEvent, reason: str, status: int | None) -> None:
        log.warning("webhook delivery of %s (%s) failed: %s", event.message_id, event.group, reason)
        failure = DeliveryFailure(
            tenant=event.tenant,
            conversation_id=event.conversation_id,
            message_id=event.message_id,
            reason=reason,
            status_code=status,
            at=time.time(),
        )
        try:
            self.store.put_delivery_failure(failure)
        except Exception:
            log.exception("could not record delivery failure of %s", event.message_id)

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.stats.delivered,
            "failed": self.stats.failed,
            "dropped": self.stats.dropped,
            "retried": self.stats.retried,
            "unrouted": self.stats.unrouted,
            "abandoned": self.stats.abandoned,
            "pending": self.pending,
            "interims": self.interim_stats.as_dict(),
        }

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued has been attempted."""
        deadline = time.monotonic() + timeout_s
        while self._workers and time.monotonic() < deadline:
            await asyncio.wait(list(self._workers.values()), timeout=deadline - time.monotonic())

    async def close(self) -> None:
        """Stop delivering (after ``drain``): every message not delivered by now is recorded
        as a delivery failure, never silently lost."""
        self._closed = True
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        # Let the workers unwind, so that none is left between taking and recording a message.
        await asyncio.gather(*workers, return_exceptions=True)
        for event in self._in_flight.values():
            self._abandon(event, SHUTDOWN_DURING_DELIVERY)
        self._in_flight.clear()
        self.interim_stats.dropped += sum(len(w) for w in self._interims.values())
        self._interims.clear()
        for queue in self._queues.values():
            for event in queue:
                self._abandon(event, SHUTDOWN_BEFORE_DELIVERY)
        self._queues.clear()
        await self.targets.close()

    def _abandon(self, event: TranscriptEvent, reason: str) -> None:
        self.stats.abandoned += 1
        self._record(event, reason, None)
