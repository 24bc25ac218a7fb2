"""The ``Store`` port: API keys, calls and their ownership, messages, delivery failures,
tenants' webhook configurations, tenants' Amazon Connect access, tenants' custom vocabularies,
the SIPREC SBC source mapping, the live event stream's viewer connections (AWS).

Every adapter (SQLite here, DynamoDB in the AWS deployment) passes the same contract tests
(``tests/store_contract.py``). Methods are synchronous; async callers run them in a thread.
Times are UNIX seconds (float).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from callscribe.model import TENANT_PATTERN, TENANT_RULE
from callscribe.vocabulary import vocabulary_terms


class CallStatus(StrEnum):
    CONNECTED = "connected"  # media flowing, not transcribed yet
    STREAMING = "streaming"  # transcription on
    STOPPED = "stopped"  # transcription paused (hold, survey)
    COMPLETED = "completed"  # media ended; after-call API ready


@dataclass(frozen=True)
class CallKey:
    tenant: str
    namespace: str
    guid: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.namespace}/{self.guid}"


@dataclass(frozen=True)
class ApiKey:
    api_id: str
    tenant: str
    secret_hash: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass
class CallRecord:
    key: CallKey
    status: CallStatus
    owner: str  # which process holds the media (local: "local"; AWS: a task's private URL)
    created_at: float
    updated_at: float
    completed_at: float | None = None
    # The settings of the last start-streaming (they govern the after-call API too).
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredMessage:
    key: CallKey
    seq: int  # order of transcription within the call, from 0
    message_id: str
    body: dict[str, Any]  # the webhook JSON, exactly as delivered
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class DeliveryFailure:
    tenant: str
    conversation_id: str
    message_id: str
    reason: str  # "http 500", "timeout", "dropped: queue full", ...
    status_code: int | None
    at: float


class WebhookAuth(StrEnum):
    NONE = "none"
    SECRET_TOKEN = "secret-token"  # a named secret in a header or a query parameter
    OAUTH2 = "oauth2-client-credentials"


@dataclass(frozen=True)
class WebhookConfig:
    """A tenant's webhook target. Its credentials (token value, OAuth2 client secret, TLS
    client key) and its signing secret live in the ``Secrets`` port, never here."""

    tenant: str
    url: str
    auth: WebhookAuth = WebhookAuth.NONE
    token_name: str | None = None  # secret-token: the header or query parameter's name
    token_in: str = "header"  # or "query"
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_scope: str | None = None
    oauth_client_auth: str = "basic"  # client_secret_basic; "post": client_secret_post
    ca_bundle_pem: str | None = None  # trust exactly these CAs (TLS 1.2 or newer always)
    client_cert_pem: str | None = None  # mutual TLS; the key is in Secrets
    timeout_s: float = 5.0
    retry_attempts: int = 0  # extra attempts after a failed POST; 0 = the contract's none
    retry_backoff_s: float = 1.0  # doubled after each attempt
    # Also POST the interim results of calls that ask for them ("type": "interim"; best
    # effort, never ahead of a final). Off: the contract's final-only webhook.
    interim_results: bool = False
    updated_at: float = 0.0


def webhook_config_to_json(config: WebhookConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def webhook_config_from_json(text: str) -> WebhookConfig:
    """Tolerates fields a newer version wrote and an older one does not know."""
    fields = json.loads(text)
    known = {f.name for f in dataclasses.fields(WebhookConfig)}
    config = WebhookConfig(**{k: v for k, v in fields.items() if k in known})
    return dataclasses.replace(config, auth=WebhookAuth(config.auth))


@dataclass(frozen=True)
class ConnectAccess:
    """How CallScribe reads a tenant's Amazon Connect media (Kinesis Video Streams).

    ``role_arn``: the role in the tenant's AWS account that the KVS readers assume (it trusts
    CallScribe's reader role with ``external_id``, see README "Amazon Connect"). None: read
    with CallScribe's own credentials (the Connect instance is in CallScribe's own account, or
    local mode with the developer's credentials)."""

    tenant: str
    role_arn: str | None
    external_id: str | None
    updated_at: float


@dataclass(frozen=True)
class LiveConnection:
    """A viewer of a tenant's live events, connected to the deployment's WebSocket API: where
    the tasks that hold calls post that tenant's events (only those of the call ``guid``, and
    of calls in ``namespace``, when given) until the viewer disconnects or ``expires_at``
    passes."""

    connection_id: str
    tenant: str
    guid: str | None
    expires_at: float
    namespace: str | None = None


@dataclass(frozen=True)
class TenantVocabulary:
    """A tenant's custom vocabulary (``callscribe.vocabulary``): merged into every one of its
    calls' transcription when the call starts."""

    tenant: str
    terms: tuple[str, ...]
    updated_at: float


def tenant_vocabulary(vocabulary: TenantVocabulary) -> TenantVocabulary:
    """A tenant vocabulary checked before it is stored, its terms as checked (stripped, case
    repeats dropped): ValueError when the tenant's name or a term is bad, the whole is over
    the bounds, or it has no term (clearing it is ``delete_tenant_vocabulary``)."""
    if not TENANT_PATTERN.fullmatch(vocabulary.tenant):
        raise ValueError(f"{TENANT_RULE} (got {vocabulary.tenant!r})")
    terms = vocabulary_terms(vocabulary.terms)
    if not terms:
        raise ValueError("a vocabulary needs at least one term (clear it to have none)")
    return dataclasses.replace(vocabulary, terms=terms)


