"""Per-tenant webhook targets against real HTTPS servers on loopback, with certificates made
here (trustme): a custom CA, mutual TLS that the server enforces, a secret token in a header
or the query, OAuth2 client-credentials from a real token endpoint (expiry, refresh on 401),
signatures, the optional retry policy, and credentials kept out of failures and logs."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callscribe.bus import TranscriptEvent
from callscribe.secrets import FileSecrets
from callscribe.store.base import WebhookAuth
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import WebhookReceiver, bind_loopback
from callscribe.webhooks.delivery import WebhookDispatcher
from callscribe.webhooks.management import WebhookConfigError, set_webhook, signing_secret
from callscribe.webhooks.signing import SignatureError, verify
from callscribe.webhooks.targets import (
    TOKEN_RENEW_MARGIN_S,
    WebhookTarget,
    WebhookTargets,
    build_ssl_context,
)

TENANT = "acme"


def event(seq: int, conversation: str = "CA1", tenant: str = TENANT) -> TranscriptEvent:
    return TranscriptEvent(
        tenant=tenant,
        namespace="twilio",
        conversation_id=conversation,
        message_id=f"{conversation}-m{seq}",
        seq=seq,
        body={"externalConversationId": conversation, "seq": seq, "text": f"héllo {seq}"},
    )


# Certificates ---------------------------------------------------------------------------


@dataclass
class Pki:
    ca: trustme.CA
    server_cert: trustme.LeafCert
    client_cert: trustme.LeafCert
    directory: Path

    def file(self, name: str, pem: bytes) -> str:
        path = self.directory / name
        path.write_bytes(pem)
        return str(path)

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    @property
    def client_cert_pem(self) -> str:
        return b"".join(b.bytes() for b in self.client_cert.cert_chain_pems).decode()

    @property
    def client_key_pem(self) -> str:
        return self.client_cert.private_key_pem.bytes().decode()

    def server_tls(self, require_client_cert: bool = False) -> dict[str, Any]:
        tls: dict[str, Any] = {
            "ssl_certfile": self.file(
                "server.pem", b"".join(b.bytes() for b in self.server_cert.cert_chain_pems)
            ),
            "ssl_keyfile": self.file("server.key", self.server_cert.private_key_pem.bytes()),
        }
        if require_client_cert:
            tls |= {
                "ssl_ca_certs": self.file("clients-ca.pem", self.ca.cert_pem.bytes()),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
            }
        return tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    return Pki(
        ca,
        ca.issue_cert("127.0.0.1", "localhost"),
        ca.issue_cert("callscribe-client.example.com"),
        tmp_path_factory.mktemp("pki"),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


@pytest.fixture
def secrets(tmp_path: Path) -> FileSecrets:
    return FileSecrets(tmp_path / "secrets.json")


@pytest.fixture
async def dispatcher_for(
    store: SqliteStore, secrets: FileSecrets
) -> AsyncIterator[Callable[..., WebhookDispatcher]]:
    made: list[WebhookDispatcher] = []

    def make(default: WebhookTarget | None = None, **kwargs: Any) -> WebhookDispatcher:
        targets = WebhookTargets(store, secrets, default=default, **kwargs)
        dispatcher = WebhookDispatcher(targets, store)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.close()


async def started(receiver: WebhookReceiver) -> WebhookReceiver:
    await receiver.start()
    return receiver


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    running: list[WebhookReceiver] = []

    async def start(receiver: WebhookReceiver | None = None, **kwargs: Any) -> WebhookReceiver:
        receiver = receiver or WebhookReceiver(**kwargs)
        await receiver.start()
        running.append(receiver)
        return receiver

    yield start
    for receiver in running:
        await receiver.stop()


# Custom CA and mutual TLS ---------------------------------------------------------------


async def test_custom_ca_bundle_verifies_the_target(
    pki: Pki, store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers(tls=pki.server_tls())
    set_webhook(store, secrets, tenant=TENANT, url=receiver.url, ca_bundle_pem=pki.ca_pem)
    dispatcher = dispatcher_for()
    for seq in range(3):
        dispatcher(event(seq))
    await dispatcher.drain(20)
    assert [m.body["seq"] for m in receiver.messages] == [0, 1, 2]
    assert store.list_delivery_failures(TENANT) == []


async def test_without_the_ca_the_target_is_refused(
    pki: Pki, store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers(tls=pki.server_tls())
    # The system trust store does not know the test CA; another CA does not either.
    set_webhook(store, secrets, tenant=TENANT, url=receiver.url)
    set_webhook(
        store,
        secrets,
        tenant="globex",
        url=receiver.url,
        ca_bundle_pem=trustme.CA().cert_pem.bytes().decode(),
    )
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    dispatcher(event(0, tenant="globex"))
    await dispatcher.drain(20)
    assert receiver.messages == []
    for tenant in (TENANT, "globex"):
        (failure,) = store.list_delivery_failures(tenant)
        assert failure.status_code is None
        assert "ConnectError" in failure.reason and "CERTIFICATE_VERIFY_FAILED" in failure.reason


async def test_mutual_tls_presents_the_client_certificate(
    pki: Pki, store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers(tls=pki.server_tls(require_client_cert=True))
    set_webhook(
        store,
        secrets,
        tenant=TENANT,
        url=receiver.url,
        ca_bundle_pem=pki.ca_pem,
        client_cert_pem=pki.client_cert_pem,
        client_key_pem=pki.client_key_pem,
    )
    # The same server refuses a tenant whose configuration has no client certificate.
    set_webhook(store, secrets, tenant="globex", url=receiver.url, ca_bundle_pem=pki.ca_pem)
    dispatcher = dispatcher_for()
    for seq in range(2):
        dispatcher(event(seq))
        dispatcher(event(seq, tenant="globex"))
    await dispatcher.drain(20)

    assert [(m.body["seq"]) for m in receiver.messages] == [0, 1]  # acme's only
    assert store.list_delivery_failures(TENANT) == []
    refused = store.list_delivery_failures("globex")
    assert [f.message_id for f in refused] == ["CA1-m0", "CA1-m1"]
    assert all(f.status_code is None for f in refused)
    # The private key is in Secrets, not in the Store.
    assert "PRIVATE KEY" not in (store.path.read_bytes().decode("latin-1"))
    assert "PRIVATE KEY" in secrets.get(f"webhook/{TENANT}/client-key")


def test_tls_context_requires_tls_1_2_and_loads_client_chain(pki: Pki) -> None:
    context = build_ssl_context(pki.ca_pem, pki.client_cert_pem, pki.client_key_pem)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the bundle replaces the system store
    with pytest.raises(ValueError):
        build_ssl_context(None, pki.client_cert_pem, None)


def test_set_webhook_refuses_broken_configurations(
    pki: Pki, store: SqliteStore, secrets: FileSecrets
) -> None:
    bad = [
        {"url": "ftp://example.com/x"},
        {"url": "https://example.com/", "token_name": "X-Token"},  # no value
        {"url": "https://example.com/", "token_name": "X-Token", "token": "naïve"},
        {"url": "https://example.com/", "token_name": "X Token", "token": "v"},
        {
            "url": "https://example.com/",
            "auth": WebhookAuth.OAUTH2,
            "oauth_token_url": "https://auth.example.com/token",
            "oauth_client_id": "c",
        },
        {"url": "https://example.com/", "client_cert_pem": pki.client_cert_pem},  # no key
        {"url": "https://example.com/", "ca_bundle_pem": "not a certificate"},
        {
            "url": "https://example.com/",
            "client_cert_pem": pki.client_cert_pem,
            "client_key_pem": trustme.CA().issue_cert("x.example").private_key_pem.bytes().decode(),
        },
    ]
    for kwargs in bad:
        with pytest.raises(WebhookConfigError):
            set_webhook(store, secrets, tenant=TENANT, **kwargs)
    assert store.get_webhook_config(TENANT) is None
    assert secrets.get(f"webhook/{TENANT}/token") is None


# Secret token --------------------------------------------------------------------------


@pytest.mark.parametrize("token_in", ["header", "query"])
async def test_secret_token_from_the_tenant_config(
    pki: Pki,
    store: SqliteStore,
    secrets: FileSecrets,
    receivers: Any,
    dispatcher_for: Any,
    token_in: str,
) -> None:
    receiver = await receivers(tls=pki.server_tls())
    # A query parameter may carry anything (URL-encoded); a header only printable ASCII.
    token = "t0k&n =/é" if token_in == "query" else "t0k&n =/e"
    set_webhook(
        store,
        secrets,
        tenant=TENANT,
        url=receiver.url,
        ca_bundle_pem=pki.ca_pem,
        token_name="X-Acme-Hook",
        token=token,
        token_in=token_in,
    )
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    await dispatcher.drain(20)
    (got,) = receiver.messages
    if token_in == "header":
        assert got.headers["x-acme-hook"] == token
        assert got.query == {}
    else:
        assert got.query == {"X-Acme-Hook": token}
        assert "x-acme-hook" not in got.headers
    assert "t0k&n" not in store.path.read_bytes().decode("latin-1")


async def test_tenant_config_overrides_the_default_and_is_picked_up_live(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    default = await receivers()
    own = await receivers()
    dispatcher = dispatcher_for(
        WebhookTarget(default.url, secret_name="X-Default", secret="dflt"), refresh_s=0
    )
    dispatcher(event(0))
    await dispatcher.drain(10)
    set_webhook(store, secrets, tenant=TENANT, url=own.url, token_name="X-Own", token="mine")
    dispatcher(event(1))
    dispatcher(event(0, tenant="globex"))  # no config of its own: the default
    await dispatcher.drain(10)

    assert [m.body["seq"] for m in default.messages] == [0, 0]
    assert default.messages[0].headers["x-default"] == "dflt"
    (got,) = own.messages
    assert got.body["seq"] == 1 and got.headers["x-own"] == "mine"
    assert "x-default" not in got.headers


async def test_no_target_means_nothing_is_sent(store: SqliteStore, dispatcher_for: Any) -> None:
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    await dispatcher.drain(5)
    assert dispatcher.stats.unrouted == 1
    assert dispatcher.stats.failed == 0
    assert store.list_delivery_failures(TENANT) == []


async def test_a_configuration_missing_its_credential_is_recorded(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers()
    set_webhook(store, secrets, tenant=TENANT, url=receiver.url, token_name="X-T", token="v")
    secrets.delete(f"webhook/{TENANT}/token")  # e.g. removed by hand from the secret store
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    await dispatcher.drain(5)
    assert receiver.messages == []
    (failure,) = store.list_delivery_failures(TENANT)
    assert failure.reason.startswith("webhook configuration:")


# Signatures ----------------------------------------------------------------------------


async def test_every_post_is_signed_with_the_tenant_secret(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers()
    dispatcher = dispatcher_for(WebhookTarget(receiver.url))
    for seq in range(3):
        dispatcher(event(seq))
    dispatcher(event(0, conversation="CA9", tenant="globex"))
    await dispatcher.drain(10)

    acme_secret = signing_secret(secrets, TENANT)
    globex_secret = signing_secret(secrets, "globex")
    assert acme_secret.startswith("whsec_") and acme_secret != globex_secret
    ids = []
    for message in receiver.messages:
        globex = message.body["externalConversationId"] == "CA9"
        secret = globex_secret if globex else acme_secret
        ids.append(verify(secret, message.headers, message.raw))
        assert message.headers["webhook-id"] == message.headers["x-callscribe-message-id"]
        other = acme_secret if secret == globex_secret else globex_secret
        with pytest.raises(SignatureError):
            verify(other, message.headers, message.raw)
        with pytest.raises(SignatureError):  # any change to the body breaks it
            verify(secret, message.headers, message.raw.replace(b"h", b"H", 1))
    assert sorted(ids) == ["CA1-m0", "CA1-m1", "CA1-m2", "CA9-m0"]


def test_signature_matches_the_standard_webhooks_example() -> None:
    # The worked example of the Standard Webhooks specification's reference libraries.
    from callscribe.webhooks.signing import sign

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_verify_rejects_stale_and_future_timestamps() -> None:
    from callscribe.webhooks.signing import signature_headers

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    headers = signature_headers(secret, "m1", b"{}", now=1_000_000)
    assert verify(secret, headers, b"{}", now=1_000_000 + 299) == "m1"
    for now in (1_000_000 + 301, 1_000_000 - 301):
        with pytest.raises(SignatureError):
            verify(secret, headers, b"{}", now=now)
    with pytest.raises(SignatureError):
        verify(secret, {"webhook-id": "m1"}, b"{}")


# OAuth2 client-credentials ---------------------------------------------------------------


@dataclass
class TokenEndpoint:
    """A real OAuth2 authorisation server on loopback (HTTPS): issues tok-1, tok-2, … and
    knows which are valid; the protected receiver asks it."""

    client_id: str = "callscribe"
    client_secret: str = "cl1ent-s3cret"
    expires_in: int | None = 300
    issued: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/oauth2/token"

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.requests.append(form)
        auth = request.headers.get("authorization", "")
        basic = (
            "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        )
        posted = (
            form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
        )
        if auth != basic and not posted:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        self.valid.add(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return JSONResponse(body)

    async def start(self, tls: dict[str, Any]) -> None:
        app = Starlette(routes=[Route("/oauth2/token", self._token, methods=["POST"])])
        sock = bind_loopback()
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **tls)
        )
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


@dataclass
class BearerReceiver(WebhookReceiver):
    """Accepts a POST only with a bearer token the endpoint still considers valid."""

    endpoint: TokenEndpoint | None = None
    tokens_seen: list[str] = field(default_factory=list)
    refused: int = 0

    async def _receive(self, request: Request) -> Response:
        assert self.endpoint is not None
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.tokens_seen.append(token)
        if token not in self.endpoint.valid:
            self.refused += 1
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return await super()._receive(request)


@pytest.fixture
async def token_endpoint(pki: Pki) -> AsyncIterator[TokenEndpoint]:
    """Requested before ``dispatcher_for`` so that it stops after the dispatcher closed its
    keep-alive connections (a server stops only once its connections are gone)."""
    endpoint = TokenEndpoint()
    await endpoint.start(pki.server_tls())
    yield endpoint
    await endpoint.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oauth_config(
    store: SqliteStore,
    secrets: FileSecrets,
    pki: Pki,
    receiver: WebhookReceiver,
    endpoint: TokenEndpoint,
    **kwargs: Any,
) -> None:
    set_webhook(
        store,
        secrets,
        tenant=TENANT,
        url=receiver.url,
        ca_bundle_pem=pki.ca_pem,
        oauth_token_url=endpoint.url,
        oauth_client_id=endpoint.client_id,
        oauth_client_secret=kwargs.pop("client_secret", endpoint.client_secret),
        oauth_scope="transcripts:write",
        **kwargs,
    )


async def test_oauth2_token_is_cached_until_shortly_before_expiry(
    pki: Pki,
    token_endpoint: TokenEndpoint,
    store: SqliteStore,
    secrets: FileSecrets,
    receivers: Any,
    dispatcher_for: Any,
) -> None:
    receiver = await receivers(BearerReceiver(tls=pki.server_tls(), endpoint=token_endpoint))
    oauth_config(store, secrets, pki, receiver, token_endpoint)
    clock = FakeClock()
    dispatcher = dispatcher_for(now=clock)

    async def send(seq: int) -> None:
        dispatcher(event(seq))
        await dispatcher.drain(20)

    await send(0)
    await send(1)
    clock.now += 300 - TOKEN_RENEW_MARGIN_S - 1  # still inside the token's useful life
    await send(2)
    clock.now += 2  # now within the renewal margin
    await send(3)

    assert token_endpoint.issued == ["tok-1", "tok-2"]
    assert receiver.tokens_seen == ["tok-1", "tok-1", "tok-1", "tok-2"]
    assert [m.body["seq"] for m in receiver.messages] == [0, 1, 2, 3]
    (first, _) = token_endpoint.requests
    assert first["grant_type"] == "client_credentials" and first["scope"] == "transcripts:write"
    assert "client_secret" not in first  # client_secret_basic by default


async def test_oauth2_refreshes_once_on_401(
    pki: Pki,
    token_endpoint: TokenEndpoint,
    store: SqliteStore,
    secrets: FileSecrets,
    receivers: Any,
    dispatcher_for: Any,
) -> None:
    receiver = await receivers(BearerReceiver(tls=pki.server_tls(), endpoint=token_endpoint))
    oauth_config(store, secrets, pki, receiver, token_endpoint, oauth_client_auth="post")
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    await dispatcher.drain(20)
    token_endpoint.valid.clear()  # the authorisation server revoked tok-1 early
    dispatcher(event(1))
    await dispatcher.drain(20)

    assert receiver.tokens_seen == ["tok-1", "tok-1", "tok-2"]
    assert [m.body["seq"] for m in receiver.messages] == [0, 1]
    assert store.list_delivery_failures(TENANT) == []
    assert token_endpoint.requests[0]["client_secret"] == token_endpoint.client_secret

    # A target that refuses every token: one renewal, then the message is recorded and dropped.
    receiver.endpoint = TokenEndpoint()  # knows no valid token
    dispatcher(event(2))
    await dispatcher.drain(20)
    assert receiver.tokens_seen[3:] == ["tok-2", "tok-3"]
    (failure,) = store.list_delivery_failures(TENANT)
    assert (failure.message_id, failure.status_code, failure.reason) == ("CA1-m2", 401, "http 401")


async def test_oauth2_token_endpoint_refusal_is_recorded_without_the_secret(
    pki: Pki,
    token_endpoint: TokenEndpoint,
    store: SqliteStore,
    secrets: FileSecrets,
    receivers: Any,
    dispatcher_for: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = await receivers(BearerReceiver(tls=pki.server_tls(), endpoint=token_endpoint))
    oauth_config(store, secrets, pki, receiver, token_endpoint, client_secret="wr0ng-s3cret")
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    await dispatcher.drain(20)
    assert receiver.tokens_seen == []  # never reached the target
    (failure,) = store.list_delivery_failures(TENANT)
    assert failure.reason == "oauth2 token endpoint: http 401"
    assert "wr0ng-s3cret" not in caplog.text


# Retry policy ----------------------------------------------------------------------------


@dataclass
class FlakyReceiver(WebhookReceiver):
    """Answers the first ``failures`` POSTs with ``fail_status``, then 200."""

    failures: int = 2
    fail_status: int = 503

    async def _receive(self, request: Request) -> Response:
        response = await super()._receive(request)
        if len(self.messages) <= self.failures:
            return JSONResponse({"ok": False}, status_code=self.fail_status)
        return response


async def test_retry_policy_is_off_by_default(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers(FlakyReceiver(failures=1))
    set_webhook(store, secrets, tenant=TENANT, url=receiver.url)
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    dispatcher(event(1))
    await dispatcher.drain(10)
    assert [m.body["seq"] for m in receiver.messages] == [0, 1]
    assert [f.message_id for f in store.list_delivery_failures(TENANT)] == ["CA1-m0"]
    assert dispatcher.stats.retried == 0


async def test_retry_policy_retries_the_same_message_before_the_next(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    receiver = await receivers(FlakyReceiver(failures=2))
    set_webhook(
        store, secrets, tenant=TENANT, url=receiver.url, retry_attempts=3, retry_backoff_s=0.01
    )
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    dispatcher(event(1))
    await dispatcher.drain(10)
    assert [m.body["seq"] for m in receiver.messages] == [0, 0, 0, 1]  # order kept
    assert {m.headers["webhook-id"] for m in receiver.messages[:3]} == {"CA1-m0"}
    assert store.list_delivery_failures(TENANT) == []
    assert (dispatcher.stats.retried, dispatcher.stats.delivered) == (2, 2)


async def test_retries_give_up_and_client_errors_are_not_retried(
    store: SqliteStore, secrets: FileSecrets, receivers: Any, dispatcher_for: Any
) -> None:
    always = await receivers(FlakyReceiver(failures=100))
    set_webhook(
        store, secrets, tenant=TENANT, url=always.url, retry_attempts=2, retry_backoff_s=0.01
    )
    bad_request = await receivers(FlakyReceiver(failures=100, fail_status=400))
    set_webhook(
        store, secrets, tenant="globex", url=bad_request.url, retry_attempts=2, retry_backoff_s=0.01
    )
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    dispatcher(event(0, tenant="globex"))
    await dispatcher.drain(10)
    assert len(always.messages) == 3
    (failure,) = store.list_delivery_failures(TENANT)
    assert failure.reason == "http 503 (after 3 attempts)" and failure.status_code == 503
    assert len(bad_request.messages) == 1
    (refused,) = store.list_delivery_failures("globex")
    assert refused.reason == "http 400"


# Credentials stay out of failures and logs -------------------------------------------------


async def test_query_token_never_reaches_failures_or_logs(
    store: SqliteStore,
    secrets: FileSecrets,
    receivers: Any,
    dispatcher_for: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    erroring = await receivers(status_code=500)
    set_webhook(
        store,
        secrets,
        tenant=TENANT,
        url=erroring.url,
        token_name="key",
        token="sup3r-s3cret-t0ken",
        token_in="query",
    )
    set_webhook(
        store,
        secrets,
        tenant="globex",
        url="http://127.0.0.1:9/nobody",
        token_name="key",
        token="sup3r-s3cret-t0ken",
        token_in="query",
    )
    dispatcher = dispatcher_for()
    dispatcher(event(0))
    dispatcher(event(0, tenant="globex"))
    await dispatcher.drain(10)
    assert erroring.messages[0].query == {"key": "sup3r-s3cret-t0ken"}
    failures = store.list_delivery_failures(TENANT) + store.list_delivery_failures("globex")
    assert len(failures) == 2
    assert all("sup3r" not in f.reason for f in failures)
    assert "sup3r" not in caplog.text
    assert "webhook delivery of CA1-m0" in caplog.text  # the failures were logged
