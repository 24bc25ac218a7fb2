"""The live event stream in AWS: live tokens from the API Lambda, the WebSocket API's
connection Lambda ($connect with the token, $disconnect), and the tasks' publisher that posts
a tenant's events to its viewers' connections, on moto (DynamoDB, Secrets Manager, API
Gateway's management API)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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
from callscribe.store.base import (
    CallKey,
    CallRecord,
    CallStatus,
    LiveConnection,
    Store,
    StoredMessage,
)
from callscribe.store.sqlite import SqliteStore
from tests.aws_fixtures import REGION, AwsResources, LambdaContext, create_resources, http_api_event

WEBSOCKET_URL = "wss://ws123.execute-api.us-east-1.amazonaws.com/live"
CALLBACK_URL = "https://ws123.execute-api.us-east-1.amazonaws.com/live"
T0 = 1_700_000_000.0
# Where the API (and so the live page) is: http_api_event's host.
PAGE_ORIGIN = "https://abc123.execute-api.us-east-1.amazonaws.com"


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
        "CALLSCRIBE_LIVE_PAGE_ORIGIN": PAGE_ORIGIN,
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


# The live page, served by the API Lambda for the WebSocket API ------------------------------


def api(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any, list[str]]:
    """The API Lambda's answer: status, headers, body (JSON when it is), cookies set."""
    from functions.api import handler

    response = handler(http_api_event(method, path, headers or {}, body, query), LambdaContext())
    raw = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    answer_headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw
    return response["statusCode"], answer_headers, parsed, list(response.get("cookies") or [])


def signed_in(credentials: dict[str, str]) -> dict[str, str]:
    """The page's sign-in: the session cookie, as the browser sends it back."""
    status, _, body, cookies = api(
        "POST",
        "/live/session",
        {"content-type": "application/json", "origin": PAGE_ORIGIN},
        {"apiId": credentials["asapp-api-id"], "apiSecret": credentials["asapp-api-secret"]},
    )
    assert status == 200 and body["signedIn"] is True and body["tenant"] == "acme", body
    (cookie,) = cookies
    # HttpOnly, SameSite=Strict, and Secure: API Gateway is HTTPS only.
    assert {"HttpOnly", "SameSite=strict", "Secure"} <= {p.strip() for p in cookie.split(";")}
    return {"cookie": cookie.split(";")[0], "origin": PAGE_ORIGIN}


def test_the_api_lambda_serves_the_page_which_opens_the_websocket_api_with_a_token(
    store: DynamoStore, credentials: dict[str, str]
) -> None:
    status, headers, page, _ = api("GET", "/live")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/live/assets/live.js">' in page
    # The page may connect to the WebSocket API, and to nothing else but its own origin.
    csp = headers["content-security-policy"]
    assert "connect-src 'self' wss://ws123.execute-api.us-east-1.amazonaws.com;" in csp
    status, _, script, _ = api("GET", "/live/assets/live.js")
    assert status == 200 and "streamSendsSnapshot" in script

    status, _, config, _ = api("GET", "/live/config")
    assert (status, config) == (
        200,
        {"eventsUrl": WEBSOCKET_URL, "streamAuth": "token", "streamSendsSnapshot": False},
    )

    session = signed_in(credentials)
    status, _, issued, _ = api("POST", "/live/session/token", session)
    assert status == 200 and issued["tenant"] == "acme"
    assert issued["eventsUrl"] == f"{WEBSOCKET_URL}?token={issued['token']}"

    # The page's handshake: its own origin, the token, one call of one namespace.
    handshake = websocket_event(
        "$connect",
        "page-conn=",
        {"token": issued["token"], "guid": "CA7", "namespace": "siprec"},
    )
    handshake["headers"]["Origin"] = PAGE_ORIGIN
    assert connection_handler(handshake) == {"statusCode": 200}
    (connection,) = store.live_connections("acme", time.time())
    assert (connection.guid, connection.namespace) == ("CA7", "siprec")


def test_the_page_token_needs_a_session_from_the_page_itself(
    store: DynamoStore, credentials: dict[str, str]
) -> None:
    status, _, body, _ = api("POST", "/live/session/token", {"origin": PAGE_ORIGIN})
    assert status == 401 and body["error"]["code"] == "401-201", body
    session = signed_in(credentials)
    # Another site's page, even were the browser to send the cookie along.
    status, _, body, _ = api(
        "POST", "/live/session/token", {**session, "origin": "https://evil.example"}
    )
    assert status == 403 and body["error"]["code"] == "403-202", body
    # A session outlives nothing: its key revoked, no token.
    store.revoke_api_key(credentials["asapp-api-id"], time.time())
    status, _, body, _ = api("POST", "/live/session/token", session)
    assert status == 401 and "revoked" in body["error"]["message"]


