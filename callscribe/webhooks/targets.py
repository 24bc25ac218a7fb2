"""Where and how each tenant's transcripts are POSTed: TLS, credentials, signing secret.

A tenant's ``WebhookConfig`` (URL, auth mode, CA bundle, client certificate, retry policy) is
kept in the Store; its credentials in the Secrets port under ``webhook/<tenant>/…``:

``token``                the secret token's value (auth ``secret-token``)
``oauth-client-secret``  the OAuth2 client secret (auth ``oauth2-client-credentials``)
``client-key``           the PEM private key of the mutual-TLS client certificate
``signing-secret``       the Standard Webhooks signing secret (``whsec_…``), made on first use

Tenants without a config use the deployment-wide target (``--webhook-url`` and its secret
flags), still signed with their own signing secret. Configs are re-read every
``refresh_s`` seconds, so ``callscribe webhook set`` takes effect on a running server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

import httpx

from callscribe.config import WebhookSettings
from callscribe.secrets import Secrets
from callscribe.store.base import Store, WebhookAuth, WebhookConfig
from callscribe.webhooks.signing import new_signing_secret

log = logging.getLogger(__name__)

CREDENTIALS = ("token", "oauth-client-secret", "client-key")
SIGNING_SECRET = "signing-secret"
# A token is renewed this long before its expiry (at most a tenth of its life), so a POST
# never leaves with a token that expires on the way.
TOKEN_RENEW_MARGIN_S = 30.0
# A token response without expires_in is used until the target answers 401, or this long.
TOKEN_DEFAULT_LIFE_S = 3600.0


def secret_name(tenant: str, credential: str) -> str:
    return f"webhook/{tenant}/{credential}"


class WebhookAuthError(Exception):
    """The OAuth2 token could not be obtained; ``str(exc)`` holds no credential."""


@dataclass(frozen=True)
class WebhookTarget:
    """The deployment-wide default target (CLI flags / ``CALLSCRIBE_WEBHOOK_*``)."""

    url: str
    secret_name: str | None = None
    secret: str | None = None
    secret_in: str = "header"  # or "query"
    timeout_s: float = 5.0
    retry_attempts: int = 0
    retry_backoff_s: float = 1.0


# TLS -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _pem_file(pem: str) -> Iterator[str]:
    """A path to ``pem`` for ``load_cert_chain`` (which reads only files). On Linux an
    anonymous in-memory file, so a private key never touches a disk; elsewhere a private
    temporary file removed at once."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("callscribe-client-cert", 0)
        try:
            os.write(fd, pem.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(suffix=".pem")  # mode 0600
    try:
        os.write(fd, pem.encode())
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


def build_ssl_context(
    ca_bundle_pem: str | None, client_cert_pem: str | None, client_key_pem: str | None
) -> ssl.SSLContext:
    """TLS 1.2 or newer; a custom CA bundle replaces the system trust store; a client
    certificate and key make it mutual TLS."""
    context = (
        ssl.create_default_context(cadata=ca_bundle_pem)
        if ca_bundle_pem
        else (ssl.create_default_context())
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert_pem:
        if not client_key_pem:
            raise ValueError("a client certificate needs its private key")
        with _pem_file(client_cert_pem + "\n" + client_key_pem) as path:
            context.load_cert_chain(path)
    return context


def _http_client(context: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        # httpx writes headers and body separately; without TCP_NODELAY, Nagle's algorithm
        # and the receiver's delayed ACK add ~40 ms to every POST.
        transport=httpx.AsyncHTTPTransport(
            verify=context, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        ),
        # A redirect is not success (the contract records it as an error): never follow.
        follow_redirects=False,
    )


# OAuth2 --------------------------------------------------------------------------------


class OAuth2ClientCredentials:
    """Client-credentials grant (RFC 6749 §4.4) with a cached token: fetched on first use,
    reused until shortly before ``expires_in`` runs out, dropped after a 401."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        client_auth: str,
        http: httpx.AsyncClient,
        timeout_s: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.client_auth = client_auth
        self.http = http
        self.timeout_s = timeout_s
        self._now = now
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self) -> str:
        async with self._lock:  # conversations share one fetch
            if self._token is None or self._now() >= self._renew_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The target refused ``token``: the next ``token()`` fetches a new one."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        auth = httpx.Auth()  # httpx's base Auth sends the request as it is
        if self.client_auth == "post":
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        else:
            auth = httpx.BasicAuth(self.client_id, self.client_secret)
        try:
            response = await self.http.post(
                self.token_url,
                data=form,
                auth=auth,
                timeout=self.timeout_s,
                headers={"accept": "application/json"},
            )
        except httpx.TimeoutException:
            raise WebhookAuthError(
                f"oauth2 token endpoint: timeout after {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise WebhookAuthError(f"oauth2 token endpoint: {type(exc).__name__}") from None
        if not response.is_success:
            raise WebhookAuthError(f"oauth2 token endpoint: http {response.status_code}")
        try:
            payload = response.json()
            token = payload["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError
            life = float(payload.get("expires_in") or TOKEN_DEFAULT_LIFE_S)
        except (ValueError, KeyError, TypeError):
            raise WebhookAuthError("oauth2 token endpoint: no access_token in its answer") from None
        self.fetches += 1
        self._token = token
        self._renew_at = self._now() + life - min(TOKEN_RENEW_MARGIN_S, life / 10)


# Resolved targets ----------------------------------------------------------------------


@dataclass
class ResolvedTarget:
    """Everything one POST to a tenant needs."""

    tenant: str
    url: str
    client: httpx.AsyncClient
    signing_secret: str
    timeout_s: float = 5.0
    retry_attempts: int = 0
    retry_backoff_s: float = 1.0
    token_name: str | None = None
    token_value: str | None = None
    token_in: str = "header"
    oauth: OAuth2ClientCredentials | None = None
    # The tenant opted into interim webhooks (``WebhookConfig.interim_results``).
    interim_results: bool = False
    fingerprint: str = ""
    _hidden: tuple[str, ...] = field(default=(), repr=False)

    def credential_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query parameters) carrying the secret token, if one is configured."""
        if not self.token_name or self.token_value is None:
            return {}, {}
        if self.token_in == "query":
            return {}, {self.token_name: self.token_value}
        return {self.token_name: self.token_value}, {}

    def redact(self, text: str) -> str:
        """``text`` with every credential of this target masked (for failure reasons, logs)."""
        for secret in self._hidden:
            if secret:
                text = text.replace(secret, "***")
        return text


class TargetResolver(Protocol):
    async def resolve(self, tenant: str) -> ResolvedTarget | None: ...

    async def close(self) -> None: ...


@dataclass
class _Cached:
    target: ResolvedTarget | None
    fetched_at: float


class WebhookTargets:
    """Resolves a tenant's target from the Store and Secrets, cached ``refresh_s`` seconds.
    HTTP clients (one per TLS setup) and OAuth2 token caches live as long as the
    configuration that made them is unchanged."""

    def __init__(
        self,
        store: Store,
        secrets: Secrets,
        default: WebhookTarget | None = None,
        refresh_s: float = 15.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.default = default
        self.refresh_s = refresh_s
        self._now = now
        self._cache: dict[str, _Cached] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._clients_lock = threading.Lock()  # tenants are loaded in worker threads
        self._locks: dict[str, asyncio.Lock] = {}

    async def resolve(self, tenant: str) -> ResolvedTarget | None:
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            cached = self._cache.get(tenant)
            if cached is not None and self._now() - cached.fetched_at < self.refresh_s:
                return cached.target
            target = await asyncio.to_thread(self._load, tenant, cached.target if cached else None)
            self._cache[tenant] = _Cached(target, self._now())
            return target

    def forget(self, tenant: str) -> None:
        """Re-read the tenant's configuration on its next message."""
        self._cache.pop(tenant, None)

    def _load(self, tenant: str, previous: ResolvedTarget | None) -> ResolvedTarget | None:
        config = self.store.get_webhook_config(tenant)
        if config is None and self.default is None:
            return None
        signing_secret = self.secrets.get_or_create(
            secret_name(tenant, SIGNING_SECRET), new_signing_secret
        )
        credentials = {c: self.secrets.get(secret_name(tenant, c)) for c in CREDENTIALS}
        fingerprint = _fingerprint(config, self.default, credentials, signing_secret)
        if previous is not None and previous.fingerprint == fingerprint:
            return previous  # keeps its OAuth2 token
        if config is None:
            assert self.default is not None
            return self._default_target(tenant, signing_secret, fingerprint)
        return self._tenant_target(config, credentials, signing_secret, fingerprint)

    def _client(self, ca: str | None, cert: str | None, key: str | None) -> httpx.AsyncClient:
        tls_key = hashlib.sha256(json.dumps([ca, cert, key]).encode()).hexdigest()
        with self._clients_lock:
            client = self._clients.get(tls_key)
            if client is None:
                client = self._clients[tls_key] = _http_client(build_ssl_context(ca, cert, key))
            return client

    def _default_target(self, tenant: str, signing_secret: str, fingerprint: str) -> ResolvedTarget:
        default = self.default
        assert default is not None
        has_token = bool(default.secret_name) and default.secret is not None
        return ResolvedTarget(
            tenant=tenant,
            url=default.url,
            client=self._client(None, None, None),
            signing_secret=signing_secret,
            timeout_s=default.timeout_s,
            retry_attempts=default.retry_attempts,
            retry_backoff_s=default.retry_backoff_s,
            token_name=default.secret_name if has_token else None,
            token_value=default.secret if has_token else None,
            token_in=default.secret_in,
            fingerprint=fingerprint,
            _hidden=(default.secret or "",),
        )

    def _tenant_target(
        self,
        config: WebhookConfig,
        credentials: dict[str, str | None],
        signing_secret: str,
        fingerprint: str,
    ) -> ResolvedTarget:
        client = self._client(
            config.ca_bundle_pem, config.client_cert_pem, credentials["client-key"]
        )
        target = ResolvedTarget(
            tenant=config.tenant,
            url=config.url,
            client=client,
            signing_secret=signing_secret,
            timeout_s=config.timeout_s,
            retry_attempts=config.retry_attempts,
            retry_backoff_s=config.retry_backoff_s,
            interim_results=config.interim_results,
            fingerprint=fingerprint,
            _hidden=tuple(v for v in credentials.values() if v),
        )
        if config.auth is WebhookAuth.SECRET_TOKEN:
            if not config.token_name or not credentials["token"]:
                raise ValueError("secret-token auth needs a token name and value")
            target.token_name = config.token_name
            target.token_value = credentials["token"]
            target.token_in = config.token_in
        elif config.auth is WebhookAuth.OAUTH2:
            secret = credentials["oauth-client-secret"]
            if not (config.oauth_token_url and config.oauth_client_id and secret):
                raise ValueError("oauth2 auth needs a token URL, a client id and a client secret")
            target.oauth = OAuth2ClientCredentials(
                config.oauth_token_url,
                config.oauth_client_id,
                secret,
                config.oauth_scope,
                config.oauth_client_auth,
                client,
                config.timeout_s,
                now=self._now,
            )
        return target

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        self._cache.clear()


def _fingerprint(
    config: WebhookConfig | None,
    default: WebhookTarget | None,
    credentials: dict[str, str | None],
    signing_secret: str,
) -> str:
    material = json.dumps(
        [
            asdict(config) if config else None,
            asdict(default) if default else None,
            credentials,
            signing_secret,
        ],
        sort_keys=True,
        default=str,
    )
    return base64.b64encode(hashlib.sha256(material.encode()).digest()).decode()


def default_webhook_target(webhook: WebhookSettings) -> WebhookTarget | None:
    """The deployment-wide target, for tenants without a webhook configuration of their own."""
    if webhook.url is None:
        return None
    return WebhookTarget(
        url=str(webhook.url),
        secret_name=webhook.secret_name,
        secret=webhook.secret,
        secret_in=webhook.secret_in,
        timeout_s=webhook.timeout_s,
        retry_attempts=webhook.retry_attempts,
        retry_backoff_s=webhook.retry_backoff_s,
    )
