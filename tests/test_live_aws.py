"""The live event stream in AWS: live tokens from the API Lambda, the WebSocket API's
connection Lambda ($connect with the token, $disconnect), and the tasks' publisher that posts
a tenant's events to its viewers' connections, on moto (DynamoDB, Secrets Manager, API
Gateway's management API)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import itsdangerous.timed
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends
from moto.core import DEFAULT_ACCOUNT_ID

from callscribe import adapters
from callscribe.auth import LiveTokens, StreamTokens, create_api_key
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.adapters.live_connections import LiveConnectionsPublisher, management_client
from callscribe.aws.services import api_lambda, live_lambda
from callscribe.aws.settings import AwsSettings
from callscribe.bus import TranscriptEvent
from callscribe.ingest import BusWithLiveCopy
from callscribe.live import CallEnded, CallStarted, FinalTranscript, LiveEvent, LiveFeed
from callscribe.store.base import LiveConnection, Store
from callscribe.store.sqlite import SqliteStore
from tests.aws_fixtures import REGION, AwsResources, LambdaContext, create_resources, http_api_event

WEBSOCKET_URL = "wss://ws123.execute-api.us-east-1.amazonaws.com/live"
CALLBACK_URL = "https://ws123.execute-api.us-east-1.amazonaws.com/live"
T0 = 1_700_000_000.0


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "CALLSCRIBE_PUBLIC_GATEWAY_URL": "wss://gw.example.com",
        "CALLSCRIBE_LIVE_WEBSOCKET_URL": WEBSOCKET_URL,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
        monkeypatch.setenv("CALLSCRIBE_TOKEN_SECRET_ARN", resources.token_secret_arn)
        monkeypatch.setenv("CALLSCRIBE_CONTROL_SECRET_ARN", resources.control_secret_arn)
        monkeypatch.setenv("CALLSCRIBE_BLOB_S3_BUCKET", resources.bucket_name)
        api_lambda.asgi_handler.cache_clear()
        live_lambda.services.cache_clear()
        yield resources
        api_lambda.asgi_handler.cache_clear()
        live_lambda.services.cache_clear()


@pytest.fixture
def store(aws: AwsResources) -> DynamoStore:
    return DynamoStore(aws.table_name, boto3.resource("dynamodb"))


@pytest.fixture
def credentials(store: DynamoStore) -> dict[str, str]:
    issued = create_api_key(store, "acme")
    return {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}


def live_token(credentials: dict[str, str]) -> dict[str, Any]:
    from functions.api import handler

    response = handler(
        http_api_event("POST", "/callscribe/v1/live/token", credentials), LambdaContext()
    )
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    assert response["statusCode"] == 200, body
    return json.loads(body)


def websocket_event(route: str, connection_id: str, query: dict[str, str] | None = None) -> dict:
    """What API Gateway's WebSocket API hands the Lambda on $connect and $disconnect."""
    return {
        "headers": {"Host": "ws123.execute-api.us-east-1.amazonaws.com"},
        "queryStringParameters": query,
        "requestContext": {
            "routeKey": route,
            "eventType": "CONNECT" if route == "$connect" else "DISCONNECT",
            "connectionId": connection_id,
            "domainName": "ws123.execute-api.us-east-1.amazonaws.com",
            "stage": "live",
            "apiId": "ws123",
            "requestTimeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }


def connection_handler(event: dict) -> dict:
    from functions.live import handler

    return handler(event, LambdaContext())


# Tokens and connections ---------------------------------------------------------------------


def test_a_viewer_connects_with_the_api_lambdas_live_token(
    store: DynamoStore, credentials: dict[str, str]
) -> None:
    issued = live_token(credentials)
    assert issued["tenant"] == "acme"
    assert issued["eventsUrl"] == f"{WEBSOCKET_URL}?token={issued['token']}"

    before = time.time()
    answer = connection_handler(
        websocket_event("$connect", "conn-all=", {"token": issued["token"]})
    )
    assert answer == {"statusCode": 200}
    answer = connection_handler(
        websocket_event("$connect", "conn-one=", {"token": issued["token"], "guid": "CA1"})
    )
    assert answer == {"statusCode": 200}

    connections = {c.connection_id: c for c in store.live_connections("acme", time.time())}
    assert set(connections) == {"conn-all=", "conn-one="}
    assert (connections["conn-all="].tenant, connections["conn-all="].guid) == ("acme", None)
    assert connections["conn-one="].guid == "CA1"
    # Kept past API Gateway's 2-hour limit on a connection, then its TTL removes it.
    assert connections["conn-all="].expires_at >= before + 2 * 3600

    assert connection_handler(websocket_event("$disconnect", "conn-one=")) == {"statusCode": 200}
    assert [c.connection_id for c in store.live_connections("acme", time.time())] == ["conn-all="]


def refused(answer: dict) -> str:
    assert answer["statusCode"] == 401
    return json.loads(answer["body"])["error"]["message"]


def signing_key(aws: AwsResources) -> str:
    return boto3.client("secretsmanager").get_secret_value(SecretId=aws.token_secret_arn)[
        "SecretString"
    ]


def test_forged_missing_and_other_kinds_of_token_are_refused(
    aws: AwsResources, store: DynamoStore, credentials: dict[str, str]
) -> None:
    token = live_token(credentials)["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert refused(connection_handler(websocket_event("$connect", "c1", {"token": forged})))
    assert refused(connection_handler(websocket_event("$connect", "c2", None))) == ("missing token")
    # A Twilio stream token, signed with the same key, is not a live token.
    key = store.get_api_key(credentials["asapp-api-id"])
    assert key is not None
    stream_token = StreamTokens(signing_key(aws), 300).issue(key)
    assert refused(connection_handler(websocket_event("$connect", "c3", {"token": stream_token})))
    assert store.live_connections("acme", time.time()) == []


def test_an_expired_token_or_a_revoked_key_is_refused(
    aws: AwsResources,
    store: DynamoStore,
    credentials: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = store.get_api_key(credentials["asapp-api-id"])
    assert key is not None
    tokens = LiveTokens(signing_key(aws), 120)
    with monkeypatch.context() as patched:
        # Issued 121 s ago: past the live token's 120 s (the Lambda's setting).
        patched.setattr(
            itsdangerous.timed.TimestampSigner, "get_timestamp", lambda _: int(time.time()) - 121
        )
        stale = tokens.issue(key)
    assert refused(connection_handler(websocket_event("$connect", "c1", {"token": stale}))) == (
        "live token expired"
    )

    fresh = tokens.issue(key)
    store.revoke_api_key(key.api_id, time.time())
    assert "revoked" in refused(
        connection_handler(websocket_event("$connect", "c2", {"token": fresh}))
    )
    assert store.live_connections("acme", time.time()) == []


def test_the_token_route_is_not_served_without_the_websocket_api(
    credentials: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.api import handler

    monkeypatch.delenv("CALLSCRIBE_LIVE_WEBSOCKET_URL")
    api_lambda.asgi_handler.cache_clear()
    response = handler(
        http_api_event("POST", "/callscribe/v1/live/token", credentials), LambdaContext()
    )
    assert response["statusCode"] == 404


# The tasks' publisher ----------------------------------------------------------------------


def started(tenant: str, guid: str) -> CallStarted:
    return CallStarted(tenant, "twilio", guid, T0)


def posted_events(connection_id: str) -> list[dict]:
    """What moto's management API received for a connection (its posts, concatenated)."""
    backend = apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID][REGION]
    if connection_id not in backend.connections:
        return []
    data = backend.connections[connection_id].data.decode()
    decoder, events, at = json.JSONDecoder(), [], 0
    while at < len(data):
        event, at = decoder.raw_decode(data, at)
        events.append(event)
    return events


def test_events_reach_only_their_tenants_viewers_and_the_filter_is_kept(
    store: DynamoStore,
) -> None:
    store.put_live_connection("acme-all", "acme", None, time.time() + 3600)
    store.put_live_connection("acme-ca2", "acme", "CA2", time.time() + 3600)
    store.put_live_connection("globex-all", "globex", None, time.time() + 3600)
    publisher = LiveConnectionsPublisher(store, management_client(CALLBACK_URL))
    publisher.publish(started("acme", "CA1"))
    publisher.publish(started("acme", "CA2"))
    publisher.publish(CallEnded("acme", "twilio", "CA1", T0 + 60))
    publisher.close()

    assert [(e["type"], e["guid"]) for e in posted_events("acme-all")] == [
        ("callStarted", "CA1"),
        ("callStarted", "CA2"),
        ("callEnded", "CA1"),
    ]
    assert posted_events("acme-ca2") == [started("acme", "CA2").as_json()]
    assert posted_events("globex-all") == []
    assert publisher.stats.as_dict() == {"posted": 4, "dropped": 0, "gone": 0, "failed": 0}


def test_a_gone_connection_is_deleted_and_not_posted_to_again(tmp_path: Any) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    store.put_live_connection("gone", "acme", None, time.time() + 3600)
    store.put_live_connection("here", "acme", None, time.time() + 3600)
    client = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=CALLBACK_URL,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stubber = Stubber(client)
    event = started("acme", "CA1")
    data = json.dumps(event.as_json()).encode()
    # The table lists connections in no particular order: answer by id.
    first, second = sorted(c.connection_id for c in store.live_connections("acme", time.time()))
    for connection_id in (first, second):
        if connection_id == "gone":
            stubber.add_client_error(
                "post_to_connection",
                service_error_code="GoneException",
                http_status_code=410,
                expected_params={"ConnectionId": "gone", "Data": data},
            )
        else:
            stubber.add_response("post_to_connection", {}, {"ConnectionId": "here", "Data": data})
    # The next event goes to the one still here, from the cached list: no post to "gone".
    stubber.add_response("post_to_connection", {}, {"ConnectionId": "here", "Data": data})
    with stubber:
        publisher = LiveConnectionsPublisher(store, client)
        publisher.publish(event)
        publisher.publish(event)
        publisher.close()
    stubber.assert_no_pending_responses()
    assert publisher.stats.as_dict() == {"posted": 2, "dropped": 0, "gone": 1, "failed": 0}
    assert [c.connection_id for c in store.live_connections("acme", time.time())] == ["here"]


class CountingStore:
    """A store whose connection reads are counted, and may be held up."""

    def __init__(self, connections: list[LiveConnection]) -> None:
        self.connections = connections
        self.reads = 0
        self.release = threading.Event()
        self.release.set()

    def live_connections(self, tenant: str, now: float) -> list[LiveConnection]:
        self.release.wait(10)
        self.reads += 1
        return [c for c in self.connections if c.tenant == tenant]


class RecordingClient:
    """post_to_connection only (what the publisher calls), recorded."""

    class exceptions:  # noqa: N801 (botocore's attribute name)
        GoneException = type("GoneException", (Exception,), {})

    def __init__(self) -> None:
        self.posts: list[str] = []

    def post_to_connection(self, ConnectionId: str, Data: bytes) -> None:  # noqa: N803
        self.posts.append(ConnectionId)


def test_a_tenants_connections_are_read_once_per_cache_period() -> None:
    store = CountingStore([LiveConnection("c1", "acme", None, time.time() + 3600)])
    now = [100.0]
    client = RecordingClient()
    publisher = LiveConnectionsPublisher(
        store,  # type: ignore[arg-type]
        client,
        cache_s=2.0,
        clock=lambda: now[0],
    )
    for _ in range(5):
        publisher.publish(started("acme", "CA1"))
    publisher.publish(started("globex", "CA9"))
    deadline = time.monotonic() + 5
    while publisher.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert store.reads == 2  # acme once, globex once
    now[0] += 2.0
    publisher.publish(started("acme", "CA1"))
    publisher.close()
    assert store.reads == 3
    assert client.posts == ["c1"] * 6


def test_a_full_backlog_drops_events_without_waiting() -> None:
    store = CountingStore([LiveConnection("c1", "acme", None, time.time() + 3600)])
    store.release.clear()  # the posting thread is held up on its first read
    client = RecordingClient()
    publisher = LiveConnectionsPublisher(store, client, max_backlog=2)  # type: ignore[arg-type]
    publisher.publish(started("acme", "CA0"))  # taken by the thread, which waits
    deadline = time.monotonic() + 5
    while publisher.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    for n in range(1, 6):
        publisher.publish(started("acme", f"CA{n}"))
    assert time.monotonic() - began < 0.5
    assert publisher.stats.dropped == 3
    store.release.set()
    publisher.close()
    assert publisher.stats.posted == 3  # CA0 and the two the backlog held


# Composition -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: LiveEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        pass


def test_each_published_transcript_is_also_a_final_for_the_viewers() -> None:
    class Bus:
        def __init__(self) -> None:
            self.published: list[TranscriptEvent] = []

        async def publish(self, event: TranscriptEvent) -> None:
            self.published.append(event)

        async def close(self) -> None:
            pass

    viewers, delivery = Recorder(), Bus()
    bus = BusWithLiveCopy(delivery, LiveFeed(viewers))
    body = {"sender": {"role": "agent"}, "autotranscribeResponse": {"start": 1200}}
    event = TranscriptEvent("acme", "twilio", "CA1", "msg-1", 3, body)
    asyncio.run(bus.publish(event))
    assert delivery.published == [event]
    assert viewers.events == [FinalTranscript.of(event)]
    assert viewers.events[0].as_json()["utteranceId"] == "agent-1200"


def test_the_tasks_publish_to_viewers_only_where_the_callback_url_is_set(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    assert adapters.live_connections(store, AwsSettings()) is None
    monkeypatch.setenv("CALLSCRIBE_LIVE_CALLBACK_URL", CALLBACK_URL)
    publisher = adapters.live_connections(store, AwsSettings())
    assert isinstance(publisher, LiveConnectionsPublisher)
    assert publisher.client.meta.endpoint_url == CALLBACK_URL
    publisher.close()
