"""The live hub: what happens on a tenant's calls as it happens, for the people and programs
that watch them (the live page and the live event stream, ``callscribe/api/live.py``).

Events, each naming its call by namespace and guid (``as_json`` is their wire form):

- ``callStarted``: the call went live in this process (its media arrived);
- ``callEnded``: its media ended and its last utterances were transcribed;
- ``interim``: the text so far of an utterance still being spoken, for calls that ask for
  interim results (``callscribe.interim`` calls ``LiveFeed.interim``); ``stablePrefix``: how
  many of its first characters the previous interim of the utterance had too;
- ``final``: a finished utterance, the transcript message exactly as the webhook gets it (its
  text is what the tenant's redaction made of it).

Two sides. Publishing is the ``LivePublisher`` port: ``LiveFeed`` turns what the core does into
events (the call registry tells it of calls, the event bus hands it each message) and
publishes them; local mode's adapter is ``LiveHub``, in process. In AWS another adapter will
take the same events to the viewers' WebSocket connections. Subscribing: ``LiveHub.subscribe``
gives a viewer of one tenant a snapshot of that tenant's live calls and then their events, in
the order published. Each viewer has a bounded queue: one that falls behind is disconnected,
so a slow viewer never holds memory or slows a call (publishing never waits).

Everything here runs on the event loop's thread, as the registry and the bus call it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from callscribe.bus import TranscriptEvent
from callscribe.model import RedactionOutput
from callscribe.redaction import redact
from callscribe.store.base import CallKey, CallRecord, CallStatus, Store

if TYPE_CHECKING:
    from callscribe.calls import CallSession

log = logging.getLogger(__name__)

# Finals kept per live call for the snapshot, so that a viewer who connects mid-call sees the
# conversation so far (about 20 minutes of a call; older ones are in the after-call API).
SNAPSHOT_FINALS_PER_CALL = 100


def utterance_id(role: str, start_ms: int) -> str:
    """Names an utterance for viewers: its speaker and where its audio starts (ms from the
    start of the call's audio). Both its interim results and its final message know these,
    so a viewer can replace the one with the other."""
    return f"{role}-{start_ms}"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CallStarted:
    tenant: str
    namespace: str
    guid: str
    started_at: float  # UNIX seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "callStarted",
            "namespace": self.namespace,
            "guid": self.guid,
            "startedAt": _iso(self.started_at),
        }


@dataclass(frozen=True)
class CallEnded:
    tenant: str
    namespace: str
    guid: str
    ended_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "callEnded",
            "namespace": self.namespace,
            "guid": self.guid,
            "endedAt": _iso(self.ended_at),
        }


@dataclass(frozen=True)
class InterimTranscript:
    tenant: str
    namespace: str
    guid: str
    role: str
    start_ms: int
    text: str  # as the tenant's redaction shows it
    stable_prefix: int  # characters of ``text`` the utterance's previous interim had too
    unredacted_text: str | None = None  # only for redactionOutput redacted_and_unredacted
    # The speaker's ids as its finals carry them (for the webhook; None where not known).
    stream_id: str | None = None
    external_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "interim",
            "namespace": self.namespace,
            "guid": self.guid,
            "utteranceId": utterance_id(self.role, self.start_ms),
            "role": self.role,
            "start": self.start_ms,
            "text": self.text,
            "stablePrefix": self.stable_prefix,
        }
        if self.unredacted_text is not None:
            body["unredactedText"] = self.unredacted_text
        return body


@dataclass(frozen=True)
class FinalTranscript:
    tenant: str
    namespace: str
    guid: str
    seq: int
    message_id: str
    message: dict[str, Any]  # the webhook's body, unchanged

    @classmethod
    def of(cls, event: TranscriptEvent) -> FinalTranscript:
        return cls(
            event.tenant,
            event.namespace,
            event.conversation_id,
            event.seq,
            event.message_id,
            event.body,
        )

    def as_json(self) -> dict[str, Any]:
        role = self.message["sender"]["role"]
        start = self.message["autotranscribeResponse"]["start"]
        return {
            "type": "final",
            "namespace": self.namespace,
            "guid": self.guid,
            "utteranceId": utterance_id(role, start),
            "seq": self.seq,
            "messageId": self.message_id,
            "message": self.message,
        }


LiveEvent = CallStarted | CallEnded | InterimTranscript | FinalTranscript


class LivePublisher(Protocol):
    """The publishing side of the live hub (a port): takes an event to the tenant's viewers.
    Must not block and must not raise: it is called from inside calls."""

    def publish(self, event: LiveEvent) -> None: ...


class LivePublishers:
    """Several ``LivePublisher``s as one (local mode: the viewers' hub, and the webhook for
    tenants that take interim results), each in the order given; one that raises does not
    keep the event from the others."""

    def __init__(self, *publishers: LivePublisher) -> None:
        self.publishers = publishers

    def publish(self, event: LiveEvent) -> None:
        for publisher in self.publishers:
            try:
                publisher.publish(event)
            except Exception:
                log.exception(
                    "live event for call %s/%s not published", event.namespace, event.guid
                )


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LiveFeed:
    """What the core tells viewers, published on a ``LivePublisher``: a ``CallWatcher`` of the
    call registry (started, ended), a subscriber of the event bus (finals), and ``interim``."""

    def __init__(self, publisher: LivePublisher) -> None:
        self.publisher = publisher

    def _publish(self, event: LiveEvent) -> None:
        try:
            self.publisher.publish(event)
        except Exception:  # viewers must never cost a call anything
            log.exception("live event for call %s/%s not published", event.namespace, event.guid)

    def call_registered(self, call: CallSession) -> None:
        key = call.key
        self._publish(CallStarted(key.tenant, key.namespace, key.guid, time.time()))

    def call_unregistered(self, call: CallSession) -> None:
        key = call.key
        self._publish(CallEnded(key.tenant, key.namespace, key.guid, time.time()))

    def final(self, event: TranscriptEvent) -> None:
        self._publish(FinalTranscript.of(event))

    def interim(
        self,
        key: CallKey,
        role: str,
        start_ms: int,
        text: str,
        stable_prefix: int,
        redaction: RedactionOutput,
        *,
        stream_id: str | None = None,
        external_id: str | None = None,
    ) -> None:
        """The text so far of ``role``'s utterance that started at ``start_ms`` (as its final
        message's ``start`` will say), of which the first ``stable_prefix`` characters did not
        change since its previous interim. ``text`` is the recogniser's own; it is shown as
        the call's ``redactionOutput`` asks, as its finals are. ``callscribe.interim`` calls
        this."""
        shown, stable, unredacted = text, stable_prefix, None
        if redaction is not RedactionOutput.UNREDACTED:
            shown = redact(text)
            # What redaction makes of the stable part may still change as words arrive (a
            # digit run grows into a card number): only what both agree on is stable.
            stable = _common_prefix(redact(text[:stable_prefix]), shown)
            if redaction is RedactionOutput.BOTH:
                unredacted = text
        self._publish(
            InterimTranscript(
                key.tenant,
                key.namespace,
                key.guid,
                role,
                start_ms,
                shown,
                stable,
                unredacted,
                stream_id=stream_id,
                external_id=external_id,
            )
        )


# The most messages of one call read for a snapshot from the Store (the after-call API's own
# limit): the snapshot keeps the last SNAPSHOT_FINALS_PER_CALL of them.
SNAPSHOT_MESSAGES_READ = 1000


def snapshot_from_store(
    store: Store,
    tenant: str,
    *,
    guid: str | None = None,
    namespace: str | None = None,
    now: float,
) -> dict[str, Any]:
    """A ``snapshot`` as ``LiveHub.snapshot`` gives it, from the Store: where no process knows
    every live call (AWS: each task holds some), the calls not completed yet and their
    recent messages. Calls of processes that died show until the sweep completes them."""
    if guid is not None:
        found: list[CallRecord] = store.find_calls(tenant, guid)
    else:
        found = [c for c in store.list_incomplete_calls() if c.key.tenant == tenant]
    calls = []
    for call in sorted(found, key=lambda c: c.created_at):
        key = call.key
        if call.status is CallStatus.COMPLETED or (namespace and key.namespace != namespace):
            continue
        messages = store.list_messages(key, SNAPSHOT_MESSAGES_READ, now)
        finals = [
            FinalTranscript(tenant, key.namespace, key.guid, m.seq, m.message_id, m.body)
            for m in messages[-SNAPSHOT_FINALS_PER_CALL:]
        ]
        calls.append(
            {
                "namespace": key.namespace,
                "guid": key.guid,
                "startedAt": _iso(call.created_at),
                "finals": [final.as_json() for final in finals],
            }
        )
    return {"type": "snapshot", "calls": calls}


class LiveSubscriptionEnded(Exception):
    """The hub let this viewer go (``str(exc)`` says why)."""


class LiveSubscription:
    """One viewer of one tenant's calls (all of them, or one guid's): the snapshot taken as it
    subscribed, then every event published after it, in order, as JSON text."""

    def __init__(
        self,
        hub: LiveHub,
        tenant: str,
        guid: str | None,
        namespace: str | None,
        max_pending: int,
    ) -> None:
        self._hub = hub
        self.tenant = tenant
        self.guid = guid
        self.namespace = namespace
        self.snapshot: dict[str, Any] = {}
        self._max_pending = max_pending
        self._pending: deque[str] = deque()
        self._wakeup = asyncio.Event()
        # Set once the hub lets the viewer go (fell behind, or the server is stopping).
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.fell_behind = False
        self.lost_events = 0

    def wants(self, namespace: str, guid: str) -> bool:
        return (self.guid is None or guid == self.guid) and (
            self.namespace is None or namespace == self.namespace
        )

    def _offer(self, text: str) -> bool:
        """Queue one event; False (and the viewer is let go) when it is too far behind: this
        event and the ones it had not read are lost to it (``lost_events``)."""
        if len(self._pending) >= self._max_pending:
            self.fell_behind = True
            self.lost_events = len(self._pending) + 1
            self._end(f"fell {len(self._pending)} events behind")
            return False
        self._pending.append(text)
        self._wakeup.set()
        return True

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self._pending.clear()  # what a viewer that is gone would never read
            self.ended.set()
            self._wakeup.set()

    async def next(self) -> str:
        """The next event's JSON; raises ``LiveSubscriptionEnded`` once the hub let go."""
        while True:
            if self.end_reason is not None:
                raise LiveSubscriptionEnded(self.end_reason)
            if self._pending:
                return self._pending.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """The viewer left."""
        self._hub.unsubscribe(self)


