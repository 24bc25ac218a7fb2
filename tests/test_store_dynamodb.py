"""The DynamoDB ``Store`` adapter passes the same contract as SQLite, against moto."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from callscribe.aws.adapters.dynamodb_store import DynamoStore, create_table
from callscribe.store.base import CallKey
from tests.store_contract import T0, StoreContract, make_call

TABLE = "callscribe-test"


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb")
        create_table(client, TABLE)
        yield boto3.resource("dynamodb")


class TestDynamoStoreContract(StoreContract):
    @pytest.fixture
    def store(self, dynamodb: object) -> Iterator[DynamoStore]:
        yield DynamoStore(TABLE, resource=dynamodb)


def test_table_has_ttl_on_the_ttl_attribute(dynamodb: object) -> None:
    ttl = boto3.client("dynamodb").describe_time_to_live(TableName=TABLE)
    assert ttl["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}


def test_messages_carry_their_expiry_as_ttl(dynamodb: object) -> None:
    from tests.store_contract import make_message

    store = DynamoStore(TABLE, resource=dynamodb)
    key = CallKey("acme", "twilio", "CA1")
    store.put_message(make_message(key, 0, expires_at=T0 + 100.7))
    item = (
        boto3.resource("dynamodb")
        .Table(TABLE)
        .get_item(Key={"pk": "MSG#acme#twilio#CA1", "sk": "0000000000"})["Item"]
    )
    assert int(item["ttl"]) == int(T0 + 100.7)
    store.set_message_expiry(key, T0 + 999)
    item = (
        boto3.resource("dynamodb")
        .Table(TABLE)
        .get_item(Key={"pk": "MSG#acme#twilio#CA1", "sk": "0000000000"})["Item"]
    )
    assert int(item["ttl"]) == int(T0 + 999)


def test_lock_is_a_conditional_write_between_two_workers(dynamodb: object) -> None:
    """Two API workers (two adapter instances) race for the same call: one wins."""
    first, second = DynamoStore(TABLE, resource=dynamodb), DynamoStore(TABLE, resource=dynamodb)
    key = CallKey("acme", "twilio", "CA2")
    first.create_call(make_call(key))
    assert first.acquire_call_lock(key, "worker-1", T0, 30)
    assert not second.acquire_call_lock(key, "worker-2", T0 + 1, 30)
    assert second.acquire_call_lock(key, "worker-2", T0 + 31, 30)


def test_live_connections_carry_their_expiry_as_ttl(dynamodb: object) -> None:
    store = DynamoStore(TABLE, resource=dynamodb)
    store.put_live_connection("conn-ttl", "acme", None, T0 + 7200.9)
    item = (
        boto3.resource("dynamodb")
        .Table(TABLE)
        .get_item(Key={"pk": "LIVECONN#conn-ttl", "sk": "CONN"})["Item"]
    )
    assert int(item["ttl"]) == int(T0 + 7200.9)
    assert (item["gsi1pk"], item["gsi1sk"]) == ("LIVE#acme", "conn-ttl")
