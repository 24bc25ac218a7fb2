"""The contract every ``Store`` adapter must honour (``callscribe/store/base.py``).

Reuse it from an adapter's test module by subclassing and overriding the ``store`` fixture::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            s = SqliteStore(tmp_path / "store.sqlite3")
            yield s
            s.close()

Only the ``Store`` Protocol's methods are used, and every test works in tenants of its own
(random names), so an adapter backed by shared storage (a DynamoDB table that outlives the
test) passes as well as one created empty for each test. Times are explicit arguments; no test
depends on the wall clock.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from callscribe.store.base import (
    ApiKey,
    CallKey,
    CallRecord,
    CallStatus,
    ConnectAccess,
    DeliveryFailure,
    LiveConnection,
    Store,
    StoredMessage,
    TenantVocabulary,
    WebhookAuth,
    WebhookConfig,
)

T0 = 1_700_000_000.0  # an arbitrary "now" for the timelines below


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_call(
    key: CallKey,
    *,
    status: CallStatus = CallStatus.CONNECTED,
    owner: str = "local",
    created_at: float = T0,
    params: dict[str, Any] | None = None,
) -> CallRecord:
    return CallRecord(
        key=key,
        status=status,
        owner=owner,
        created_at=created_at,
        updated_at=created_at,
        completed_at=None,
        params=dict(params or {}),
    )


def make_message(
    key: CallKey,
    seq: int,
    *,
    expires_at: float = T0 + 3600,
    created_at: float = T0,
    body: dict[str, Any] | None = None,
) -> StoredMessage:
    return StoredMessage(
        key=key,
        seq=seq,
        message_id=f"msg-{key.guid}-{seq}",
        body=body if body is not None else {"seq": seq, "utterance": [{"text": f"words {seq}"}]},
        created_at=created_at,
        expires_at=expires_at,
    )


def make_failure(
    tenant: str, conversation_id: str, n: int, *, reason: str = "http 500", status: int | None = 500
) -> DeliveryFailure:
    return DeliveryFailure(
        tenant=tenant,
        conversation_id=conversation_id,
        message_id=f"msg-{conversation_id}-{n}",
        reason=reason,
        status_code=status,
        at=T0 + n,
    )


class StoreContract:
    """Adapter-agnostic tests of the ``Store`` port. Subclasses override ``store``."""

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("an adapter's test class must override the `store` fixture")

    @pytest.fixture
    def tenant(self) -> str:
        return unique("tenant-a")

    @pytest.fixture
    def other_tenant(self) -> str:
        return unique("tenant-b")

    @pytest.fixture
    def key(self, tenant: str) -> CallKey:
        return CallKey(tenant, "twilio", unique("CA"))

    # ------------------------------------------------------------------------- API keys

    def test_api_key_round_trip(self, store: Store, tenant: str) -> None:
        key = ApiKey(unique("cs"), tenant, "sha256:" + "ab" * 32, T0)
        store.put_api_key(key)
        got = store.get_api_key(key.api_id)
        assert got == key
        assert got is not None and got.active and got.revoked_at is None

    def test_unknown_api_key_is_none(self, store: Store) -> None:
        assert store.get_api_key(unique("cs-missing")) is None

    def test_list_api_keys_by_tenant(self, store: Store, tenant: str, other_tenant: str) -> None:
        mine = [ApiKey(unique("cs"), tenant, f"sha256:{i}", T0 + i) for i in range(3)]
        theirs = [ApiKey(unique("cs"), other_tenant, "sha256:x", T0 + 10)]
        for k in mine + theirs:
            store.put_api_key(k)

        assert {k.api_id for k in store.list_api_keys(tenant)} == {k.api_id for k in mine}
        assert [k.tenant for k in store.list_api_keys(other_tenant)] == [other_tenant]
        assert store.list_api_keys(unique("tenant-nobody")) == []
        # Without a tenant: every tenant's keys (a superset when storage is shared).
        everyone = {k.api_id for k in store.list_api_keys()}
        assert {k.api_id for k in mine + theirs} <= everyone

    def test_revoke_api_key(self, store: Store, tenant: str) -> None:
        key = ApiKey(unique("cs"), tenant, "sha256:h", T0)
        other = ApiKey(unique("cs"), tenant, "sha256:h2", T0)
        store.put_api_key(key)
        store.put_api_key(other)

        assert store.revoke_api_key(key.api_id, T0 + 5) is True
        revoked = store.get_api_key(key.api_id)
        assert revoked is not None
        assert revoked.revoked_at == T0 + 5
        assert not revoked.active
        assert revoked.secret_hash == key.secret_hash and revoked.tenant == tenant

        # A second revoke is refused and keeps the first revocation time.
        assert store.revoke_api_key(key.api_id, T0 + 99) is False
        again = store.get_api_key(key.api_id)
        assert again is not None and again.revoked_at == T0 + 5

        # The other key of the same tenant is untouched; the listing shows both states.
        still = store.get_api_key(other.api_id)
        assert still is not None and still.active
        states = {k.api_id: k.active for k in store.list_api_keys(tenant)}
        assert states == {key.api_id: False, other.api_id: True}

    def test_revoke_unknown_api_key_is_false(self, store: Store) -> None:
        assert store.revoke_api_key(unique("cs-missing"), T0) is False

    # ------------------------------------------------------------------------- calls

    def test_create_and_get_call(self, store: Store, key: CallKey) -> None:
        call = make_call(
            key,
            status=CallStatus.STREAMING,
            owner="http://10.0.0.7:8080",
            params={"language": "en-US", "redaction": {"pin": True}, "n": [1, 2]},
        )
        assert store.create_call(call) is True
        got = store.get_call(key)
        assert got == call
        assert got is not None and isinstance(got.status, CallStatus)

    def test_create_call_duplicate_is_false_and_keeps_original(
        self, store: Store, key: CallKey
    ) -> None:
        first = make_call(key, owner="first", params={"a": 1})
        assert store.create_call(first) is True
        second = make_call(key, owner="second", status=CallStatus.STREAMING, created_at=T0 + 1)
        assert store.create_call(second) is False
        assert store.get_call(key) == first

    def test_get_missing_call_is_none(self, store: Store, key: CallKey) -> None:
        assert store.get_call(key) is None
        assert store.find_calls(key.tenant, key.guid) == []

    def test_tenant_isolation_with_same_guid(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        guid = unique("CA")
        mine = CallKey(tenant, "twilio", guid)
        assert store.create_call(make_call(mine, owner="a"))

        # Tenant B sees nothing of tenant A's call, even knowing its guid.
        theirs = CallKey(other_tenant, "twilio", guid)
        assert store.get_call(theirs) is None
        assert store.find_calls(other_tenant, guid) == []

        # B creating a call with the same guid is a different call, not a duplicate.
        assert store.create_call(make_call(theirs, owner="b")) is True
        assert [c.key for c in store.find_calls(tenant, guid)] == [mine]
        assert [c.key for c in store.find_calls(other_tenant, guid)] == [theirs]
        a, b = store.get_call(mine), store.get_call(theirs)
        assert a is not None and a.owner == "a"
        assert b is not None and b.owner == "b"

    def test_find_calls_across_namespaces(self, store: Store, tenant: str) -> None:
        guid = unique("call")
        keys = [CallKey(tenant, ns, guid) for ns in ("twilio", "siprec", "connect")]
        for i, k in enumerate(keys):
            assert store.create_call(make_call(k, created_at=T0 + i, owner=k.namespace))
        # A call with another guid in the same tenant is not found.
        assert store.create_call(make_call(CallKey(tenant, "twilio", unique("call"))))

        found = store.find_calls(tenant, guid)
        assert sorted(c.key.namespace for c in found) == ["connect", "siprec", "twilio"]
        assert all(c.key.guid == guid and c.key.tenant == tenant for c in found)
        assert {c.key.namespace: c.owner for c in found} == {k.namespace: k.namespace for k in keys}

    def test_update_call_status_keeps_other_fields(self, store: Store, key: CallKey) -> None:
        call = make_call(key, owner="task-1", params={"language": "en-US"})
        store.create_call(call)

        store.update_call(key, status=CallStatus.STREAMING, updated_at=T0 + 10)
        got = store.get_call(key)
        assert got is not None
        assert got.status is CallStatus.STREAMING
        assert got.updated_at == T0 + 10
        assert (got.owner, got.params, got.created_at, got.completed_at) == (
            "task-1",
            {"language": "en-US"},
            T0,
            None,
        )

    def test_update_call_each_field_independently(self, store: Store, key: CallKey) -> None:
        store.create_call(make_call(key, owner="task-1", params={"language": "en-US"}))

        store.update_call(key, owner="task-2", updated_at=T0 + 1)
        store.update_call(key, params={"language": "es-US", "x": [1]}, updated_at=T0 + 2)
        got = store.get_call(key)
        assert got is not None
        assert got.owner == "task-2"
        assert got.params == {"language": "es-US", "x": [1]}  # replaced, not merged
        assert got.status is CallStatus.CONNECTED
        assert got.updated_at == T0 + 2

        store.update_call(
            key, status=CallStatus.COMPLETED, completed_at=T0 + 30, updated_at=T0 + 30
        )
        done = store.get_call(key)
        assert done is not None
        assert done.status is CallStatus.COMPLETED
        assert done.completed_at == T0 + 30
        assert done.owner == "task-2" and done.params == {"language": "es-US", "x": [1]}
        assert done.created_at == T0

    def test_update_call_only_touches_its_key(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        guid = unique("CA")
        target = CallKey(tenant, "twilio", guid)
        same_guid_other_ns = CallKey(tenant, "siprec", guid)
        same_guid_other_tenant = CallKey(other_tenant, "twilio", guid)
        for k in (target, same_guid_other_ns, same_guid_other_tenant):
            store.create_call(make_call(k, owner="orig"))

        store.update_call(target, status=CallStatus.STOPPED, owner="new", updated_at=T0 + 1)

        changed = store.get_call(target)
        assert changed is not None and (changed.status, changed.owner) == (
            CallStatus.STOPPED,
            "new",
        )
        for k in (same_guid_other_ns, same_guid_other_tenant):
            untouched = store.get_call(k)
            assert untouched is not None
            assert (untouched.status, untouched.owner, untouched.updated_at) == (
                CallStatus.CONNECTED,
                "orig",
                T0,
            )

    def test_update_missing_call_does_not_create_it(self, store: Store, key: CallKey) -> None:
        store.update_call(key, status=CallStatus.STREAMING, owner="x", updated_at=T0)
        assert store.get_call(key) is None
        # ... so a later create still succeeds.
        assert store.create_call(make_call(key)) is True

    # ------------------------------------------------------------------------- abandoned calls

    def incomplete(self, store: Store, tenant: str) -> dict[str, str]:
        """guid -> owner of the tenant's calls not completed (the list spans all tenants)."""
        return {
            c.key.guid: c.owner for c in store.list_incomplete_calls() if c.key.tenant == tenant
        }

    def test_incomplete_calls_are_those_not_completed(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        keys = {status: CallKey(tenant, "twilio", unique("CA")) for status in CallStatus}
        for status, key in keys.items():
            store.create_call(make_call(key, status=status, owner=f"owner-{status.value}"))
        store.create_call(make_call(CallKey(other_tenant, "twilio", unique("CA"))))
        assert self.incomplete(store, tenant) == {
            keys[s].guid: f"owner-{s.value}"
            for s in (CallStatus.CONNECTED, CallStatus.STREAMING, CallStatus.STOPPED)
        }

        # A call follows its status and its owner: completed, it leaves the list; taken up
        # again (a stream reconnecting to another process), it is back under its new owner.
        streaming = keys[CallStatus.STREAMING]
        store.update_call(
            streaming, status=CallStatus.COMPLETED, completed_at=T0 + 5, updated_at=T0 + 5
        )
        assert streaming.guid not in self.incomplete(store, tenant)
        store.update_call(
            streaming, status=CallStatus.CONNECTED, owner="owner-2", updated_at=T0 + 6
        )
        assert self.incomplete(store, tenant)[streaming.guid] == "owner-2"
        store.update_call(streaming, owner="owner-3", updated_at=T0 + 7)
        assert self.incomplete(store, tenant)[streaming.guid] == "owner-3"

    def test_complete_abandoned_call(self, store: Store, key: CallKey) -> None:
        store.create_call(
            make_call(
                key, status=CallStatus.STREAMING, owner="dead-task", params={"language": "en-US"}
            )
        )
        assert store.complete_abandoned_call(key, "dead-task", completed_at=T0 + 60) is True
        done = store.get_call(key)
        assert done is not None
        assert (done.status, done.completed_at, done.updated_at) == (
            CallStatus.COMPLETED,
            T0 + 60,
            T0 + 60,
        )
        assert (done.owner, done.params) == ("dead-task", {"language": "en-US"})
        assert key.guid not in self.incomplete(store, key.tenant)
        # Once only: a second sweep finds nothing to do.
        assert store.complete_abandoned_call(key, "dead-task", completed_at=T0 + 61) is False
        assert store.get_call(key).completed_at == T0 + 60  # type: ignore[union-attr]

    def test_complete_abandoned_call_leaves_a_call_taken_over(
        self, store: Store, key: CallKey
    ) -> None:
        """The owner changed since the sweep read it (the stream reconnected to a live
        process): the call is not completed under its new owner."""
        store.create_call(make_call(key, status=CallStatus.STREAMING, owner="dead-task"))
        store.update_call(key, status=CallStatus.CONNECTED, owner="live-task", updated_at=T0 + 1)
        assert store.complete_abandoned_call(key, "dead-task", completed_at=T0 + 2) is False
        got = store.get_call(key)
        assert got is not None and (got.status, got.owner) == (CallStatus.CONNECTED, "live-task")
        assert self.incomplete(store, key.tenant) == {key.guid: "live-task"}

    def test_complete_abandoned_call_of_an_unknown_call_is_false(
        self, store: Store, key: CallKey
    ) -> None:
        assert store.complete_abandoned_call(key, "dead-task", completed_at=T0) is False
        assert store.get_call(key) is None

    # ------------------------------------------------------------------------- call locks

    def test_lock_acquire_and_refuse_second_holder(self, store: Store, key: CallKey) -> None:
        assert store.acquire_call_lock(key, "req-1", now=T0, ttl_s=30) is True
        assert store.acquire_call_lock(key, "req-2", now=T0 + 1, ttl_s=30) is False

    def test_lock_release_lets_next_holder_in(self, store: Store, key: CallKey) -> None:
        assert store.acquire_call_lock(key, "req-1", now=T0, ttl_s=30)
        store.release_call_lock(key, "req-1")
        assert store.acquire_call_lock(key, "req-2", now=T0 + 1, ttl_s=30) is True
        assert store.acquire_call_lock(key, "req-1", now=T0 + 2, ttl_s=30) is False

    def test_lock_release_by_wrong_holder_does_nothing(self, store: Store, key: CallKey) -> None:
        assert store.acquire_call_lock(key, "req-1", now=T0, ttl_s=30)
        store.release_call_lock(key, "req-2")
        assert store.acquire_call_lock(key, "req-3", now=T0 + 1, ttl_s=30) is False
        # The real holder can still release it.
        store.release_call_lock(key, "req-1")
        assert store.acquire_call_lock(key, "req-3", now=T0 + 2, ttl_s=30) is True

    def test_release_without_lock_is_harmless(self, store: Store, key: CallKey) -> None:
        store.release_call_lock(key, "nobody")
        assert store.acquire_call_lock(key, "req-1", now=T0, ttl_s=30) is True

    def test_lock_expiry_lets_new_holder_in(self, store: Store, key: CallKey) -> None:
        assert store.acquire_call_lock(key, "stuck", now=T0, ttl_s=10)
        assert store.acquire_call_lock(key, "req-2", now=T0 + 9.5, ttl_s=10) is False
        assert store.acquire_call_lock(key, "req-2", now=T0 + 10.5, ttl_s=10) is True
        # The new holder's lock runs from its own acquisition time.
        assert store.acquire_call_lock(key, "req-3", now=T0 + 20, ttl_s=10) is False
        # The expired holder's late release must not free the new holder's lock.
        store.release_call_lock(key, "stuck")
        assert store.acquire_call_lock(key, "req-3", now=T0 + 20.1, ttl_s=10) is False

    def test_locks_are_per_call(self, store: Store, tenant: str, other_tenant: str) -> None:
        guid = unique("CA")
        keys = [
            CallKey(tenant, "twilio", guid),
            CallKey(tenant, "siprec", guid),
            CallKey(other_tenant, "twilio", guid),
            CallKey(tenant, "twilio", unique("CA")),
        ]
        for k in keys:
            assert store.acquire_call_lock(k, "same-holder", now=T0, ttl_s=30) is True

    # ------------------------------------------------------------------------- messages

    def test_messages_listed_by_seq_regardless_of_insert_order(
        self, store: Store, key: CallKey
    ) -> None:
        for seq in (3, 0, 4, 1, 2):
            store.put_message(make_message(key, seq))
        listed = store.list_messages(key, limit=100, now=T0)
        assert [m.seq for m in listed] == [0, 1, 2, 3, 4]
        assert listed == [make_message(key, seq) for seq in range(5)]

    def test_message_body_round_trips(self, store: Store, key: CallKey) -> None:
        body = {
            "externalConversationId": key.guid,
            "utterance": [{"text": "héllo — ¿qué tal? 你好", "confidence": 0.93}],
            "nested": {"empty": [], "none": None, "flag": False, "n": 12345678901},
        }
        store.put_message(make_message(key, 0, body=body))
        (got,) = store.list_messages(key, limit=10, now=T0)
        assert got.body == body
        assert got.key == key and got.message_id == f"msg-{key.guid}-0"

    def test_list_messages_limit_returns_lowest_seqs(self, store: Store, key: CallKey) -> None:
        for seq in reversed(range(10)):
            store.put_message(make_message(key, seq))
        assert [m.seq for m in store.list_messages(key, limit=3, now=T0)] == [0, 1, 2]
        assert len(store.list_messages(key, limit=10, now=T0)) == 10
        assert len(store.list_messages(key, limit=50, now=T0)) == 10

    def test_list_messages_excludes_expired(self, store: Store, key: CallKey) -> None:
        store.put_message(make_message(key, 0, expires_at=T0 + 10))
        store.put_message(make_message(key, 1, expires_at=T0 + 100))
        store.put_message(make_message(key, 2, expires_at=T0 + 5))

        assert [m.seq for m in store.list_messages(key, limit=10, now=T0)] == [0, 1, 2]
        assert [m.seq for m in store.list_messages(key, limit=10, now=T0 + 7)] == [0, 1]
        assert [m.seq for m in store.list_messages(key, limit=10, now=T0 + 50)] == [1]
        assert store.list_messages(key, limit=10, now=T0 + 1000) == []

    def test_message_expiring_exactly_now_is_expired(self, store: Store, key: CallKey) -> None:
        store.put_message(make_message(key, 0, expires_at=T0 + 10))
        assert store.list_messages(key, limit=10, now=T0 + 10) == []

    def test_limit_applies_after_expiry_filter(self, store: Store, key: CallKey) -> None:
        store.put_message(make_message(key, 0, expires_at=T0 + 1))
        store.put_message(make_message(key, 1, expires_at=T0 + 1))
        for seq in (2, 3, 4):
            store.put_message(make_message(key, seq, expires_at=T0 + 100))
        assert [m.seq for m in store.list_messages(key, limit=2, now=T0 + 10)] == [2, 3]

    def test_messages_are_per_call(self, store: Store, tenant: str, other_tenant: str) -> None:
        guid = unique("CA")
        a = CallKey(tenant, "twilio", guid)
        b = CallKey(other_tenant, "twilio", guid)
        c = CallKey(tenant, "siprec", guid)
        store.put_message(make_message(a, 0))
        store.put_message(make_message(a, 1))
        store.put_message(make_message(b, 0, body={"who": "b"}))

        assert [m.seq for m in store.list_messages(a, limit=10, now=T0)] == [0, 1]
        assert [m.body for m in store.list_messages(b, limit=10, now=T0)] == [{"who": "b"}]
        assert store.list_messages(c, limit=10, now=T0) == []
        assert store.last_message_seq(a) == 1
        assert store.last_message_seq(b) == 0
        assert store.last_message_seq(c) is None

    def test_last_message_seq(self, store: Store, key: CallKey) -> None:
        assert store.last_message_seq(key) is None
        store.put_message(make_message(key, 2))
        assert store.last_message_seq(key) == 2
        store.put_message(make_message(key, 7))
        store.put_message(make_message(key, 5))
        assert store.last_message_seq(key) == 7

    def test_set_message_expiry(self, store: Store, tenant: str) -> None:
        key = CallKey(tenant, "twilio", unique("CA"))
        other = CallKey(tenant, "twilio", unique("CA"))
        for seq in range(3):
            store.put_message(make_message(key, seq, expires_at=T0 + 3600))
        store.put_message(make_message(other, 0, expires_at=T0 + 3600))

        assert store.set_message_expiry(key, T0 + 60) == 3
        assert [m.expires_at for m in store.list_messages(key, limit=10, now=T0)] == [T0 + 60] * 3
        assert store.list_messages(key, limit=10, now=T0 + 61) == []
        # The other call's messages keep their expiry.
        (kept,) = store.list_messages(other, limit=10, now=T0 + 61)
        assert kept.expires_at == T0 + 3600

        # Expiry can be extended as well as shortened.
        assert store.set_message_expiry(key, T0 + 7200) == 3
        assert len(store.list_messages(key, limit=10, now=T0 + 3601)) == 3

    def test_set_message_expiry_without_messages(self, store: Store, key: CallKey) -> None:
        assert store.set_message_expiry(key, T0) == 0

    # ------------------------------------------------------------------------- delivery failures

    def test_delivery_failures_filtered_by_tenant_and_conversation(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        conv1, conv2 = unique("CA"), unique("CA")
        f1 = make_failure(tenant, conv1, 1)
        f2 = make_failure(tenant, conv2, 2, reason="timeout after 5 s", status=None)
        f3 = make_failure(tenant, conv1, 3, reason="dropped: more than 100 pending", status=None)
        g1 = make_failure(other_tenant, conv1, 4)
        for f in (f1, f2, f3, g1):
            store.put_delivery_failure(f)

        assert store.list_delivery_failures(tenant) == [f1, f2, f3]
        assert store.list_delivery_failures(tenant, conv1) == [f1, f3]
        assert store.list_delivery_failures(tenant, conv2) == [f2]
        assert store.list_delivery_failures(other_tenant) == [g1]
        assert store.list_delivery_failures(other_tenant, conv2) == []
        assert store.list_delivery_failures(unique("tenant-nobody")) == []

    def test_delivery_failures_keep_duplicates_and_limit(self, store: Store, tenant: str) -> None:
        conv = unique("CA")
        failures = [make_failure(tenant, conv, n) for n in range(5)]
        for f in failures:
            store.put_delivery_failure(f)
        # The same message failing twice is two records.
        store.put_delivery_failure(failures[0])
        assert len(store.list_delivery_failures(tenant, conv)) == 6
        limited = store.list_delivery_failures(tenant, conv, limit=2)
        assert len(limited) == 2
        assert all(f in failures for f in limited)

    # ------------------------------------------------------------------------- retention

    def test_purge_expired_removes_only_expired(self, store: Store, tenant: str) -> None:
        key = CallKey(tenant, "twilio", unique("CA"))
        other = CallKey(tenant, "twilio", unique("CA"))
        for seq in range(3):
            store.put_message(make_message(key, seq, expires_at=T0 + 1000))
        store.put_message(make_message(key, 3, expires_at=T0 + 10))
        store.put_message(make_message(key, 4, expires_at=T0 + 20))
        store.put_message(make_message(other, 0, expires_at=T0 + 20))

        purged = store.purge_expired(now=T0 + 20)
        assert purged >= 3  # at least ours (shared storage may hold other expired messages)

        # Asked as of long ago, only what survived physically remains.
        assert [m.seq for m in store.list_messages(key, limit=10, now=0)] == [0, 1, 2]
        assert store.list_messages(other, limit=10, now=0) == []
        assert store.last_message_seq(key) == 2
        assert store.last_message_seq(other) is None

    def test_purge_expired_with_nothing_expired(self, store: Store, key: CallKey) -> None:
        store.put_message(make_message(key, 0, expires_at=T0 + 100))
        store.purge_expired(now=T0)
        assert [m.seq for m in store.list_messages(key, limit=10, now=0)] == [0]

    def test_purge_does_not_touch_calls_keys_or_failures(self, store: Store, key: CallKey) -> None:
        api_key = ApiKey(unique("cs"), key.tenant, "sha256:h", T0)
        store.put_api_key(api_key)
        store.create_call(make_call(key))
        failure = make_failure(key.tenant, key.guid, 1)
        store.put_delivery_failure(failure)
        store.put_message(make_message(key, 0, expires_at=T0))

        store.purge_expired(now=T0 + 10**6)

        assert store.get_api_key(api_key.api_id) == api_key
        assert store.get_call(key) == make_call(key)
        assert store.list_delivery_failures(key.tenant, key.guid) == [failure]

    # ------------------------------------------------------------------------- messages by time

    def test_messages_between_selects_tenant_and_half_open_range(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        a = CallKey(tenant, "twilio", unique("CA"))
        b = CallKey(tenant, "siprec", unique("CA"))
        for seq, at in enumerate((T0 - 1, T0, T0 + 10, T0 + 99.5, T0 + 100)):
            store.put_message(make_message(a, seq, created_at=at, expires_at=T0 + 10_000))
        store.put_message(make_message(b, 0, created_at=T0 + 50, expires_at=T0 + 10_000))
        store.put_message(
            make_message(CallKey(other_tenant, "twilio", a.guid), 0, created_at=T0 + 5)
        )

        got = store.list_messages_between(tenant, T0, T0 + 100, now=T0, limit=100)
        assert [(m.key, m.created_at) for m in got] == [
            (a, T0),
            (a, T0 + 10),
            (b, T0 + 50),
            (a, T0 + 99.5),
        ]
        assert got[0] == make_message(a, 1, created_at=T0, expires_at=T0 + 10_000)
        assert (
            store.list_messages_between(unique("tenant-nobody"), 0, T0 * 2, now=T0, limit=9) == []
        )

    def test_messages_between_excludes_expired(self, store: Store, tenant: str) -> None:
        key = CallKey(tenant, "twilio", unique("CA"))
        store.put_message(make_message(key, 0, created_at=T0, expires_at=T0 + 5))
        store.put_message(make_message(key, 1, created_at=T0 + 1, expires_at=T0 + 50))
        got = store.list_messages_between(tenant, T0, T0 + 10, now=T0 + 5, limit=10)
        assert [m.seq for m in got] == [1]

    def test_messages_between_pages_through_ties(self, store: Store, tenant: str) -> None:
        keys = [CallKey(tenant, "twilio", unique("CA")) for _ in range(3)]
        # Several calls' messages share a creation time: paging must neither skip nor repeat.
        for n in range(12):
            store.put_message(
                make_message(keys[n % 3], n, created_at=T0 + n // 4, expires_at=T0 + 1000)
            )
        everything = store.list_messages_between(tenant, T0, T0 + 10, now=T0, limit=100)
        assert len(everything) == 12
        assert [(m.created_at, m.message_id) for m in everything] == sorted(
            (m.created_at, m.message_id) for m in everything
        )
        paged: list[StoredMessage] = []
        after = None
        while True:
            page = store.list_messages_between(tenant, T0, T0 + 10, now=T0, limit=5, after=after)
            assert len(page) <= 5
            if not page:
                break
            paged += page
            after = (page[-1].created_at, page[-1].message_id)
        assert paged == everything

    # ------------------------------------------------------------------------- failures since

    def test_delivery_failures_since(self, store: Store, tenant: str) -> None:
        conv = unique("CA")
        failures = [make_failure(tenant, conv, n) for n in range(5)]  # at T0 + n
        for f in failures:
            store.put_delivery_failure(f)
        assert store.list_delivery_failures(tenant, since=T0 + 3) == failures[3:]
        assert store.list_delivery_failures(tenant, conv, since=T0 + 2, limit=1) == [failures[2]]
        assert store.list_delivery_failures(tenant, since=T0 + 5) == []
        assert store.list_delivery_failures(tenant, since=None) == failures

    # ------------------------------------------------------------------------- webhook configs

    def test_webhook_config_round_trip(self, store: Store, tenant: str) -> None:
        assert store.get_webhook_config(tenant) is None
        config = WebhookConfig(
            tenant=tenant,
            url="https://hooks.example.com/transcripts?x=1",
            auth=WebhookAuth.OAUTH2,
            oauth_token_url="https://auth.example.com/oauth2/token",
            oauth_client_id="client-1",
            oauth_scope="transcripts:write",
            oauth_client_auth="post",
            ca_bundle_pem="-----BEGIN CERTIFICATE-----\nMIIB…\n-----END CERTIFICATE-----\n",
            client_cert_pem="-----BEGIN CERTIFICATE-----\nMIIC…\n-----END CERTIFICATE-----\n",
            timeout_s=2.5,
            retry_attempts=3,
            retry_backoff_s=0.5,
            interim_results=True,
            updated_at=T0,
        )
        store.put_webhook_config(config)
        got = store.get_webhook_config(tenant)
        assert got == config
        assert got is not None and got.auth is WebhookAuth.OAUTH2 and got.interim_results is True

    def test_webhook_config_replace_and_delete_per_tenant(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        first = WebhookConfig(tenant, "https://a.example.com/", interim_results=True, updated_at=T0)
        second = WebhookConfig(
            tenant,
            "https://b.example.com/",
            auth=WebhookAuth.SECRET_TOKEN,
            token_name="X-Token",
            token_in="query",
            updated_at=T0 + 1,
        )
        other = WebhookConfig(other_tenant, "https://other.example.com/", updated_at=T0)
        store.put_webhook_config(first)
        store.put_webhook_config(other)
        store.put_webhook_config(second)
        assert store.get_webhook_config(tenant) == second
        # Replaced as a whole: the interim opt-in goes with the configuration that had it.
        assert store.get_webhook_config(tenant).interim_results is False  # type: ignore[union-attr]
        assert store.get_webhook_config(other_tenant) == other

        assert store.delete_webhook_config(tenant) is True
        assert store.delete_webhook_config(tenant) is False
        assert store.get_webhook_config(tenant) is None
        assert store.get_webhook_config(other_tenant) == other

    # Amazon Connect access ---------------------------------------------------------------------

    def test_connect_access_put_get_replace_delete(self, store: Store, tenant: str) -> None:
        assert store.get_connect_access(tenant) is None
        access = ConnectAccess(
            tenant, "arn:aws:iam::111122223333:role/CallScribeConnectMediaReader", "x-7Hq2", T0
        )
        store.put_connect_access(access)
        assert store.get_connect_access(tenant) == access
        other = unique("tenant")
        assert store.get_connect_access(other) is None

        # One per tenant: a new one replaces it, and "own credentials" has no role.
        own = ConnectAccess(tenant, None, None, T0 + 1)
        store.put_connect_access(own)
        assert store.get_connect_access(tenant) == own

        assert store.delete_connect_access(tenant) is True
        assert store.get_connect_access(tenant) is None
        assert store.delete_connect_access(tenant) is False

    # Custom vocabularies -------------------------------------------------------------------------

    def test_tenant_vocabulary_put_get_replace_delete_per_tenant(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        assert store.get_tenant_vocabulary(tenant) is None
        terms = ("Zorblax Prime", "Acme Cloud", "Müller-Lüdenscheidt", "über-fast", "4G LTE+")
        store.put_tenant_vocabulary(TenantVocabulary(tenant, terms, T0))
        other = TenantVocabulary(other_tenant, ("Globex",), T0)
        store.put_tenant_vocabulary(other)
        # Order and spelling kept exactly: the first term is the most wanted.
        assert store.get_tenant_vocabulary(tenant) == TenantVocabulary(tenant, terms, T0)

        # One per tenant, stored as checked: stripped, a repeat but for case dropped.
        store.put_tenant_vocabulary(
            TenantVocabulary(tenant, ("  Acme Cloud ", "ACME CLOUD", "Zorblax"), T0 + 1)
        )
        assert store.get_tenant_vocabulary(tenant) == TenantVocabulary(
            tenant, ("Acme Cloud", "Zorblax"), T0 + 1
        )
        assert store.get_tenant_vocabulary(other_tenant) == other

        assert store.delete_tenant_vocabulary(tenant) is True
        assert store.get_tenant_vocabulary(tenant) is None
        assert store.delete_tenant_vocabulary(tenant) is False
        assert store.get_tenant_vocabulary(other_tenant) == other

    def test_tenant_vocabulary_at_the_bounds_is_kept_and_over_them_refused(
        self, store: Store, tenant: str
    ) -> None:
        # 50 terms of 8 characters: 50 * 8 + 49 * 2 = 498 characters joined, within 500.
        widest = tuple(f"term{n:04d}" for n in range(50))
        store.put_tenant_vocabulary(TenantVocabulary(tenant, widest, T0))
        assert store.get_tenant_vocabulary(tenant) == TenantVocabulary(tenant, widest, T0)
        refused = {
            "51 different terms; at most 50": (*widest, "one more"),
            "502 characters": (*widest[:49], "term0049xxxx"),
            r"term 2 \('xxxxxxxxxxxxxxxxxxxx…'\) is 51 characters; at most 50": ("a", "x" * 51),
            r"term 1 \('line\\nbreak'\) contains U\+000A": ("line\nbreak",),
            r"term 2 \('tab\\there'\) contains U\+0009": ("ok", "tab\there"),
            "term 1 is empty": ("   ",),
            "at least one term": (),
        }
        for message, terms in refused.items():
            with pytest.raises(ValueError, match=message):
                store.put_tenant_vocabulary(TenantVocabulary(tenant, terms, T0 + 1))
        for bad_tenant in ("", "acme corp", "-acme"):
            with pytest.raises(ValueError, match="tenant must be"):
                store.put_tenant_vocabulary(TenantVocabulary(bad_tenant, ("Acme",), T0))
        # Nothing refused replaced what was there.
        assert store.get_tenant_vocabulary(tenant) == TenantVocabulary(tenant, widest, T0)

    # SIPREC SBC sources --------------------------------------------------------------------------

    @pytest.fixture
    def octets(self) -> bytes:
        """Random bytes for networks of this test's own: the mapping is deployment-wide, and a
        shared table may hold other tests' networks."""
        return uuid.uuid4().bytes

    def test_siprec_sources_put_list_replace_delete(
        self, store: Store, tenant: str, other_tenant: str, octets: bytes
    ) -> None:
        a, b, c, d, e = octets[:5]
        network = f"10.{a}.{b}.0/24"
        host = f"10.{c}.{d}.{e}"
        hexed = octets.hex()
        # Groups that start with 1 have no leading zeros to drop.
        v6 = f"fd{hexed[0:2]}:1{hexed[2:5]}:1{hexed[5:8]}:1{hexed[8:11]}"
        assert network not in store.siprec_sources()

        # Stored normalised: host bits dropped, a bare address a /32, IPv6 compressed.
        store.put_siprec_source(f"10.{a}.{b}.77/24", tenant)
        store.put_siprec_source(host, other_tenant)
        store.put_siprec_source(f"{v6.upper()}:0:0:0:9/64", tenant)
        sources = store.siprec_sources()
        assert sources[network] == tenant
        assert sources[f"{host}/32"] == other_tenant
        assert sources[f"{v6}::/64"] == tenant

        # One mapping per network, however it is written: a new one replaces it.
        store.put_siprec_source(f" 10.{a}.{b}.0/255.255.255.0 ", other_tenant)
        sources = store.siprec_sources()
        assert sources[network] == other_tenant
        assert [n for n in sources if n.startswith(f"10.{a}.{b}.")] == [network]

        assert store.delete_siprec_source(f"10.{a}.{b}.1/24") is True
        assert store.delete_siprec_source(network) is False
        assert store.delete_siprec_source(host) is True
        sources = store.siprec_sources()
        assert network not in sources and f"{host}/32" not in sources
        assert sources[f"{v6}::/64"] == tenant
        assert store.delete_siprec_source(f"{v6}::/64") is True

    def test_siprec_source_with_a_bad_network_or_tenant_is_refused(
        self, store: Store, tenant: str, octets: bytes
    ) -> None:
        network = f"10.{octets[0]}.{octets[1]}.0/24"
        for bad in ("10.0.0.300", "192.0.2.0/33", "sbc.example.com", ""):
            named = re.escape(f"{bad!r} is not an IP address or network")
            with pytest.raises(ValueError, match=named):
                store.put_siprec_source(bad, tenant)
            with pytest.raises(ValueError, match=named):
                store.delete_siprec_source(bad)
        for bad_tenant in ("", "acme corp", "-acme", "a" * 129):
            with pytest.raises(ValueError, match="tenant must be"):
                store.put_siprec_source(network, bad_tenant)
        assert network not in store.siprec_sources()

    # Live event stream viewers -------------------------------------------------------------------

    def test_live_connections_put_list_by_tenant_and_delete(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        everything, one_call, elsewhere = unique("conn"), unique("conn"), unique("conn")
        store.put_live_connection(everything, tenant, None, T0 + 7200)
        store.put_live_connection(one_call, tenant, "CA1", T0 + 60.5)
        store.put_live_connection(elsewhere, other_tenant, None, T0 + 7200)
        assert sorted(store.live_connections(tenant, T0), key=lambda c: c.connection_id) == sorted(
            [
                LiveConnection(everything, tenant, None, T0 + 7200),
                LiveConnection(one_call, tenant, "CA1", T0 + 60.5),
            ],
            key=lambda c: c.connection_id,
        )
        assert store.live_connections(other_tenant, T0) == [
            LiveConnection(elsewhere, other_tenant, None, T0 + 7200)
        ]

        assert store.delete_live_connection(one_call) is True
        assert store.delete_live_connection(one_call) is False
        assert [c.connection_id for c in store.live_connections(tenant, T0)] == [everything]
        assert store.live_connections(other_tenant, T0) != []

    def test_live_connection_keeps_its_namespace_filter(self, store: Store, tenant: str) -> None:
        one_call, one_namespace = unique("conn"), unique("conn")
        store.put_live_connection(one_call, tenant, "CA1", T0 + 60, namespace="siprec")
        store.put_live_connection(one_namespace, tenant, None, T0 + 60, namespace="twilio")
        assert sorted(store.live_connections(tenant, T0), key=lambda c: c.connection_id) == sorted(
            [
                LiveConnection(one_call, tenant, "CA1", T0 + 60, namespace="siprec"),
                LiveConnection(one_namespace, tenant, None, T0 + 60, namespace="twilio"),
            ],
            key=lambda c: c.connection_id,
        )

    def test_live_connection_put_again_replaces_it(self, store: Store, tenant: str) -> None:
        connection = unique("conn")
        store.put_live_connection(connection, tenant, "CA1", T0 + 10)
        store.put_live_connection(connection, tenant, None, T0 + 20)
        assert store.live_connections(tenant, T0) == [
            LiveConnection(connection, tenant, None, T0 + 20)
        ]

    def test_expired_live_connections_are_not_listed(self, store: Store, tenant: str) -> None:
        stale, live = unique("conn"), unique("conn")
        store.put_live_connection(stale, tenant, None, T0)
        store.put_live_connection(live, tenant, None, T0 + 1)
        assert [c.connection_id for c in store.live_connections(tenant, T0)] == [live]
        assert store.live_connections(tenant, T0 + 1) == []

    def test_unknown_live_connection_delete_is_false(self, store: Store) -> None:
        assert store.delete_live_connection(unique("conn")) is False
