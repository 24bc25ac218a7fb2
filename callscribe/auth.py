"""API keys (``asapp-api-id`` / ``asapp-api-secret``) and the signed tokens made from them.

Secrets are 256-bit random strings, so a plain SHA-256 is a sound way to store them (a slow
password hash protects guessable secrets; these are not guessable). Tokens are signed with
itsdangerous (HMAC-SHA1 over a timestamped payload) with the deployment's one signing key and
bound to the tenant and key that asked for them. Each kind has its own salt, so one kind is
never accepted as another: stream-URL tokens (checked once, when Twilio's WebSocket opens),
live-event tokens (a program's short-lived pass to the live event stream) and live-page
sessions (the page's cookie).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import ClassVar

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from callscribe.model import TENANT_PATTERN, TENANT_RULE
from callscribe.store.base import ApiKey, Store

TOKEN_SALT = "callscribe.twilio-stream-url"
LIVE_TOKEN_SALT = "callscribe.live-events-token"
LIVE_SESSION_SALT = "callscribe.live-page-session"


class AuthError(Exception):
    """Credentials or token rejected; ``str(exc)`` is safe to show to the caller."""


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_id: str
    api_secret: str
    tenant: str


def create_api_key(store: Store, tenant: str) -> IssuedKey:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(TENANT_RULE)
    api_id = "cs-" + secrets.token_hex(12)
    api_secret = secrets.token_urlsafe(32)
    store.put_api_key(ApiKey(api_id, tenant, hash_secret(api_secret), time.time()))
    return IssuedKey(api_id, api_secret, tenant)


def authenticate(store: Store, api_id: str | None, api_secret: str | None) -> ApiKey:
    if not api_id or not api_secret:
        raise AuthError("missing asapp-api-id or asapp-api-secret header")
    key = store.get_api_key(api_id)
    # Compare even when the key is unknown so timing does not reveal which ids exist.
    expected = key.secret_hash if key else hash_secret(secrets.token_urlsafe(32))
    if not hmac.compare_digest(expected, hash_secret(api_secret)) or key is None:
        raise AuthError("invalid asapp-api-id or asapp-api-secret")
    if not key.active:
        raise AuthError("this API key has been revoked")
    return key


@dataclass(frozen=True)
class StreamGrant:
    """What a verified token grants: the tenant, and the API key it was issued to."""

    tenant: str
    api_id: str


class SignedTenantTokens:
    """Tokens of one kind (``salt``), each naming a tenant and the API key that asked for it,
    valid for ``ttl_s`` from issue and only while that key is active."""

    salt: ClassVar[str]
    # How an error names the token ("stream token expired").
    noun: ClassVar[str]

    def __init__(self, signing_key: str, ttl_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(signing_key, salt=self.salt)
        self.ttl_s = ttl_s

    def issue(self, key: ApiKey) -> str:
        return self._serializer.dumps({"t": key.tenant, "k": key.api_id})

    def issue_until(self, key: ApiKey) -> tuple[str, int]:
        """A token and the UNIX second until which it is valid at least (itsdangerous stamps
        whole seconds, so the stamp is never before the second read here)."""
        not_before = int(time.time())
        return self.issue(key), not_before + self.ttl_s

    def verify(self, token: str | None, store: Store) -> StreamGrant:
        return self.verify_until(token, store)[0]

    def verify_until(self, token: str | None, store: Store) -> tuple[StreamGrant, int]:
        """The grant, and the UNIX second after which the token is no longer valid."""
        if not token:
            raise AuthError("missing token")
        try:
            payload, issued_at = self._serializer.loads(
                token, max_age=self.ttl_s, return_timestamp=True
            )
            tenant, api_id = payload["t"], payload["k"]
        except SignatureExpired:
            raise AuthError(f"{self.noun} expired") from None
        except (BadSignature, TypeError, KeyError):
            raise AuthError(f"{self.noun} invalid") from None
        key = store.get_api_key(api_id)
        if key is None:
            raise AuthError(f"{self.noun}'s API key no longer exists")
        if key.tenant != tenant:
            raise AuthError(f"{self.noun} invalid")  # signed by us, yet inconsistent
        if not key.active:
            raise AuthError(f"{self.noun}'s API key is revoked")
        return StreamGrant(tenant=tenant, api_id=api_id), int(issued_at.timestamp()) + self.ttl_s


class StreamTokens(SignedTenantTokens):
    """The token in a Twilio stream URL."""

    salt = TOKEN_SALT
    noun = "stream token"


class LiveTokens(SignedTenantTokens):
    """A program's pass to the live event stream, asked for with its API key: short-lived,
    checked when the stream's WebSocket opens."""

    salt = LIVE_TOKEN_SALT
    noun = "live token"


class LiveSessions(SignedTenantTokens):
    """The live page's signed session (its cookie's value), made when a person signs in with
    an API key; the key itself never reaches the page."""

    salt = LIVE_SESSION_SALT
    noun = "session"
