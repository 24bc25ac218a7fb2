"""SQLite adapter of the ``Store`` port (local mode). One file, WAL journal, a connection per
thread (sqlite3 connections must not be shared between threads)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from callscribe.private_files import make_private, private_dir, private_file_descriptor
from callscribe.store.base import (
    ApiKey,
    CallKey,
    CallRecord,
    CallStatus,
    ConnectAccess,
    DeliveryFailure,
    LiveConnection,
    StoredMessage,
    TenantVocabulary,
    WebhookConfig,
    siprec_source,
    siprec_source_network,
    tenant_vocabulary,
    webhook_config_from_json,
    webhook_config_to_json,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    api_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS calls (
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    guid TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL,
    params TEXT NOT NULL,
    PRIMARY KEY (tenant, namespace, guid)
);
CREATE INDEX IF NOT EXISTS calls_by_guid ON calls (tenant, guid);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls (status);
CREATE TABLE IF NOT EXISTS call_locks (
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    guid TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, namespace, guid)
);
CREATE TABLE IF NOT EXISTS messages (
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    guid TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, namespace, guid, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
CREATE INDEX IF NOT EXISTS messages_by_tenant_time ON messages (tenant, created_at, message_id);
CREATE TABLE IF NOT EXISTS delivery_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    status_code INTEGER,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_tenant ON delivery_failures (tenant, conversation_id);
CREATE TABLE IF NOT EXISTS webhook_configs (
    tenant TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS connect_access (
    tenant TEXT PRIMARY KEY,
    role_arn TEXT,
    external_id TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tenant_vocabularies (
    tenant TEXT PRIMARY KEY,
    terms TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS siprec_sources (
    network TEXT PRIMARY KEY,
    tenant TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS live_connections (
    connection_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    guid TEXT,
    expires_at REAL NOT NULL,
    namespace TEXT
);
CREATE INDEX IF NOT EXISTS live_connections_by_tenant ON live_connections (tenant);
"""


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # Transcripts: the owner's only. SQLite creates the -wal and -shm files with the
        # database file's mode, so the database file is made (or set) 0600 before SQLite opens
        # it; WAL files an older version left are set too.
        private_dir(self.path.parent, tighten=False)
        os.close(private_file_descriptor(self.path, os.O_RDWR))
        for suffix in ("-wal", "-shm", "-journal"):
            make_private(self.path.with_name(self.path.name + suffix))
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._db().executescript(SCHEMA)  # executescript manages its own transaction
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a table was first made (CREATE TABLE IF NOT EXISTS leaves an
        existing table as it was)."""
        db = self._db()
        columns = {row["name"] for row in db.execute("PRAGMA table_info(live_connections)")}
        if "namespace" not in columns:
            db.execute("ALTER TABLE live_connections ADD COLUMN namespace TEXT")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    class _Transaction:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> _Transaction:
        return self._Transaction(self._db())

    # API keys
    def put_api_key(self, key: ApiKey) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?)",
                (key.api_id, key.tenant, key.secret_hash, key.created_at, key.revoked_at),
            )

    def get_api_key(self, api_id: str) -> ApiKey | None:
        row = self._db().execute("SELECT * FROM api_keys WHERE api_id = ?", (api_id,)).fetchone()
        return ApiKey(**dict(row)) if row else None

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        if tenant is None:
            rows = self._db().execute("SELECT * FROM api_keys ORDER BY created_at")
        else:
            rows = self._db().execute(
                "SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at", (tenant,)
            )
        return [ApiKey(**dict(row)) for row in rows]

    def revoke_api_key(self, api_id: str, at: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE api_id = ? AND revoked_at IS NULL",
                (at, api_id),
            )
            return cursor.rowcount == 1

    # calls
    @staticmethod
    def _call(row: sqlite3.Row) -> CallRecord:
        return CallRecord(
            key=CallKey(row["tenant"], row["namespace"], row["guid"]),
            status=CallStatus(row["status"]),
            owner=row["owner"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            completed_at=row["completed_at"],
            params=json.loads(row["params"]),
        )

    def create_call(self, call: CallRecord) -> bool:
        k = call.key
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    k.tenant,
                    k.namespace,
                    k.guid,
                    call.status.value,
                    call.owner,
                    call.created_at,
                    call.updated_at,
                    call.completed_at,
                    json.dumps(call.params),
                ),
            )
            return cursor.rowcount == 1

    def get_call(self, key: CallKey) -> CallRecord | None:
        row = (
            self._db()
            .execute(
                "SELECT * FROM calls WHERE tenant = ? AND namespace = ? AND guid = ?",
                (key.tenant, key.namespace, key.guid),
            )
            .fetchone()
        )
        return self._call(row) if row else None

    def find_calls(self, tenant: str, guid: str) -> list[CallRecord]:
        rows = self._db().execute(
            "SELECT * FROM calls WHERE tenant = ? AND guid = ? ORDER BY created_at", (tenant, guid)
        )
        return [self._call(row) for row in rows]

    def update_call(
        self,
        key: CallKey,
        *,
        status: CallStatus | None = None,
        owner: str | None = None,
        params: dict[str, Any] | None = None,
        completed_at: float | None = None,
        updated_at: float,
    ) -> None:
        assignments = ["updated_at = ?"]
        values: list[Any] = [updated_at]
        for column, value in (
            ("status", status.value if status else None),
            ("owner", owner),
            ("params", json.dumps(params) if params is not None else None),
            ("completed_at", completed_at),
        ):
            if value is not None:
                assignments.append(f"{column} = ?")
                values.append(value)
        with self._tx() as db:
            db.execute(
                f"UPDATE calls SET {', '.join(assignments)} "
                "WHERE tenant = ? AND namespace = ? AND guid = ?",
                (*values, key.tenant, key.namespace, key.guid),
            )

    def list_incomplete_calls(self) -> list[CallRecord]:
        rows = self._db().execute(
            "SELECT * FROM calls WHERE status != ? ORDER BY created_at",
            (CallStatus.COMPLETED.value,),
        )
        return [self._call(row) for row in rows]

    def complete_abandoned_call(self, key: CallKey, owner: str, completed_at: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE calls SET status = ?, completed_at = ?, updated_at = ? "
                "WHERE tenant = ? AND namespace = ? AND guid = ? AND owner = ? AND status != ?",
                (
                    CallStatus.COMPLETED.value,
                    completed_at,
                    completed_at,
                    key.tenant,
                    key.namespace,
                    key.guid,
                    owner,
                    CallStatus.COMPLETED.value,
                ),
            )
            return cursor.rowcount == 1

    def acquire_call_lock(self, key: CallKey, holder: str, now: float, ttl_s: float) -> bool:
        with self._tx() as db:
            db.execute(
                "DELETE FROM call_locks WHERE tenant = ? AND namespace = ? AND guid = ? "
                "AND expires_at <= ?",
                (key.tenant, key.namespace, key.guid, now),
            )
            cursor = db.execute(
                "INSERT OR IGNORE INTO call_locks VALUES (?, ?, ?, ?, ?)",
                (key.tenant, key.namespace, key.guid, holder, now + ttl_s),
            )
            return cursor.rowcount == 1

    def release_call_lock(self, key: CallKey, holder: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM call_locks WHERE tenant = ? AND namespace = ? AND guid = ? "
                "AND holder = ?",
                (key.tenant, key.namespace, key.guid, holder),
            )

    # messages
    def put_message(self, message: StoredMessage) -> None:
        k = message.key
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    k.tenant,
                    k.namespace,
                    k.guid,
                    message.seq,
                    message.message_id,
                    json.dumps(message.body),
                    message.created_at,
                    message.expires_at,
                ),
            )

    def list_messages(self, key: CallKey, limit: int, now: float) -> list[StoredMessage]:
        rows = self._db().execute(
            "SELECT * FROM messages WHERE tenant = ? AND namespace = ? AND guid = ? "
            "AND expires_at > ? ORDER BY seq LIMIT ?",
            (key.tenant, key.namespace, key.guid, now, limit),
        )
        return [self._message(row) for row in rows]

    @staticmethod
    def _message(row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(
            key=CallKey(row["tenant"], row["namespace"], row["guid"]),
            seq=row["seq"],
            message_id=row["message_id"],
            body=json.loads(row["body"]),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )

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
        query = (
            "SELECT * FROM messages WHERE tenant = ? AND created_at >= ? AND created_at < ? "
            "AND expires_at > ?"
        )
        args: list[Any] = [tenant, start, end, now]
        if after is not None:
            query += " AND (created_at > ? OR (created_at = ? AND message_id > ?))"
            args += [after[0], after[0], after[1]]
        query += " ORDER BY created_at, message_id LIMIT ?"
        rows = self._db().execute(query, (*args, limit))
        return [self._message(row) for row in rows]

    def last_message_seq(self, key: CallKey) -> int | None:
        row = (
            self._db()
            .execute(
                "SELECT MAX(seq) FROM messages WHERE tenant = ? AND namespace = ? AND guid = ?",
                (key.tenant, key.namespace, key.guid),
            )
            .fetchone()
        )
        return row[0]

    def set_message_expiry(self, key: CallKey, expires_at: float) -> int:
        with self._tx() as db:
            return db.execute(
                "UPDATE messages SET expires_at = ? WHERE tenant = ? AND namespace = ? AND guid = ?",
                (expires_at, key.tenant, key.namespace, key.guid),
            ).rowcount

    # delivery failures
    def put_delivery_failure(self, failure: DeliveryFailure) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO delivery_failures "
                "(tenant, conversation_id, message_id, reason, status_code, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    failure.tenant,
                    failure.conversation_id,
                    failure.message_id,
                    failure.reason,
                    failure.status_code,
                    failure.at,
                ),
            )

    def list_delivery_failures(
        self,
        tenant: str,
        conversation_id: str | None = None,
        limit: int = 1000,
        since: float | None = None,
    ) -> list[DeliveryFailure]:
        query = "SELECT * FROM delivery_failures WHERE tenant = ?"
        args: list[Any] = [tenant]
        if conversation_id is not None:
            query += " AND conversation_id = ?"
            args.append(conversation_id)
        if since is not None:
            query += " AND at >= ?"
            args.append(since)
        rows = self._db().execute(query + " ORDER BY id LIMIT ?", (*args, limit))
        return [
            DeliveryFailure(
                tenant=row["tenant"],
                conversation_id=row["conversation_id"],
                message_id=row["message_id"],
                reason=row["reason"],
                status_code=row["status_code"],
                at=row["at"],
            )
            for row in rows
        ]

    # webhook configurations
    def put_webhook_config(self, config: WebhookConfig) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO webhook_configs VALUES (?, ?)",
                (config.tenant, webhook_config_to_json(config)),
            )

    def get_webhook_config(self, tenant: str) -> WebhookConfig | None:
        row = (
            self._db()
            .execute("SELECT config FROM webhook_configs WHERE tenant = ?", (tenant,))
            .fetchone()
        )
        return webhook_config_from_json(row["config"]) if row else None

    def delete_webhook_config(self, tenant: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("DELETE FROM webhook_configs WHERE tenant = ?", (tenant,)).rowcount == 1
            )

    # Amazon Connect access
    def put_connect_access(self, access: ConnectAccess) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO connect_access VALUES (?, ?, ?, ?)",
                (access.tenant, access.role_arn, access.external_id, access.updated_at),
            )

    def get_connect_access(self, tenant: str) -> ConnectAccess | None:
        row = (
            self._db()
            .execute("SELECT * FROM connect_access WHERE tenant = ?", (tenant,))
            .fetchone()
        )
        return ConnectAccess(**dict(row)) if row else None

    def delete_connect_access(self, tenant: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("DELETE FROM connect_access WHERE tenant = ?", (tenant,))
            return cursor.rowcount == 1

    # custom vocabularies
    def put_tenant_vocabulary(self, vocabulary: TenantVocabulary) -> None:
        vocabulary = tenant_vocabulary(vocabulary)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tenant_vocabularies VALUES (?, ?, ?)",
                (vocabulary.tenant, json.dumps(vocabulary.terms), vocabulary.updated_at),
            )

    def get_tenant_vocabulary(self, tenant: str) -> TenantVocabulary | None:
        row = (
            self._db()
            .execute("SELECT * FROM tenant_vocabularies WHERE tenant = ?", (tenant,))
            .fetchone()
        )
        if row is None:
            return None
        return TenantVocabulary(row["tenant"], tuple(json.loads(row["terms"])), row["updated_at"])

    def delete_tenant_vocabulary(self, tenant: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("DELETE FROM tenant_vocabularies WHERE tenant = ?", (tenant,))
            return cursor.rowcount == 1

    # SIPREC SBC sources
    def put_siprec_source(self, network: str, tenant: str) -> None:
        network, tenant = siprec_source(network, tenant)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO siprec_sources VALUES (?, ?)", (network, tenant))

    def delete_siprec_source(self, network: str) -> bool:
        network = siprec_source_network(network)
        with self._tx() as db:
            cursor = db.execute("DELETE FROM siprec_sources WHERE network = ?", (network,))
            return cursor.rowcount == 1

    def siprec_sources(self) -> dict[str, str]:
        rows = self._db().execute("SELECT network, tenant FROM siprec_sources")
        return {row["network"]: row["tenant"] for row in rows}

    # live event stream viewers
    def put_live_connection(
        self,
        connection_id: str,
        tenant: str,
        guid: str | None,
        expires_at: float,
        namespace: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO live_connections "
                "(connection_id, tenant, guid, expires_at, namespace) VALUES (?, ?, ?, ?, ?)",
                (connection_id, tenant, guid, expires_at, namespace),
            )

    def delete_live_connection(self, connection_id: str) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM live_connections WHERE connection_id = ?", (connection_id,)
            )
            return cursor.rowcount == 1

    def live_connections(self, tenant: str, now: float) -> list[LiveConnection]:
        rows = self._db().execute(
            "SELECT * FROM live_connections WHERE tenant = ? AND expires_at > ?", (tenant, now)
        )
        return [LiveConnection(**dict(row)) for row in rows]

    def purge_expired(self, now: float) -> int:
        with self._tx() as db:
            removed = db.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
            # Viewers that never said goodbye (DynamoDB's TTL does this in AWS).
            db.execute("DELETE FROM live_connections WHERE expires_at <= ?", (now,))
            return removed

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                # One created in another thread that is gone raises; sqlite frees it.
                with contextlib.suppress(sqlite3.ProgrammingError):
                    db.close()
            self._connections.clear()
        self._local = threading.local()
