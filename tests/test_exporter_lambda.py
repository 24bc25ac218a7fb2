"""The exporter Lambda (functions/exporter.handler) under moto: messages in DynamoDB become 24
gzip JSON Lines files per tenant in S3, for the previous UTC day or a day given in the event."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.auth import hash_secret
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import exporter_lambda
from callscribe.aws.services.exporter_lambda import InvalidExportRequest, export_request
from callscribe.store.base import ApiKey, CallKey, CallRecord, CallStatus, StoredMessage
from tests.aws_fixtures import REGION, AwsResources, LambdaContext, create_resources


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
        monkeypatch.setenv("CALLSCRIBE_BLOB_S3_BUCKET", resources.bucket_name)
        exporter_lambda.exporter.cache_clear()
        yield resources
        exporter_lambda.exporter.cache_clear()


def _message_body(key: CallKey, seq: int, text: str) -> dict[str, Any]:
    return {
        "type": "transcript",
        "externalConversationId": key.guid,
        "streamId": f"stream-agent-{key.guid}",
        "sender": {"externalId": "A", "role": "agent"},
        "autotranscribeResponse": {
            "message": "transcript",
            "start": seq * 2000,
            "end": seq * 2000 + 1500,
            "utterance": [{"text": text}],
        },
    }


def _seed_day(store: DynamoStore, day: date, tenant: str) -> dict[int, list[str]]:
    """A tenant active on ``day`` with one call whose utterances fall in hours 0, 9 and 23
    (and one the next day, which the export must leave out). Returns texts by hour."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    store.put_api_key(ApiKey(f"id-{tenant}", tenant, hash_secret("x"), start - 86_400))
    key = CallKey(tenant, "twilio", f"CA{tenant}{day:%Y%m%d}")
    request = {"autotranscribeParams": {"language": "en-US"}}
    store.create_call(
        CallRecord(
            key,
            CallStatus.COMPLETED,
            "http://10.0.0.5:8081",
            start,
            start,
            start,
            params={"request": request},
        )
    )
    expires = time.time() + 30 * 86_400
    expected: dict[int, list[str]] = {0: [], 9: [], 23: []}
    for seq, (hour, text) in enumerate(
        [
            (0, "hello"),
            (9, "your package"),
            (9, "arrives today"),
            (23, "good night"),
            (24, "tomorrow"),
        ]
    ):
        at = start + hour * 3600 + seq
        store.put_message(
            StoredMessage(key, seq, f"m-{tenant}-{seq}", _message_body(key, seq, text), at, expires)
        )
        if hour < 24:
            expected[hour].append(text)
    return expected


def _feed(aws: AwsResources, tenant: str, day: date) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(
        Bucket=aws.bucket_name, Prefix=f"exports/utterances/{tenant}/{day.isoformat()}/"
    ).get("Contents", [])
    return {
        o["Key"].rsplit("/", 1)[-1]: s3.get_object(Bucket=aws.bucket_name, Key=o["Key"])[
            "Body"
        ].read()
        for o in listed
    }


def _texts(files: dict[str, bytes], hour: int) -> list[str]:
    lines = gzip.decompress(files[f"{hour:02d}.jsonl.gz"]).decode().splitlines()
    return [json.loads(line)["text"] for line in lines]


def test_scheduled_run_exports_the_previous_utc_day(aws: AwsResources) -> None:
    from functions.exporter import handler

    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    expected = {tenant: _seed_day(store, yesterday, tenant) for tenant in ("acme", "globex")}

    # EventBridge Scheduler's invocation carries no date.
    summary = handler({}, LambdaContext())
    assert summary["date"] == yesterday.isoformat()
    assert summary["files"] == 48 and summary["rows"] == {"acme": 4, "globex": 4}
    for tenant, by_hour in expected.items():
        files = _feed(aws, tenant, yesterday)
        assert sorted(files) == [f"{h:02d}.jsonl.gz" for h in range(24)]
        for hour in range(24):
            assert _texts(files, hour) == by_hour.get(hour, [])
    row = json.loads(gzip.decompress(_feed(aws, "acme", yesterday)["09.jsonl.gz"]).splitlines()[0])
    assert (row["language"], row["role"], row["messageId"]) == ("en-US", "agent", "m-acme-1")
    runs = (
        boto3.client("s3")
        .get_object(
            Bucket=aws.bucket_name, Key=f"exports/_runs/utterances/{yesterday.isoformat()}.json"
        )["Body"]
        .read()
    )
    assert json.loads(runs)["files"] == 48


def test_rerun_of_a_given_day_is_idempotent(aws: AwsResources) -> None:
    from functions.exporter import handler

    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    day = datetime.now(UTC).date() - timedelta(days=3)
    _seed_day(store, day, "acme")
    first = handler({"date": day.isoformat()}, LambdaContext())
    before = _feed(aws, "acme", day)
    again = handler({"date": day.isoformat(), "tenants": ["acme"]}, LambdaContext())
    assert first["rows"] == again["rows"] == {"acme": 4}
    assert _feed(aws, "acme", day) == before  # same keys, byte for byte
    # The day after was not touched by either run.
    assert _feed(aws, "acme", day + timedelta(days=1)) == {}


def test_export_request_validation() -> None:
    now = datetime(2026, 3, 15, 2, 0, 5, tzinfo=UTC).timestamp()
    assert export_request({}, now) == (date(2026, 3, 14), None)
    assert export_request(None, now) == (date(2026, 3, 14), None)
    assert export_request({"date": "2026-03-01", "tenants": ["acme"]}, now) == (
        date(2026, 3, 1),
        ["acme"],
    )
    for event in (
        {"date": "yesterday"},
        {"date": "2026-03-15"},
        {"tenants": "acme"},
        {"tenants": [""]},
    ):
        with pytest.raises(InvalidExportRequest):
            export_request(event, now)