def siprec_source_network(network: str) -> str:
    """An SBC's address or network as the Store keeps it: normalised CIDR, host bits dropped
    ("198.51.100.7" -> "198.51.100.7/32", "192.0.2.9/24" -> "192.0.2.0/24"), so that one
    network has one mapping however it was written."""
    try:
        return str(ipaddress.ip_network(network.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{network!r} is not an IP address or network") from None


def siprec_source(network: str, tenant: str) -> tuple[str, str]:
    """A SIPREC source mapping checked before it is stored: (normalised network, tenant)."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"{TENANT_RULE} (got {tenant!r})")
    return siprec_source_network(network), tenant


class Store(Protocol):
    # API keys
    def put_api_key(self, key: ApiKey) -> None: ...
    def get_api_key(self, api_id: str) -> ApiKey | None: ...
    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]: ...
    def revoke_api_key(self, api_id: str, at: float) -> bool: ...

    # calls
    def create_call(self, call: CallRecord) -> bool:
        """Insert; False if the key exists already (a Twilio stream reconnecting)."""
        ...

    def get_call(self, key: CallKey) -> CallRecord | None: ...
    def find_calls(self, tenant: str, guid: str) -> list[CallRecord]: ...
    def update_call(
        self,
        key: CallKey,
        *,
        status: CallStatus | None = None,
        owner: str | None = None,
        params: dict[str, Any] | None = None,
        completed_at: float | None = None,
        updated_at: float,
    ) -> None: ...

    def list_incomplete_calls(self) -> list[CallRecord]:
        """Every tenant's calls not completed yet (media held, or held by a process that died):
        what a starting process sweeps for calls whose owner is gone."""
        ...

    def complete_abandoned_call(self, key: CallKey, owner: str, completed_at: float) -> bool:
        """Complete a call whose owner died, only if ``owner`` still holds it and it is not
        completed (a stream that reconnected to a live process meanwhile keeps its call);
        True if it was completed here. The caller then sets its messages' expiry."""
        ...

    def acquire_call_lock(self, key: CallKey, holder: str, now: float, ttl_s: float) -> bool:
        """Take the per-call request lock (409-202 when another request holds it)."""
        ...

    def release_call_lock(self, key: CallKey, holder: str) -> None: ...

    # messages
    def put_message(self, message: StoredMessage) -> None: ...
    def list_messages(self, key: CallKey, limit: int, now: float) -> list[StoredMessage]: ...
    def last_message_seq(self, key: CallKey) -> int | None: ...
    def set_message_expiry(self, key: CallKey, expires_at: float) -> int: ...
    def list_messages_between(
        self,
        tenant: str,
        start: float,
        end: float,
        *,
        now: float,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[StoredMessage]:
        """A tenant's unexpired messages created in [start, end), all calls, ordered by
        (created_at, message_id); a page of at most ``limit``, beginning after the
        (created_at, message_id) of the previous page's last message (the feed export)."""
        ...

    # delivery failures
    def put_delivery_failure(self, failure: DeliveryFailure) -> None: ...
    def list_delivery_failures(
        self,
        tenant: str,
        conversation_id: str | None = None,
        limit: int = 1000,
        since: float | None = None,
    ) -> list[DeliveryFailure]:
        """Oldest first; ``since``: only failures at or after this time."""
        ...

    # webhook configurations (one per tenant)
    def put_webhook_config(self, config: WebhookConfig) -> None: ...
    def get_webhook_config(self, tenant: str) -> WebhookConfig | None: ...
    def delete_webhook_config(self, tenant: str) -> bool: ...

    # Amazon Connect access (one per tenant)
    def put_connect_access(self, access: ConnectAccess) -> None: ...
    def get_connect_access(self, tenant: str) -> ConnectAccess | None: ...
    def delete_connect_access(self, tenant: str) -> bool: ...

    # custom vocabularies (one per tenant). Adapters check and normalise with
    # tenant_vocabulary: a bad one raises ValueError and nothing is stored.
    def put_tenant_vocabulary(self, vocabulary: TenantVocabulary) -> None:
        """Store ``vocabulary`` (replacing the tenant's, if any)."""
        ...

    def get_tenant_vocabulary(self, tenant: str) -> TenantVocabulary | None: ...
    def delete_tenant_vocabulary(self, tenant: str) -> bool:
        """False when the tenant had no vocabulary."""
        ...

    # SIPREC SBC sources: which tenant an SBC's calls belong to, by its source network
    # (deployment-wide; every recorder reads it). Adapters check and normalise with
    # siprec_source / siprec_source_network: a bad network or tenant raises ValueError.
    def put_siprec_source(self, network: str, tenant: str) -> None:
        """Map ``network`` to ``tenant`` (replacing its mapping, if any)."""
        ...

    def delete_siprec_source(self, network: str) -> bool:
        """False when ``network`` had no mapping."""
        ...

    def siprec_sources(self) -> dict[str, str]:
        """Every mapping, normalised network ("192.0.2.0/24") -> tenant; order not significant."""
        ...

    # live event stream viewers (the AWS WebSocket API's connections)
    def put_live_connection(
        self,
        connection_id: str,
        tenant: str,
        guid: str | None,
        expires_at: float,
        namespace: str | None = None,
    ) -> None:
        """Record a viewer's connection (replacing one with the same id)."""
        ...

    def delete_live_connection(self, connection_id: str) -> bool:
        """False when no such connection was recorded."""
        ...

    def live_connections(self, tenant: str, now: float) -> list[LiveConnection]:
        """``tenant``'s connections not expired at ``now``; order not significant."""
        ...

    # retention
    def purge_expired(self, now: float) -> int: ...

    def close(self) -> None: ...