@dataclass
class _LiveCall:
    started: CallStarted
    finals: deque[FinalTranscript] = field(
        default_factory=lambda: deque(maxlen=SNAPSHOT_FINALS_PER_CALL)
    )

    def as_json(self) -> dict[str, Any]:
        call = self.started.as_json()
        del call["type"]
        return {**call, "finals": [final.as_json() for final in self.finals]}


class LiveHub:
    """Local mode's live hub: the in-process ``LivePublisher`` and its viewers, by tenant."""

    def __init__(self, max_pending_events: int = 256) -> None:
        self.max_pending_events = max_pending_events
        self._calls: dict[str, dict[tuple[str, str], _LiveCall]] = {}
        self._viewers: dict[str, set[LiveSubscription]] = {}
        self.dropped = 0  # viewers let go for falling behind
        # Events those viewers never got: the one that found the queue full, and the ones
        # queued that they had not read (a viewer's new snapshot covers calls, not these).
        self.dropped_events = 0

    def publish(self, event: LiveEvent) -> None:
        self._remember(event)
        viewers = self._viewers.get(event.tenant)
        if not viewers:
            return
        text = json.dumps(event.as_json())  # once, whoever watches
        for viewer in list(viewers):
            if viewer.wants(event.namespace, event.guid) and not viewer._offer(text):
                self.dropped += 1
                self.dropped_events += viewer.lost_events
                viewers.discard(viewer)
                log.warning(
                    "live viewer of tenant %s disconnected: %s", viewer.tenant, viewer.end_reason
                )

    def _remember(self, event: LiveEvent) -> None:
        """The tenant's live calls, and their recent finals, for the snapshots."""
        where = (event.namespace, event.guid)
        if isinstance(event, CallStarted):
            self._calls.setdefault(event.tenant, {})[where] = _LiveCall(event)
            return
        calls = self._calls.get(event.tenant)
        if calls is None or where not in calls:
            return
        if isinstance(event, CallEnded):
            del calls[where]
            if not calls:
                del self._calls[event.tenant]
        elif isinstance(event, FinalTranscript):
            calls[where].finals.append(event)

    def subscribe(
        self, tenant: str, *, guid: str | None = None, namespace: str | None = None
    ) -> LiveSubscription:
        """A viewer of ``tenant``'s live calls (only the call ``guid``, in ``namespace``, when
        given). Its snapshot and its first event are taken at the same instant: nothing
        falls between them and nothing is in both."""
        viewer = LiveSubscription(self, tenant, guid, namespace, self.max_pending_events)
        viewer.snapshot = self.snapshot(tenant, guid=guid, namespace=namespace)
        self._viewers.setdefault(tenant, set()).add(viewer)
        return viewer

    def unsubscribe(self, viewer: LiveSubscription) -> None:
        viewers = self._viewers.get(viewer.tenant)
        if viewers is not None:
            viewers.discard(viewer)
            if not viewers:
                del self._viewers[viewer.tenant]

    def snapshot(
        self, tenant: str, *, guid: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        calls = [
            call
            for (ns, call_guid), call in self._calls.get(tenant, {}).items()
            if (guid is None or call_guid == guid) and (namespace is None or ns == namespace)
        ]
        calls.sort(key=lambda call: call.started.started_at)
        return {"type": "snapshot", "calls": [call.as_json() for call in calls]}

    def stats(self) -> dict[str, int]:
        """``/healthz``'s ``live`` (local mode)."""
        return {
            "viewers": self.viewers(),
            "viewersDropped": self.dropped,
            "eventsDropped": self.dropped_events,
        }

    def viewers(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return len(self._viewers.get(tenant, ()))
        return sum(len(viewers) for viewers in self._viewers.values())

    def close(self, reason: str = "the server is stopping") -> None:
        """Let every viewer go (their streams are closed with ``reason``)."""
        for viewers in self._viewers.values():
            for viewer in viewers:
                viewer._end(reason)
        self._viewers.clear()
