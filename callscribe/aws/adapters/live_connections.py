"""AWS adapter of the ``LivePublisher`` port: a tenant's live events to its viewers'
connections on the deployment's WebSocket API (API Gateway), from whichever task holds the
call.

Viewers connect to the WebSocket API (its ``$connect`` Lambda records each connection in the
Store, ``callscribe.aws.services.live_lambda``); a task posts each event to the tenant's
connections through the API's management endpoint (``post_to_connection``). Publishing only
queues the event: one thread posts, so a call never waits on API Gateway or the table. The
queue is bounded: when it is full the event is dropped and counted, never waited for. A
tenant's connections are read from the table at most once per ``cache_s``, not per event; a
connection API Gateway says is gone is deleted from the Store.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callscribe.live import LiveEvent
from callscribe.store.base import LiveConnection, Store

log = logging.getLogger(__name__)

# How long a tenant's connection list is reused: a viewer that just connected receives events
# this long after at the latest.
CONNECTIONS_CACHE_S = 2.0
# Events waiting for the posting thread (all tenants): beyond this they are dropped.
MAX_BACKLOG = 2000
CLOSE_TIMEOUT_S = 5.0


@dataclass
class LivePublishingStats:
    posted: int = 0  # events posted to one connection each
    dropped: int = 0  # events dropped: the backlog was full
    gone: int = 0  # connections API Gateway no longer had (deleted from the Store)
    failed: int = 0  # posts or connection reads that failed otherwise

    def as_dict(self) -> dict[str, int]:
        return {
            "posted": self.posted,
            "dropped": self.dropped,
            "gone": self.gone,
            "failed": self.failed,
        }


def management_client(callback_url: str) -> Any:
    """The WebSocket API stage's management endpoint
    (``https://<api>.execute-api.<region>.amazonaws.com/<stage>``)."""
    import boto3

    return boto3.client("apigatewaymanagementapi", endpoint_url=callback_url)


class LiveConnectionsPublisher:
    def __init__(
        self,
        store: Store,
        client: Any,
        *,
        cache_s: float = CONNECTIONS_CACHE_S,
        max_backlog: int = MAX_BACKLOG,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = client
        self.cache_s = cache_s
        self.stats = LivePublishingStats()
        self._clock = clock
        self._backlog: queue.Queue[LiveEvent | None] = queue.Queue(maxsize=max_backlog)
        # tenant -> (read at, its connections); only the posting thread touches it.
        self._connections: dict[str, tuple[float, list[LiveConnection]]] = {}
        self._thread = threading.Thread(target=self._run, name="live-connections", daemon=True)
        self._thread.start()

    def publish(self, event: LiveEvent) -> None:
        try:
            self._backlog.put_nowait(event)
        except queue.Full:
            self.stats.dropped += 1

    def pending(self) -> int:
        return self._backlog.qsize()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Post what is queued (up to ``timeout_s``: the calls' last events), then stop."""
        deadline = time.monotonic() + timeout_s
        try:
            self._backlog.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("live events: backlog still full at shutdown; %d dropped", self.pending())
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            event = self._backlog.get()
            if event is None:
                return
            try:
                self._post(event)
            except Exception:  # one event's failure must not stop the thread
                self.stats.failed += 1
                log.exception("live event for %s/%s not posted", event.namespace, event.guid)

    def _tenant_connections(self, tenant: str) -> list[LiveConnection]:
        now = self._clock()
        cached = self._connections.get(tenant)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        connections = self.store.live_connections(tenant, time.time())
        self._connections[tenant] = (now, connections)
        return connections

    def _post(self, event: LiveEvent) -> None:
        connections = self._tenant_connections(event.tenant)
        wanted = [
            c
            for c in connections
            if (c.guid is None or c.guid == event.guid)
            and (c.namespace is None or c.namespace == event.namespace)
        ]
        if not wanted:
            return
        data = json.dumps(event.as_json()).encode()  # once, whoever watches
        gone = self.client.exceptions.GoneException
        for connection in wanted:
            try:
                self.client.post_to_connection(ConnectionId=connection.connection_id, Data=data)
                self.stats.posted += 1
            except gone:
                self.stats.gone += 1
                self._forget(connection)
            except Exception as exc:  # throttled, too large, API Gateway unavailable
                self.stats.failed += 1
                log.warning("live event not posted to %s: %s", connection.connection_id, exc)

    def _forget(self, connection: LiveConnection) -> None:
        """The viewer left without API Gateway's $disconnect reaching the Store (or before it
        did): not posted to again."""
        cached = self._connections.get(connection.tenant)
        if cached is not None:
            self._connections[connection.tenant] = (
                cached[0],
                [c for c in cached[1] if c.connection_id != connection.connection_id],
            )
        try:
            self.store.delete_live_connection(connection.connection_id)
        except Exception as exc:  # its TTL removes it anyway
            log.warning("gone live connection %s not deleted: %s", connection.connection_id, exc)
