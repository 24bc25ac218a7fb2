"""API keys, stream tokens (``callscribe/auth.py``) and file secrets (``callscribe/secrets.py``)."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from callscribe.auth import (
    TOKEN_SALT,
    AuthError,
    IssuedKey,
    StreamGrant,
    StreamTokens,
    authenticate,
    create_api_key,
    hash_secret,
)
from callscribe.secrets import TOKEN_SIGNING_KEY, FileSecrets, new_signing_key
from callscribe.store.sqlite import SqliteStore

SIGNING_KEY = "test-signing-key-" + "x" * 40


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "auth.sqlite3"


@pytest.fixture
def store(db_file: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db_file)
    yield s
    s.close()


@pytest.fixture
def tokens() -> StreamTokens:
    return StreamTokens(SIGNING_KEY, ttl_s=300)


def _id_secret(issued: IssuedKey) -> tuple[str, str]:
    return issued.api_id, issued.api_secret


# --------------------------------------------------------------------------- API keys


def test_create_api_key_stores_only_a_hash(store: SqliteStore, db_file: Path) -> None:
    issued = create_api_key(store, "acme")
    assert issued.tenant == "acme"
    assert issued.api_id.startswith("cs-")
    assert len(issued.api_secret) >= 40  # 32 random bytes, URL-safe base64

    stored = store.get_api_key(issued.api_id)
    assert stored is not None
    assert stored.tenant == "acme" and stored.active
    assert stored.secret_hash == hash_secret(issued.api_secret)
    assert issued.api_secret not in stored.secret_hash
    assert stored.created_at == pytest.approx(time.time(), abs=60)

    def all_bytes() -> bytes:  # the database file with its WAL and shared-memory files
        files = [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
        assert db_file in files
        return b"".join(p.read_bytes() for p in files)

    secret = issued.api_secret.encode()
    for blobs in (all_bytes(), (store.close(), all_bytes())[1]):  # open, then checkpointed
        assert issued.api_id.encode() in blobs  # the check below looks at the right bytes
        assert hash_secret(issued.api_secret).encode() in blobs
        assert secret not in blobs


def test_each_key_is_unique(store: SqliteStore) -> None:
    a, b = create_api_key(store, "acme"), create_api_key(store, "acme")
    assert a.api_id != b.api_id and a.api_secret != b.api_secret
    assert {k.api_id for k in store.list_api_keys("acme")} == {a.api_id, b.api_id}


def test_hash_secret_is_sha256_and_deterministic() -> None:
    h = hash_secret("s3cret")
    assert h == hash_secret("s3cret") != hash_secret("s3cret ")
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64


def test_authenticate_accepts_the_right_secret(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    key = authenticate(store, issued.api_id, issued.api_secret)
    assert key.api_id == issued.api_id and key.tenant == "acme"


def test_authenticate_rejects_wrong_secret(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    with pytest.raises(AuthError, match="invalid asapp-api-id or asapp-api-secret"):
        authenticate(store, issued.api_id, issued.api_secret + "x")


def test_authenticate_rejects_another_keys_secret(store: SqliteStore) -> None:
    a, b = create_api_key(store, "acme"), create_api_key(store, "globex")
    with pytest.raises(AuthError, match="invalid"):
        authenticate(store, a.api_id, b.api_secret)


def test_authenticate_rejects_unknown_id(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    with pytest.raises(AuthError, match="invalid asapp-api-id or asapp-api-secret"):
        authenticate(store, "cs-doesnotexist", issued.api_secret)


@pytest.mark.parametrize(
    ("api_id", "api_secret"),
    [(None, "secret"), ("cs-1", None), ("", "secret"), ("cs-1", ""), (None, None)],
)
def test_authenticate_rejects_missing_header(
    store: SqliteStore, api_id: str | None, api_secret: str | None
) -> None:
    with pytest.raises(AuthError, match="missing asapp-api-id or asapp-api-secret"):
        authenticate(store, api_id, api_secret)


def test_authenticate_rejects_revoked_key(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    assert store.revoke_api_key(issued.api_id, time.time())
    with pytest.raises(AuthError, match="revoked"):
        authenticate(store, issued.api_id, issued.api_secret)


def test_revoked_key_with_wrong_secret_does_not_reveal_revocation(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    store.revoke_api_key(issued.api_id, time.time())
    with pytest.raises(AuthError, match="invalid") as excinfo:
        authenticate(store, issued.api_id, "wrong")
    assert "revoked" not in str(excinfo.value)


@pytest.mark.parametrize(
    "tenant",
    [
        "",
        "-",
        "_-_",
        "a b",
        "acme/evil",
        "acme.com",
        "a" * 129,
        "x;drop",
        "tab\t",
        "a\nb",
        "ténant",
        "租户",
        "²",
    ],
)
def test_invalid_tenant_names_are_rejected(store: SqliteStore, tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        create_api_key(store, tenant)
    assert store.list_api_keys() == []


@pytest.mark.parametrize("tenant", ["acme", "ACME-01", "a_b-c", "a" * 128, "7"])
def test_valid_tenant_names_are_accepted(store: SqliteStore, tenant: str) -> None:
    assert create_api_key(store, tenant).tenant == tenant


# --------------------------------------------------------------------------- stream tokens


def test_stream_token_issue_then_verify(store: SqliteStore, tokens: StreamTokens) -> None:
    issued = create_api_key(store, "acme")
    key = authenticate(store, issued.api_id, issued.api_secret)
    token = tokens.issue(key)
    assert isinstance(token, str) and issued.api_secret not in token
    assert tokens.verify(token, store) == StreamGrant(tenant="acme", api_id=issued.api_id)


def test_stream_token_verifies_with_another_instance_sharing_the_key(
    store: SqliteStore, tokens: StreamTokens
) -> None:
    key = authenticate(store, *_id_secret(create_api_key(store, "acme")))
    token = tokens.issue(key)
    # Another process (gateway vs API) with the same signing key accepts it.
    grant = StreamTokens(SIGNING_KEY, ttl_s=300).verify(token, store)
    assert grant.tenant == "acme" and grant.api_id == key.api_id


@pytest.mark.parametrize("token", [None, ""])
def test_missing_stream_token(store: SqliteStore, tokens: StreamTokens, token: str | None) -> None:
    with pytest.raises(AuthError, match="missing token"):
        tokens.verify(token, store)


def test_expired_stream_token_via_patched_clock(store: SqliteStore) -> None:
    key = store.get_api_key(create_api_key(store, "acme").api_id)
    assert key is not None
    tokens = StreamTokens(SIGNING_KEY, ttl_s=60)
    issued_at = time.time() - 3600
    # itsdangerous stamps tokens with time.time() (its get_timestamp()).
    with mock.patch("itsdangerous.timed.time.time", return_value=issued_at):
        old_token = tokens.issue(key)
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(old_token, store)


def test_token_just_inside_ttl_is_accepted_and_just_after_is_expired(store: SqliteStore) -> None:
    key = store.get_api_key(create_api_key(store, "acme").api_id)
    assert key is not None
    tokens = StreamTokens(SIGNING_KEY, ttl_s=60)
    now = time.time()
    with mock.patch("itsdangerous.timed.time.time", return_value=now):
        token = tokens.issue(key)
    with mock.patch("itsdangerous.timed.time.time", return_value=now + 55):
        assert tokens.verify(token, store).api_id == key.api_id
    with (
        mock.patch("itsdangerous.timed.time.time", return_value=now + 65),
        pytest.raises(AuthError, match="expired"),
    ):
        tokens.verify(token, store)


def test_expired_stream_token_made_by_serializer_in_the_past(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:  # a clock running 301 s behind
            return int(time.time()) - 301

    past = URLSafeTimedSerializer(SIGNING_KEY, salt=TOKEN_SALT, signer=PastSigner)
    token = past.dumps({"t": "acme", "k": issued.api_id})
    with pytest.raises(AuthError, match="expired"):
        StreamTokens(SIGNING_KEY, ttl_s=300).verify(token, store)
    # The same payload stamped now is fine: only the age made it fail.
    fresh = URLSafeTimedSerializer(SIGNING_KEY, salt=TOKEN_SALT).dumps(
        {"t": "acme", "k": issued.api_id}
    )
    assert StreamTokens(SIGNING_KEY, ttl_s=300).verify(fresh, store).tenant == "acme"


def test_token_signed_with_another_key_is_invalid(store: SqliteStore) -> None:
    key = store.get_api_key(create_api_key(store, "acme").api_id)
    assert key is not None
    forged = StreamTokens("some-other-signing-key", ttl_s=300).issue(key)
    with pytest.raises(AuthError, match="invalid"):
        StreamTokens(SIGNING_KEY, ttl_s=300).verify(forged, store)


def test_token_with_another_salt_is_invalid(store: SqliteStore) -> None:
    issued = create_api_key(store, "acme")
    other_purpose = URLSafeTimedSerializer(SIGNING_KEY, salt="something-else")
    token = other_purpose.dumps({"t": "acme", "k": issued.api_id})
    with pytest.raises(AuthError, match="invalid"):
        StreamTokens(SIGNING_KEY, ttl_s=300).verify(token, store)


def test_tampered_token_is_invalid(store: SqliteStore, tokens: StreamTokens) -> None:
    acme = store.get_api_key(create_api_key(store, "acme").api_id)
    globex = store.get_api_key(create_api_key(store, "globex").api_id)
    assert acme is not None and globex is not None
    token = tokens.issue(acme)
    payload, timestamp, signature = token.rsplit(".", 2)

    # Swap in another tenant's payload, keeping acme's signature.
    other_payload = tokens.issue(globex).rsplit(".", 2)[0]
    candidates = [
        f"{other_payload}.{timestamp}.{signature}",
        f"{payload}.{timestamp}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        token[:-1],
        "garbage",
        token + ".extra",
    ]
    for tampered in candidates:
        with pytest.raises(AuthError, match="invalid"):
            tokens.verify(tampered, store)


def test_token_of_revoked_key_is_rejected(store: SqliteStore, tokens: StreamTokens) -> None:
    issued = create_api_key(store, "acme")
    key = authenticate(store, issued.api_id, issued.api_secret)
    token = tokens.issue(key)
    assert tokens.verify(token, store).tenant == "acme"
    store.revoke_api_key(issued.api_id, time.time())
    with pytest.raises(AuthError, match="revoked"):
        tokens.verify(token, store)


def test_token_of_deleted_key_is_rejected(tmp_path: Path, tokens: StreamTokens) -> None:
    first = SqliteStore(tmp_path / "a.sqlite3")
    other = SqliteStore(tmp_path / "b.sqlite3")  # a store that never knew the key
    try:
        key = first.get_api_key(create_api_key(first, "acme").api_id)
        assert key is not None
        with pytest.raises(AuthError, match="no longer exists"):
            tokens.verify(tokens.issue(key), other)
    finally:
        first.close()
        other.close()


def test_token_bound_to_the_keys_tenant(store: SqliteStore, tokens: StreamTokens) -> None:
    issued = create_api_key(store, "acme")
    # Correctly signed, but claiming a tenant the key does not belong to.
    signer = URLSafeTimedSerializer(SIGNING_KEY, salt=TOKEN_SALT)
    token = signer.dumps({"t": "globex", "k": issued.api_id})
    with pytest.raises(AuthError, match="invalid"):
        tokens.verify(token, store)


# --------------------------------------------------------------------------- file secrets


def test_file_secrets_creates_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secrets.json"
    secrets = FileSecrets(path)
    assert secrets.get(TOKEN_SIGNING_KEY) is None
    assert not path.exists()  # reading creates nothing

    value = secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {TOKEN_SIGNING_KEY: value}
    assert len(value) >= 48
    assert not path.with_suffix(".tmp").exists()


def test_file_secrets_mode_is_0600_despite_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        path = tmp_path / "secrets.json"
        FileSecrets(path).get_or_create("x", lambda: "v")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_file_secrets_value_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    calls: list[int] = []

    def generate() -> str:
        calls.append(1)
        return new_signing_key()

    first = FileSecrets(path)
    value = first.get_or_create(TOKEN_SIGNING_KEY, generate)
    assert first.get_or_create(TOKEN_SIGNING_KEY, generate) == value
    assert first.get(TOKEN_SIGNING_KEY) == value
    # A new instance (a restarted process) reads the same value back.
    second = FileSecrets(path)
    assert second.get_or_create(TOKEN_SIGNING_KEY, generate) == value
    assert second.get(TOKEN_SIGNING_KEY) == value
    assert calls == [1]


def test_file_secrets_keeps_other_names(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    secrets = FileSecrets(path)
    a = secrets.get_or_create("a", lambda: "value-a")
    b = FileSecrets(path).get_or_create("b", lambda: "value-b")
    assert (a, b) == ("value-a", "value-b")
    assert json.loads(path.read_text()) == {"a": "value-a", "b": "value-b"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_file_secrets_concurrent_get_or_create_agrees(tmp_path: Path) -> None:
    secrets = FileSecrets(tmp_path / "secrets.json")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(secrets.get_or_create(TOKEN_SIGNING_KEY, new_signing_key))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8 and len(set(results)) == 1


def test_new_signing_keys_are_random() -> None:
    keys = {new_signing_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) >= 64 for k in keys)  # 48 bytes → 64 URL-safe characters


def test_signing_key_from_file_secrets_drives_stream_tokens(
    tmp_path: Path, store: SqliteStore
) -> None:
    path = tmp_path / "secrets.json"
    key = store.get_api_key(create_api_key(store, "acme").api_id)
    assert key is not None

    def tokens_of_a_new_process() -> StreamTokens:
        signing_key = FileSecrets(path).get_or_create(TOKEN_SIGNING_KEY, new_signing_key)
        return StreamTokens(signing_key, ttl_s=300)

    issuer, verifier = tokens_of_a_new_process(), tokens_of_a_new_process()
    assert verifier.verify(issuer.issue(key), store).tenant == "acme"