def test_the_websocket_api_takes_browsers_only_from_the_live_page(
    credentials: dict[str, str], store: DynamoStore
) -> None:
    token = live_token(credentials)["token"]
    for origin in ("https://evil.example", "http://abc123.execute-api.us-east-1.amazonaws.com"):
        handshake = websocket_event("$connect", "c1", {"token": token})
        handshake["headers"]["origin"] = origin
        answer = connection_handler(handshake)
        assert answer["statusCode"] == 403, origin
        assert json.loads(answer["body"])["error"]["code"] == "403-202"
    # Written with its default port, it is the page's origin still.
    handshake = websocket_event("$connect", "c2", {"token": token})
    handshake["headers"]["Origin"] = PAGE_ORIGIN + ":443"
    assert connection_handler(handshake) == {"statusCode": 200}
    # A bad namespace filter is refused, as the local stream refuses it.
    answer = connection_handler(
        websocket_event("$connect", "c3", {"token": token, "namespace": "zoom"})
    )
    assert answer["statusCode"] == 400
    assert [c.connection_id for c in store.live_connections("acme", time.time())] == ["c2"]


def test_the_page_takes_its_snapshot_of_live_calls_from_the_store(
    store: DynamoStore, credentials: dict[str, str]
) -> None:
    now = time.time()
    live = CallKey("acme", "twilio", "CA-live")
    held = CallKey("acme", "siprec", "0001234")
    done = CallKey("acme", "twilio", "CA-done")
    elsewhere = CallKey("globex", "twilio", "CA-theirs")
    for n, key in enumerate((live, held, done, elsewhere)):
        store.create_call(
            CallRecord(key, CallStatus.STREAMING, "task-1", now - 60 + n, now - 60 + n)
        )
    store.update_call(done, status=CallStatus.COMPLETED, completed_at=now, updated_at=now)
    for seq in range(3):
        body = {
            "type": "transcript",
            "externalConversationId": live.guid,
            "streamId": "s1",
            "sender": {"externalId": "A1", "role": "agent"},
            "autotranscribeResponse": {
                "message": "transcript",
                "start": seq * 1000,
                "end": seq * 1000 + 800,
                "utterance": [{"text": f"line {seq}"}],
            },
        }
        store.put_message(StoredMessage(live, seq, f"m{seq}", body, now, now + 3600))
    session = signed_in(credentials)

    status, _, snapshot, _ = api("GET", "/live/calls", session)
    assert status == 200 and snapshot["type"] == "snapshot"
    assert [(c["namespace"], c["guid"]) for c in snapshot["calls"]] == [
        ("twilio", "CA-live"),
        ("siprec", "0001234"),
    ]
    finals = snapshot["calls"][0]["finals"]
    assert [(f["type"], f["seq"], f["messageId"], f["utteranceId"]) for f in finals] == [
        ("final", n, f"m{n}", f"agent-{n * 1000}") for n in range(3)
    ]
    assert finals[2]["message"]["autotranscribeResponse"]["utterance"][0]["text"] == "line 2"

    _, _, one, _ = api("GET", "/live/calls", session, query={"guid": "CA-live"})
    assert [c["guid"] for c in one["calls"]] == ["CA-live"]
    _, _, siprec, _ = api("GET", "/live/calls", session, query={"namespace": "siprec"})
    assert [c["guid"] for c in siprec["calls"]] == ["0001234"]
    _, _, theirs, _ = api("GET", "/live/calls", session, query={"guid": "CA-theirs"})
    assert theirs["calls"] == []
    status, _, body, _ = api("GET", "/live/calls", session, query={"namespace": "zoom"})
    assert status == 400 and body["error"]["code"] == "400-201"
    status, _, _, _ = api("GET", "/live/calls", {"origin": PAGE_ORIGIN})
    assert status == 401


def test_a_namespace_filter_keeps_other_namespaces_events_away(store: DynamoStore) -> None:
    store.put_live_connection("sip-only", "acme", None, time.time() + 3600, namespace="siprec")
    publisher = LiveConnectionsPublisher(store, management_client(CALLBACK_URL))
    publisher.publish(started("acme", "CA1"))  # twilio
    publisher.publish(CallStarted("acme", "siprec", "0001234", T0))
    publisher.close()
    assert [(e["namespace"], e["guid"]) for e in posted_events("sip-only")] == [
        ("siprec", "0001234")
    ]


def test_without_the_pages_origin_no_browser_is_let_in(credentials: dict[str, str]) -> None:
    """A connection Lambda that was not told where the page is takes programs (no Origin)
    only: a browser's handshake is refused, whichever page it comes from."""
    live = dataclasses.replace(live_lambda.services(), page_origin=None)
    token = live_token(credentials)["token"]
    browser = websocket_event("$connect", "b1", {"token": token})
    browser["headers"]["Origin"] = PAGE_ORIGIN
    assert live_lambda.handle(browser, live, time.time())["statusCode"] == 403
    program = websocket_event("$connect", "p1", {"token": token})
    assert live_lambda.handle(program, live, time.time()) == {"statusCode": 200}
