"""DynamoDB adapter of the ``Store`` port (the AWS deployment).

One on-demand table, partition key ``pk`` and sort key ``sk`` (strings), one GSI ``gsi1``
(``gsi1pk`` / ``gsi1sk``) and the TTL attribute ``ttl`` (epoch seconds). Items:

| item | pk | sk | gsi1pk / gsi1sk |
| --- | --- | --- | --- |
| API key | ``KEY#<apiId>`` | ``KEY`` | ``TENANTKEYS#<tenant>`` / created time |
| call | ``CALL#<tenant>#<namespace>#<guid>`` | ``CALL`` | ``GUID#<tenant>#<guid>`` / namespace |
| request lock | same pk as its call | ``LOCK`` | |
| open-call marker | same pk as its call | ``OPEN`` | ``OPENCALLS`` / the call's pk |
| message | ``MSG#<tenant>#<namespace>#<guid>`` | zero-padded seq | ``TENANTMSG#<tenant>`` / created time and message id |
| delivery failure | ``FAIL#<tenant>`` | time and id | |
| webhook configuration | ``WEBHOOK#<tenant>`` | ``CONFIG`` | |
| Amazon Connect access | ``CONNECT#<tenant>`` | ``ACCESS`` | |
| custom vocabulary | ``VOCABULARY#<tenant>`` | ``TERMS`` | |
| SIPREC source mapping | ``SIPRECSOURCES`` | the normalised network | |
| live viewer connection | ``LIVECONN#<connectionId>`` | ``CONN`` | ``LIVE#<tenant>`` / connection id |

Messages carry ``ttl`` = their expiry, so DynamoDB deletes them itself; reads still filter on
``expires_at`` because TTL deletion can lag by up to a couple of days. The request lock is a
conditional put: two API workers racing for the same call get exactly one lock (409-202 for the
other), with no read-then-write window.

The SIPREC source mappings share one partition, so every recorder task reads them all with
one (consistent) query; there are as many as an operator has SBC networks, a few dozen at most.

A live viewer's connection is keyed by its id (what ``$disconnect`` and a gone connection
know) and found by tenant in ``gsi1`` (what a task publishing that tenant's event knows); it
carries ``ttl`` = its expiry, for the viewers that never disconnect cleanly.

A call not completed has an open-call marker naming its owner, kept with the call's status and
owner by ``create_call``/``update_call`` and removed when it completes: a starting gateway
queries them in one partition of ``gsi1`` (``list_incomplete_calls``) to find calls whose
owner task is gone, where a scan would read every message of the last week. A marker is
written after its call, so a crash in between loses a marker (that call is not swept), never
leaves one for a call that does not exist.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from decimal import Decimal
from typing import Any

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

GSI1 = "gsi1"
OPEN_CALLS = "OPENCALLS"  # gsi1pk of the open-call markers
SIPREC_SOURCES = "SIPRECSOURCES"  # pk of the SIPREC source mappings
FAILURE_RETENTION_S = 30 * 86_400


def table_definition(name: str) -> dict[str, Any]:
    """``create_table`` arguments matching the CDK stack's table (tests, local tooling)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "gsi1pk", "gsi1sk")
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI1,
                "KeySchema": [
                    {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                    {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def create_table(client: Any, name: str) -> None:
    client.create_table(**table_definition(name))
    client.get_waiter("table_exists").wait(TableName=name)
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"}
    )


def _num(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(float(value)))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _call_pk(key: CallKey) -> str:
    return f"CALL#{key.tenant}#{key.namespace}#{key.guid}"


def _messages_pk(key: CallKey) -> str:
    return f"MSG#{key.tenant}#{key.namespace}#{key.guid}"


def _seq_sk(seq: int) -> str:
    return f"{seq:010d}"


def _time_key(at: float) -> str:
    """Sorts as the number does (UNIX seconds, microseconds), as DynamoDB compares strings."""
    return f"{at:020.6f}"


class DynamoStore:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        if resource is None:
            import boto3

            resource = boto3.resource("dynamodb")
        self.table = resource.Table(table_name)
        self._errors = self.table.meta.client.exceptions

    def _query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.table.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # API keys -----------------------------------------------------------------------------

    def put_api_key(self, key: ApiKey) -> None:
        item = {
            "pk": f"KEY#{key.api_id}",
            "sk": "KEY",
            "gsi1pk": f"TENANTKEYS#{key.tenant}",
            "gsi1sk": f"{_time_key(key.created_at)}#{key.api_id}",
            "api_id": key.api_id,
            "tenant": key.tenant,
            "secret_hash": key.secret_hash,
            "created_at": _num(key.created_at),
        }
        if key.revoked_at is not None:
            item["revoked_at"] = _num(key.revoked_at)
        self.table.put_item(Item=item)

    @staticmethod
    def _api_key(item: dict[str, Any]) -> ApiKey:
        return ApiKey(
            api_id=item["api_id"],
            tenant=item["tenant"],
            secret_hash=item["secret_hash"],
            created_at=float(item["created_at"]),
            revoked_at=_float(item.get("revoked_at")),
        )

    def get_api_key(self, api_id: str) -> ApiKey | None:
        item = self.table.get_item(Key={"pk": f"KEY#{api_id}", "sk": "KEY"}).get("Item")
        return self._api_key(item) if item else None

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        from boto3.dynamodb.conditions import Attr, Key

        if tenant is not None:
            items = self._query_all(
                IndexName=GSI1, KeyConditionExpression=Key("gsi1pk").eq(f"TENANTKEYS#{tenant}")
            )
        else:  # an operator's listing of every key: rare, so a filtered scan is fine
            items, kwargs = [], {"FilterExpression": Attr("sk").eq("KEY")}
            while True:
                page = self.table.scan(**kwargs)
                items.extend(page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        keys = [self._api_key(item) for item in items]
        return sorted(keys, key=lambda k: (k.created_at, k.api_id))

    def revoke_api_key(self, api_id: str, at: float) -> bool:
        try:
            self.table.update_item(
                Key={"pk": f"KEY#{api_id}", "sk": "KEY"},
                UpdateExpression="SET revoked_at = :at",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(revoked_at)",
                ExpressionAttributeValues={":at": _num(at)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    # calls ----------------------------------------------------------------------------------

    @staticmethod
    def _call(item: dict[str, Any]) -> CallRecord:
        return CallRecord(
            key=CallKey(item["tenant"], item["namespace"], item["guid"]),
            status=CallStatus(item["status"]),
            owner=item["owner"],
            created_at=float(item["created_at"]),
            updated_at=float(item["updated_at"]),
            completed_at=_float(item.get("completed_at")),
            params=json.loads(item["params"]),
        )

    def create_call(self, call: CallRecord) -> bool:
        k = call.key
        item: dict[str, Any] = {
            "pk": _call_pk(k),
            "sk": "CALL",
            "gsi1pk": f"GUID#{k.tenant}#{k.guid}",
            "gsi1sk": k.namespace,
            "tenant": k.tenant,
            "namespace": k.namespace,
            "guid": k.guid,
            "status": call.status.value,
            "owner": call.owner,
            "created_at": _num(call.created_at),
            "updated_at": _num(call.updated_at),
            "params": json.dumps(call.params),
        }
        if call.completed_at is not None:
            item["completed_at"] = _num(call.completed_at)
        try:
            self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(pk)")
        except self._errors.ConditionalCheckFailedException:
            return False
        if call.status is not CallStatus.COMPLETED:
            self._put_open_marker(k, call.owner)
        return True

    def _put_open_marker(self, key: CallKey, owner: str) -> None:
        pk = _call_pk(key)
        self.table.put_item(
            Item={
                "pk": pk,
                "sk": "OPEN",
                "gsi1pk": OPEN_CALLS,
                "gsi1sk": pk,
                "tenant": key.tenant,
                "namespace": key.namespace,
                "guid": key.guid,
                "owner": owner,
            }
        )

    def _delete_open_marker(self, key: CallKey) -> None:
        self.table.delete_item(Key={"pk": _call_pk(key), "sk": "OPEN"})

    def list_incomplete_calls(self) -> list[CallRecord]:
        from boto3.dynamodb.conditions import Key

        found = []
        for marker in self._query_all(
            IndexName=GSI1, KeyConditionExpression=Key("gsi1pk").eq(OPEN_CALLS)
        ):
            key = CallKey(marker["tenant"], marker["namespace"], marker["guid"])
            # The call item, read consistently, is the truth; the index lags behind it.
            item = self.table.get_item(
                Key={"pk": _call_pk(key), "sk": "CALL"}, ConsistentRead=True
            ).get("Item")
            if item is None or item["status"] == CallStatus.COMPLETED.value:
                continue
            found.append(self._call(item))
        return sorted(found, key=lambda c: c.created_at)

    def complete_abandoned_call(self, key: CallKey, owner: str, completed_at: float) -> bool:
        try:
            self.table.update_item(
                Key={"pk": _call_pk(key), "sk": "CALL"},
                UpdateExpression="SET #status = :completed, completed_at = :at, updated_at = :at",
                ConditionExpression="attribute_exists(pk) AND #owner = :owner "
                "AND #status <> :completed",
                ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
                ExpressionAttributeValues={
                    ":completed": CallStatus.COMPLETED.value,
                    ":at": _num(completed_at),
                    ":owner": owner,
                },
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        self._delete_open_marker(key)
        return True

    def get_call(self, key: CallKey) -> CallRecord | None:
        item = self.table.get_item(Key={"pk": _call_pk(key), "sk": "CALL"}).get("Item")
        return self._call(item) if item else None

    def find_calls(self, tenant: str, guid: str) -> list[CallRecord]:
        from boto3.dynamodb.conditions import Key

        items = self._query_all(
            IndexName=GSI1, KeyConditionExpression=Key("gsi1pk").eq(f"GUID#{tenant}#{guid}")
        )
        return sorted((self._call(i) for i in items), key=lambda c: c.created_at)

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
        values: dict[str, Any] = {":updated_at": _num(updated_at)}
        assignments = ["updated_at = :updated_at"]
        names: dict[str, str] = {}
        for column, value in (
            ("status", status.value if status else None),
            ("owner", owner),
            ("params", json.dumps(params) if params is not None else None),
            ("completed_at", _num(completed_at)),
        ):
            if value is not None:
                names[f"#{column}"] = column  # "status" and "owner" are reserved words
                assignments.append(f"#{column} = :{column}")
                values[f":{column}"] = value
        try:
            answer = self.table.update_item(
                Key={"pk": _call_pk(key), "sk": "CALL"},
                UpdateExpression="SET " + ", ".join(assignments),
                ConditionExpression="attribute_exists(pk)",  # never create a call by updating
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                **({"ExpressionAttributeNames": names} if names else {}),
            )
        except self._errors.ConditionalCheckFailedException:
            return
        if status is None and owner is None:
            return  # the marker follows status and owner only
        updated = answer["Attributes"]
        if updated["status"] == CallStatus.COMPLETED.value:
            self._delete_open_marker(key)
        else:
            self._put_open_marker(key, updated["owner"])

    def acquire_call_lock(self, key: CallKey, holder: str, now: float, ttl_s: float) -> bool:
        try:
            self.table.put_item(
                Item={
                    "pk": _call_pk(key),
                    "sk": "LOCK",
                    "holder": holder,
                    "expires_at": _num(now + ttl_s),
                    "ttl": int(now + ttl_s) + 3600,
                },
                ConditionExpression="attribute_not_exists(pk) OR expires_at <= :now",
                ExpressionAttributeValues={":now": _num(now)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def release_call_lock(self, key: CallKey, holder: str) -> None:
        # Someone else's lock (ours expired and was taken over) stays.
        with contextlib.suppress(self._errors.ConditionalCheckFailedException):
            self.table.delete_item(
                Key={"pk": _call_pk(key), "sk": "LOCK"},
                ConditionExpression="holder = :holder",
                ExpressionAttributeValues={":holder": holder},
            )

    # messages -------------------------------------------------------------------------------

    def put_message(self, message: StoredMessage) -> None:
        self.table.put_item(
            Item={
                "pk": _messages_pk(message.key),
                "sk": _seq_sk(message.seq),
                # The tenant's messages by creation time, for the daily feed export.
                "gsi1pk": f"TENANTMSG#{message.key.tenant}",
                "gsi1sk": f"{_time_key(message.created_at)}#{message.message_id}",
                "tenant": message.key.tenant,
                "namespace": message.key.namespace,
                "guid": message.key.guid,
                "seq": message.seq,
                "message_id": message.message_id,
                "body": json.dumps(message.body),
                "created_at": _num(message.created_at),
                "expires_at": _num(message.expires_at),
                "ttl": int(message.expires_at),
            }
        )

    def list_messages(self, key: CallKey, limit: int, now: float) -> list[StoredMessage]:
        from boto3.dynamodb.conditions import Key

        return self._unexpired_messages(
            {"KeyConditionExpression": Key("pk").eq(_messages_pk(key))}, limit, now
        )

    def _unexpired_messages(
        self, query: dict[str, Any], limit: int, now: float, before: float | None = None
    ) -> list[StoredMessage]:
        messages: list[StoredMessage] = []
        while len(messages) < limit:
            page = self.table.query(**query)
            for item in page.get("Items", []):
                if float(item["expires_at"]) <= now:
                    continue
                if before is not None and float(item["created_at"]) >= before:
                    continue
                if len(messages) < limit:
                    messages.append(self._message(item))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return messages

    @staticmethod
    def _message(item: dict[str, Any]) -> StoredMessage:
        return StoredMessage(
            key=CallKey(item["tenant"], item["namespace"], item["guid"]),
            seq=int(item["seq"]),
            message_id=item["message_id"],
            body=json.loads(item["body"]),
            created_at=float(item["created_at"]),
            expires_at=float(item["expires_at"]),
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
        from boto3.dynamodb.conditions import Key

        lower = _time_key(start)
        if after is not None:
            # "\x00" sorts before every character: the first key strictly after the cursor.
            lower = max(lower, f"{_time_key(after[0])}#{after[1]}\x00")
        # BETWEEN is inclusive; messages created exactly at ``end`` are filtered out below.
        query = {
            "IndexName": GSI1,
            "KeyConditionExpression": Key("gsi1pk").eq(f"TENANTMSG#{tenant}")
            & Key("gsi1sk").between(lower, f"{_time_key(end)}#\uffff"),
        }
        return self._unexpired_messages(query, limit, now, before=end)

    def last_message_seq(self, key: CallKey) -> int | None:
        from boto3.dynamodb.conditions import Key

        page = self.table.query(
            KeyConditionExpression=Key("pk").eq(_messages_pk(key)),
            ScanIndexForward=False,
            Limit=1,
            ProjectionExpression="seq",
        )
        items = page.get("Items", [])
        return int(items[0]["seq"]) if items else None

    def set_message_expiry(self, key: CallKey, expires_at: float) -> int:
        from boto3.dynamodb.conditions import Key

        items = self._query_all(
            KeyConditionExpression=Key("pk").eq(_messages_pk(key)), ProjectionExpression="pk, sk"
        )
        for item in items:
            self.table.update_item(
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET expires_at = :e, #ttl = :t",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":e": _num(expires_at), ":t": int(expires_at)},
            )
        return len(items)

    # delivery failures ----------------------------------------------------------------------

    def put_delivery_failure(self, failure: DeliveryFailure) -> None:
        item: dict[str, Any] = {
            "pk": f"FAIL#{failure.tenant}",
            # Equal times keep the order they were recorded in; the uuid keeps keys unique.
            "sk": f"{_time_key(failure.at)}#{time.time_ns():020d}#{uuid.uuid4().hex}",
            "tenant": failure.tenant,
            "conversation_id": failure.conversation_id,
            "message_id": failure.message_id,
            "reason": failure.reason,
            "at": _num(failure.at),
            "ttl": int(failure.at + FAILURE_RETENTION_S),
        }
        if failure.status_code is not None:
            item["status_code"] = failure.status_code
        self.table.put_item(Item=item)

    def list_delivery_failures(
        self,
        tenant: str,
        conversation_id: str | None = None,
        limit: int = 1000,
        since: float | None = None,
    ) -> list[DeliveryFailure]:
        from boto3.dynamodb.conditions import Key

        condition = Key("pk").eq(f"FAIL#{tenant}")
        if since is not None:
            condition &= Key("sk").gte(_time_key(since))
        items = self._query_all(KeyConditionExpression=condition)
        failures = [
            DeliveryFailure(
                tenant=item["tenant"],
                conversation_id=item["conversation_id"],
                message_id=item["message_id"],
                reason=item["reason"],
                status_code=int(item["status_code"]) if "status_code" in item else None,
                at=float(item["at"]),
            )
            for item in items
            if conversation_id is None or item["conversation_id"] == conversation_id
        ]
        return failures[:limit]

    # webhook configurations -----------------------------------------------------------------

    def put_webhook_config(self, config: WebhookConfig) -> None:
        self.table.put_item(
            Item={
                "pk": f"WEBHOOK#{config.tenant}",
                "sk": "CONFIG",
                "config": webhook_config_to_json(config),
            }
        )

    def get_webhook_config(self, tenant: str) -> WebhookConfig | None:
        item = self.table.get_item(Key={"pk": f"WEBHOOK#{tenant}", "sk": "CONFIG"}).get("Item")
        return webhook_config_from_json(item["config"]) if item else None

    def delete_webhook_config(self, tenant: str) -> bool:
        answer = self.table.delete_item(
            Key={"pk": f"WEBHOOK#{tenant}", "sk": "CONFIG"}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in answer

    # Amazon Connect access ------------------------------------------------------------------

    def put_connect_access(self, access: ConnectAccess) -> None:
        item: dict[str, Any] = {
            "pk": f"CONNECT#{access.tenant}",
            "sk": "ACCESS",
            "tenant": access.tenant,
            "updated_at": _num(access.updated_at),
        }
        if access.role_arn is not None:
            item["role_arn"] = access.role_arn
        if access.external_id is not None:
            item["external_id"] = access.external_id
        self.table.put_item(Item=item)

    def get_connect_access(self, tenant: str) -> ConnectAccess | None:
        item = self.table.get_item(Key={"pk": f"CONNECT#{tenant}", "sk": "ACCESS"}).get("Item")
        if not item:
            return None
        return ConnectAccess(
            tenant=item["tenant"],
            role_arn=item.get("role_arn"),
            external_id=item.get("external_id"),
            updated_at=float(item["updated_at"]),
        )

    def delete_connect_access(self, tenant: str) -> bool:
        answer = self.table.delete_item(
            Key={"pk": f"CONNECT#{tenant}", "sk": "ACCESS"}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in answer

    # custom vocabularies ---------------------------------------------------------------------

    def put_tenant_vocabulary(self, vocabulary: TenantVocabulary) -> None:
        vocabulary = tenant_vocabulary(vocabulary)
        self.table.put_item(
            Item={
                "pk": f"VOCABULARY#{vocabulary.tenant}",
                "sk": "TERMS",
                "tenant": vocabulary.tenant,
                "terms": list(vocabulary.terms),  # a DynamoDB list keeps the order
                "updated_at": _num(vocabulary.updated_at),
            }
        )

    def get_tenant_vocabulary(self, tenant: str) -> TenantVocabulary | None:
        item = self.table.get_item(Key={"pk": f"VOCABULARY#{tenant}", "sk": "TERMS"}).get("Item")
        if not item:
            return None
        return TenantVocabulary(
            tenant=item["tenant"],
            terms=tuple(str(term) for term in item["terms"]),
            updated_at=float(item["updated_at"]),
        )

    def delete_tenant_vocabulary(self, tenant: str) -> bool:
        answer = self.table.delete_item(
            Key={"pk": f"VOCABULARY#{tenant}", "sk": "TERMS"}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in answer

    # SIPREC SBC sources ---------------------------------------------------------------------

    def put_siprec_source(self, network: str, tenant: str) -> None:
        network, tenant = siprec_source(network, tenant)
        self.table.put_item(
            Item={"pk": SIPREC_SOURCES, "sk": network, "network": network, "tenant": tenant}
        )

    def delete_siprec_source(self, network: str) -> bool:
        answer = self.table.delete_item(
            Key={"pk": SIPREC_SOURCES, "sk": siprec_source_network(network)},
            ReturnValues="ALL_OLD",
        )
        return "Attributes" in answer

    def siprec_sources(self) -> dict[str, str]:
        from boto3.dynamodb.conditions import Key

        # Consistent: a mapping just set (callscribe siprec-sources set) is seen by the next
        # refresh of every recorder.
        items = self._query_all(
            KeyConditionExpression=Key("pk").eq(SIPREC_SOURCES), ConsistentRead=True
        )
        return {item["network"]: item["tenant"] for item in items}

    # live event stream viewers --------------------------------------------------------------

    def put_live_connection(
        self,
        connection_id: str,
        tenant: str,
        guid: str | None,
        expires_at: float,
        namespace: str | None = None,
    ) -> None:
        item: dict[str, Any] = {
            "pk": f"LIVECONN#{connection_id}",
            "sk": "CONN",
            "gsi1pk": f"LIVE#{tenant}",
            "gsi1sk": connection_id,
            "connection_id": connection_id,
            "tenant": tenant,
            "expires_at": _num(expires_at),
            "ttl": int(expires_at),
        }
        if guid is not None:
            item["guid"] = guid
        if namespace is not None:
            item["namespace"] = namespace
        self.table.put_item(Item=item)

    def delete_live_connection(self, connection_id: str) -> bool:
        answer = self.table.delete_item(
            Key={"pk": f"LIVECONN#{connection_id}", "sk": "CONN"}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in answer

    def live_connections(self, tenant: str, now: float) -> list[LiveConnection]:
        from boto3.dynamodb.conditions import Attr, Key

        # The index is eventually consistent: a viewer that just connected is seen a moment
        # later, as it would be through the publishers' short cache anyway.
        items = self._query_all(
            IndexName=GSI1,
            KeyConditionExpression=Key("gsi1pk").eq(f"LIVE#{tenant}"),
            FilterExpression=Attr("expires_at").gt(_num(now)),
        )
        return [
            LiveConnection(
                connection_id=item["connection_id"],
                tenant=item["tenant"],
                guid=item.get("guid"),
                expires_at=float(item["expires_at"]),
                namespace=item.get("namespace"),
            )
            for item in items
        ]

    # retention ------------------------------------------------------------------------------

    def purge_expired(self, now: float) -> int:
        """DynamoDB's TTL deletes expired items on its own; this sweep makes expiry exact
        where that matters (tests, an operator's clean-up). It scans the table."""
        from boto3.dynamodb.conditions import Attr

        removed = 0
        kwargs: dict[str, Any] = {
            "FilterExpression": Attr("pk").begins_with("MSG#") & Attr("expires_at").lte(_num(now)),
            "ProjectionExpression": "pk, sk",
        }
        while True:
            page = self.table.scan(**kwargs)
            with self.table.batch_writer() as batch:
                for item in page.get("Items", []):
                    batch.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})
                    removed += 1
            if "LastEvaluatedKey" not in page:
                return removed
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def close(self) -> None:
        pass
