"""API keys (``asapp-api-id`` / ``asapp-api-secret``) and signed stream-URL tokens.

Secrets are 256-bit random strings, so a plain SHA-256 is a sound way to store them (a slow
password hash protects guessable secrets; these are not guessable). Stream tokens are signed
with itsdangerous (HMAC-SHA1 over a timestamped payload) and bound to the tenant and key that
asked for them; they are checked once, when the WebSocket opens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from callscribe.model import TENANT_PATTERN, TENANT_RULE
from callscribe.store.base import ApiKey, Store

TOKEN_SALT = "callscribe.twilio-stream-url"


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
    tenant: str
    api_id: str


class StreamTokens:
    def __init__(self, signing_key: str, ttl_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(signing_key, salt=TOKEN_SALT)
        self.ttl_s = ttl_s

    def issue(self, key: ApiKey) -> str:
        return self._serializer.dumps({"t": key.tenant, "k": key.api_id})

    def verify(self, token: str | None, store: Store) -> StreamGrant:
        if not token:
            raise AuthError("missing token")
        try:
            payload = self._serializer.loads(token, max_age=self.ttl_s)
        except SignatureExpired:
            raise AuthError("stream token expired") from None
        except BadSignature:
            raise AuthError("stream token invalid") from None
        key = store.get_api_key(payload["k"])
        if key is None:
            raise AuthError("stream token's API key no longer exists")
        if key.tenant != payload["t"]:
            raise AuthError("stream token invalid")  # signed by us, yet inconsistent
        if not key.active:
            raise AuthError("stream token's API key is revoked")
        return StreamGrant(tenant=payload["t"], api_id=payload["k"])
