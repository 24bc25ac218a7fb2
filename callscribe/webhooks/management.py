"""Managing a tenant's webhook configuration (``callscribe webhook set|show|clear``): the
config goes to the Store, credentials to the Secrets port. Everything is checked before
anything is written (a PEM that does not load, a mode without its credential), so a running
server never picks up half a configuration."""

from __future__ import annotations

import re
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from callscribe.model import TENANT_PATTERN, TENANT_RULE
from callscribe.secrets import Secrets
from callscribe.store.base import Store, WebhookAuth, WebhookConfig
from callscribe.webhooks.signing import new_signing_secret
from callscribe.webhooks.targets import (
    CREDENTIALS,
    SIGNING_SECRET,
    build_ssl_context,
    secret_name,
)

# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class WebhookConfigError(ValueError):
    """An invalid configuration; ``str(exc)`` names the problem, never a credential."""


def _http_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise WebhookConfigError(f"{what} must be an https:// URL")
    return url


def set_webhook(
    store: Store,
    secrets: Secrets,
    *,
    tenant: str,
    url: str,
    auth: WebhookAuth | None = None,
    token_name: str | None = None,
    token: str | None = None,
    token_in: str = "header",
    oauth_token_url: str | None = None,
    oauth_client_id: str | None = None,
    oauth_client_secret: str | None = None,
    oauth_scope: str | None = None,
    oauth_client_auth: str = "basic",
    ca_bundle_pem: str | None = None,
    client_cert_pem: str | None = None,
    client_key_pem: str | None = None,
    timeout_s: float = 5.0,
    retry_attempts: int = 0,
    retry_backoff_s: float = 1.0,
    interim_results: bool = False,
) -> WebhookConfig:
    """Replace the tenant's configuration and credentials as a whole."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise WebhookConfigError(TENANT_RULE)
    _http_url(url, "the webhook URL")
    if auth is None:
        auth = (
            WebhookAuth.SECRET_TOKEN
            if token_name
            else WebhookAuth.OAUTH2
            if oauth_token_url
            else WebhookAuth.NONE
        )
    if token_in not in ("header", "query"):
        raise WebhookConfigError("the token travels in a header or a query parameter")
    if oauth_client_auth not in ("basic", "post"):
        raise WebhookConfigError("OAuth2 client authentication is basic or post")
    if not 0 < timeout_s <= 60:
        raise WebhookConfigError("the timeout is between 0 and 60 s")
    if not 0 <= retry_attempts <= 10 or not 0 <= retry_backoff_s <= 60:
        raise WebhookConfigError("retry attempts 0-10, backoff 0-60 s")
    credentials: dict[str, str] = {}
    if auth is WebhookAuth.SECRET_TOKEN:
        if not token_name or not token:
            raise WebhookConfigError("secret-token auth needs --token-name and --token")
        if token_in == "header" and not (
            _HEADER_NAME.fullmatch(token_name) and token.isascii() and token.isprintable()
        ):
            raise WebhookConfigError(
                "a token sent as a header needs a header name and a printable ASCII value"
            )
        credentials["token"] = token
    elif auth is WebhookAuth.OAUTH2:
        if not (oauth_token_url and oauth_client_id and oauth_client_secret):
            raise WebhookConfigError(
                "oauth2 auth needs --oauth-token-url, --oauth-client-id and --oauth-client-secret"
            )
        _http_url(oauth_token_url, "the OAuth2 token URL")
        credentials["oauth-client-secret"] = oauth_client_secret
    if bool(client_cert_pem) != bool(client_key_pem):
        raise WebhookConfigError("mutual TLS needs both a client certificate and its key")
    if client_key_pem:
        credentials["client-key"] = client_key_pem
    try:
        build_ssl_context(ca_bundle_pem, client_cert_pem, client_key_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise WebhookConfigError(
            f"the CA bundle or client certificate does not load: {exc}"
        ) from None

    config = WebhookConfig(
        tenant=tenant,
        url=url,
        auth=auth,
        token_name=token_name if auth is WebhookAuth.SECRET_TOKEN else None,
        token_in=token_in,
        oauth_token_url=oauth_token_url if auth is WebhookAuth.OAUTH2 else None,
        oauth_client_id=oauth_client_id if auth is WebhookAuth.OAUTH2 else None,
        oauth_scope=oauth_scope if auth is WebhookAuth.OAUTH2 else None,
        oauth_client_auth=oauth_client_auth,
        ca_bundle_pem=ca_bundle_pem,
        client_cert_pem=client_cert_pem,
        timeout_s=timeout_s,
        retry_attempts=retry_attempts,
        retry_backoff_s=retry_backoff_s,
        interim_results=interim_results,
        updated_at=time.time(),
    )
    for credential in CREDENTIALS:
        if credential in credentials:
            secrets.put(secret_name(tenant, credential), credentials[credential])
        else:
            secrets.delete(secret_name(tenant, credential))
    store.put_webhook_config(config)
    signing_secret(secrets, tenant)  # so the tenant can be given it before the first message
    return config


def clear_webhook(store: Store, secrets: Secrets, tenant: str) -> bool:
    """Remove the tenant's target and credentials (it falls back to the deployment-wide
    target, if any). The signing secret stays: receivers keep verifying with it."""
    removed = store.delete_webhook_config(tenant)
    for credential in CREDENTIALS:
        removed = secrets.delete(secret_name(tenant, credential)) or removed
    return removed


def signing_secret(secrets: Secrets, tenant: str, rotate: bool = False) -> str:
    name = secret_name(tenant, SIGNING_SECRET)
    if rotate:
        value = new_signing_secret()
        secrets.put(name, value)
        return value
    return secrets.get_or_create(name, new_signing_secret)


def describe_webhook(store: Store, secrets: Secrets, tenant: str) -> dict[str, Any]:
    """What ``webhook show`` prints: the configuration and which credentials are set."""
    config = store.get_webhook_config(tenant)
    signing = secrets.get(secret_name(tenant, SIGNING_SECRET)) is not None
    if config is None:
        return {
            "tenant": tenant,
            "source": "deployment default (serve --webhook-url), if set",
            "signingSecret": "set" if signing else "made on first delivery",
        }
    described: dict[str, Any] = {
        "tenant": tenant,
        "source": "tenant",
        "url": config.url,
        "auth": config.auth.value,
        "timeoutS": config.timeout_s,
        "retryAttempts": config.retry_attempts,
        "retryBackoffS": config.retry_backoff_s,
        "interimResults": config.interim_results,
        "caBundle": _certificates(config.ca_bundle_pem),
        "clientCertificate": _certificates(config.client_cert_pem),
        "signingSecret": "set" if signing else "made on first delivery",
    }
    if config.auth is WebhookAuth.SECRET_TOKEN:
        described |= {"tokenName": config.token_name, "tokenIn": config.token_in}
    if config.auth is WebhookAuth.OAUTH2:
        described |= {
            "oauthTokenUrl": config.oauth_token_url,
            "oauthClientId": config.oauth_client_id,
            "oauthScope": config.oauth_scope,
            "oauthClientAuth": config.oauth_client_auth,
        }
    described["credentials"] = {
        c: "set" for c in CREDENTIALS if secrets.get(secret_name(tenant, c)) is not None
    }
    return described


def _certificates(pem: str | None) -> str | None:
    """How many PEM certificates (for show), or None."""
    if not pem:
        return None
    count = pem.count("-----BEGIN CERTIFICATE-----")
    return f"{count} certificate{'s' if count != 1 else ''}"
