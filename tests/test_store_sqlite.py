"""The SQLite ``Store`` adapter: the shared contract, plus what is particular to SQLite."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from callscribe.store.base import ApiKey, CallKey, CallStatus
from callscribe.store.sqlite import SqliteStore
from tests.store_contract import T0, StoreContract, make_call, make_failure, make_message


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        s = SqliteStore(tmp_path / "store.sqlite3")
        yield s
        s.close()


# --------------------------------------------------------------------------- SQLite specifics


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "callscribe.sqlite3"


def test_creates_parent_directories_and_file(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        assert db_path.is_file()
    finally:
        store.close()


def test_wal_journal_mode(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        store.put_api_key(ApiKey("cs-1", "acme", "sha256:h", T0))
        # WAL is a property of the database file: a fresh, independent connection sees it.
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert db_path.with_name(db_path.name + "-wal").exists()
    finally:
        store.close()


def test_data_survives_reopening(db_path: Path) -> None:
    key = CallKey("acme", "twilio", "CA1")
    api_key = ApiKey("cs-1", "acme", "sha256:h", T0)
    call = make_call(key, status=CallStatus.STREAMING, params={"language": "en-US"})
    failure = make_failure("acme", "CA1", 1)

    store = SqliteStore(db_path)
    store.put_api_key(api_key)
    store.create_call(call)
    for seq in range(3):
        store.put_message(make_message(key, seq))
    store.put_delivery_failure(failure)
    store.revoke_api_key("cs-1", T0 + 1)
    store.close()

    reopened = SqliteStore(db_path)  # CREATE TABLE IF NOT EXISTS must not wipe anything
    try:
        got_key = reopened.get_api_key("cs-1")
        assert got_key is not None and got_key.revoked_at == T0 + 1
        assert reopened.get_call(key) == call
        assert reopened.list_messages(key, limit=10, now=T0) == [
            make_message(key, seq) for seq in range(3)
        ]
        assert reopened.last_message_seq(key) == 2
        assert reopened.list_delivery_failures("acme") == [failure]
        # ... and it is still writable.
        assert reopened.create_call(make_call(CallKey("acme", "twilio", "CA2")))
    finally:
        reopened.close()


def test_two_instances_on_one_file_see_each_other(db_path: Path) -> None:
    writer, reader = SqliteStore(db_path), SqliteStore(db_path)
    try:
        key = CallKey("acme", "twilio", "CA1")
        assert writer.create_call(make_call(key))
        assert reader.create_call(make_call(key)) is False
        writer.put_message(make_message(key, 0))
        assert reader.last_message_seq(key) == 0
    finally:
        writer.close()
        reader.close()


def test_concurrent_put_message_from_threads_loses_nothing(db_path: Path) -> None:
    store = SqliteStore(db_path)
    threads_n, per_thread = 8, 50
    shared = CallKey("acme", "twilio", "CA-shared")
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        try:
            own = CallKey("acme", "twilio", f"CA-{t}")
            start.wait()
            for i in range(per_thread):
                store.put_message(make_message(own, i))
                # Interleaved writes to one call from every thread (distinct seqs).
                store.put_message(make_message(shared, t * per_thread + i))
                store.put_delivery_failure(make_failure("acme", f"CA-{t}", i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []

        everything = store.list_messages(shared, limit=10_000, now=T0)
        assert [m.seq for m in everything] == list(range(threads_n * per_thread))
        for t in range(threads_n):
            own = CallKey("acme", "twilio", f"CA-{t}")
            assert [m.seq for m in store.list_messages(own, limit=1000, now=T0)] == list(
                range(per_thread)
            )
        assert len(store.list_delivery_failures("acme", limit=10_000)) == threads_n * per_thread
    finally:
        store.close()


def test_concurrent_lock_acquisition_has_one_winner(db_path: Path) -> None:
    store = SqliteStore(db_path)
    key = CallKey("acme", "twilio", "CA1")
    threads_n = 8
    results: dict[int, bool] = {}
    start = threading.Barrier(threads_n)

    def contend(t: int) -> None:
        start.wait()
        results[t] = store.acquire_call_lock(key, f"holder-{t}", now=T0, ttl_s=30)

    threads = [threading.Thread(target=contend, args=(t,)) for t in range(threads_n)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == threads_n
        assert sum(results.values()) == 1
    finally:
        store.close()


def test_failed_transaction_rolls_back(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        key = CallKey("acme", "twilio", "CA1")
        with pytest.raises(TypeError):
            # A body that is not JSON fails inside the transaction ...
            store.put_message(make_message(key, 0, body={"bad": object()}))
        # ... and leaves the connection usable, with nothing half-written.
        assert store.last_message_seq(key) is None
        store.put_message(make_message(key, 1))
        assert store.last_message_seq(key) == 1
    finally:
        store.close()


def test_store_files_are_owner_only_whatever_the_umask(db_path: Path) -> None:
    """The new folders 0700; the database and its WAL files 0600 (SQLite gives the WAL files
    the database file's mode)."""
    previous = os.umask(0)
    try:
        store = SqliteStore(db_path)
        store.put_api_key(ApiKey("cs-1", "acme", "sha256:h", T0))
        files = [
            db_path,
            db_path.with_name(db_path.name + "-wal"),
            db_path.with_name(db_path.name + "-shm"),
        ]
        assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
        assert db_path.parent.stat().st_mode & 0o777 == 0o700
        assert db_path.parent.parent.stat().st_mode & 0o777 == 0o700
        store.close()
    finally:
        os.umask(previous)


def test_a_database_an_older_version_left_readable_is_tightened(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE old (x)")
    db_path.chmod(0o644)
    store = SqliteStore(db_path)
    try:
        store.put_api_key(ApiKey("cs-1", "acme", "sha256:h", T0))
        assert db_path.stat().st_mode & 0o777 == 0o600
        assert db_path.with_name(db_path.name + "-wal").stat().st_mode & 0o777 == 0o600
    finally:
        store.close()


def test_a_live_connections_table_without_namespaces_gets_the_column(db_path: Path) -> None:
    """A database made before viewers could filter by namespace: opened, it takes them."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(db_path)
    old.execute(
        "CREATE TABLE live_connections (connection_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
        "guid TEXT, expires_at REAL NOT NULL)"
    )
    old.execute("INSERT INTO live_connections VALUES ('before', 'acme', NULL, ?)", (T0 + 60,))
    old.commit()
    old.close()
    store = SqliteStore(db_path)
    store.put_live_connection("after", "acme", None, T0 + 60, namespace="siprec")
    by_id = {c.connection_id: c for c in store.live_connections("acme", T0)}
    assert by_id["before"].namespace is None and by_id["after"].namespace == "siprec"
    store.close()
    SqliteStore(db_path).close()  # opened again: the column is there already
