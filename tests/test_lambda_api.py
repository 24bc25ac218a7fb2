"""The API Lambda (functions/api.handler) driven with real API Gateway event shapes, REST (v1)
and HTTP API (v2), on the DynamoDB, Secrets Manager and S3 adapters under moto."""

from __future__ import annotations

import base64
import gzip
import io
import json
import time
import urllib.parse
import wave
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

import callscribe.api.outputs as outputs_api
from callscribe.auth import create_api_key
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import api_lambda
from callscribe.export import feed_file_key
from callscribe.recording import call_prefix
from callscribe.store.base import CallKey, CallRecord, CallStatus, DeliveryFailure, StoredMessage
from tests.aws_fixtures import (
    REGION,
    AwsResources,
    LambdaContext,
    create_resources,
    http_api_event,
    rest_event,
)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "CALLSCRIBE_PUBLIC_GATEWAY_URL": "wss://gw.example.com",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
        monkeypatch.setenv("CALLSCRIBE_TOKEN_SECRET_ARN", resources.token_secret_arn)
        monkeypatch.setenv("CALLSCRIBE_CONTROL_SECRET_ARN", resources.control_secret_arn)
        monkeypatch.setenv("CALLSCRIBE_BLOB_S3_BUCKET", resources.bucket_name)
        api_lambda.asgi_handler.cache_clear()
        yield resources
        api_lambda.asgi_handler.cache_clear()


def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from functions.api import handler

    response = handler(event, LambdaContext())
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return response["statusCode"], json.loads(body)


@pytest.fixture
def credentials(aws: AwsResources) -> dict[str, str]:
    issued = create_api_key(DynamoStore(aws.table_name, boto3.resource("dynamodb")), "acme")
    return {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_stream_url_and_credentials(shape: Any, credentials: dict[str, str]) -> None:
    status, body = invoke(
        shape("GET", "/mg-autotranscribe/v1/twilio-media-stream-url", credentials)
    )
    assert status == 200
    assert body["streamingUrl"].startswith("wss://gw.example.com/twilio-media?token=")
    status, body = invoke(
        shape(
            "GET",
            "/mg-autotranscribe/v1/twilio-media-stream-url",
            {"asapp-api-id": credentials["asapp-api-id"], "asapp-api-secret": "wrong"},
        )
    )
    assert status == 401 and body["error"]["code"] == "401-201"


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_start_and_stop_errors(shape: Any, credentials: dict[str, str], aws: AwsResources) -> None:
    start = "/mg-autotranscribe/v1/start-streaming"
    body = {"namespace": "twilio", "guid": "CAunknown", "customerId": "C", "agentId": "A"}
    status, answer = invoke(shape("POST", start, credentials, body))
    assert (status, answer["error"]["code"]) == (400, "400-203")
    status, answer = invoke(shape("POST", start, credentials, "{broken"))
    assert (status, answer["error"]["code"]) == (400, "400-201")
    status, answer = invoke(
        shape("POST", start, credentials, {**body, "autotranscribeParams": {"language": "xx-XX"}})
    )
    assert (status, answer["error"]["code"]) == (400, "400-202")

    # A call whose gateway task is gone: its recorded owner does not answer.
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    key = CallKey("acme", "twilio", "CAorphan")
    store.create_call(
        CallRecord(key, CallStatus.CONNECTED, "http://127.0.0.1:9", time.time(), time.time())
    )
    status, answer = invoke(shape("POST", start, credentials, {**body, "guid": "CAorphan"}))
    assert (status, answer["error"]["code"]) == (400, "400-203")
    assert "unreachable" in answer["error"]["message"]

    # Another request holds the call's lock: 409-202.
    store.acquire_call_lock(key, "other-lambda", time.time(), 30)
    status, answer = invoke(
        shape(
            "POST",
            "/mg-autotranscribe/v1/stop-streaming",
            credentials,
            {"namespace": "twilio", "guid": "CAorphan"},
        )
    )
    assert (status, answer["error"]["code"]) == (409, "409-202")


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_after_call_messages(shape: Any, credentials: dict[str, str], aws: AwsResources) -> None:
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    key = CallKey("acme", "twilio", "CAdone")
    now = time.time()
    store.create_call(CallRecord(key, CallStatus.COMPLETED, "http://10.0.0.5:8081", now, now, now))
    for seq in (1, 0, 2):
        store.put_message(StoredMessage(key, seq, f"m{seq}", {"seq": seq}, now, now + 3600))
    status, body = invoke(
        shape(
            "GET",
            "/conversation/v1/conversation/messages",
            credentials,
            query={"externalConversationId": "CAdone"},
        )
    )
    assert status == 200
    assert body["complete"] is True
    assert [m["seq"] for m in body["messages"]] == [0, 1, 2]

    other = create_api_key(store, "globex")
    status, body = invoke(
        shape(
            "GET",
            "/conversation/v1/conversation/messages",
            {"asapp-api-id": other.api_id, "asapp-api-secret": other.api_secret},
            query={"externalConversationId": "CAdone"},
        )
    )
    assert (status, body["error"]["code"]) == (400, "400-203")


# Outputs: recordings and feed files in S3 (pre-signed links), delivery failures ------------


def _put_recording(
    aws: AwsResources, key: CallKey, offset_ms: int, seconds: int, extension: str = "wav"
) -> bytes:
    """A stereo 8 kHz WAV where the gateway task's recorder leaves one (recording.call_prefix;
    ``redacted.wav`` for a redacted recording)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x01\x00\x02\x00" * 8000 * seconds)
    data = buffer.getvalue()
    boto3.client("s3").put_object(
        Bucket=aws.bucket_name,
        Key=f"{call_prefix(key)}{int(time.time() * 1000)}-{offset_ms}.{extension}",
        Body=data,
    )
    return data


def _fetch_presigned(url: str, aws: AwsResources) -> bytes:
    """GET a pre-signed URL as a client without credentials would (moto answers it)."""
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    assert aws.bucket_name in parsed.netloc + parsed.path
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The outputs endpoints' clock, moved forward (S3 cannot back-date LastModified)."""
    real = time.time
    monkeypatch.setattr(outputs_api, "time", SimpleNamespace(time=lambda: real() + seconds))


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_recording_links_are_presigned_s3_urls(
    shape: Any, credentials: dict[str, str], aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    key = CallKey("acme", "twilio", "CArecorded")
    now = time.time()
    store.create_call(CallRecord(key, CallStatus.COMPLETED, "http://10.0.0.5:8081", now, now, now))
    wav = _put_recording(aws, key, offset_ms=1500, seconds=2)

    path = "/conversation/v1/conversation/recording"
    status, body = invoke(
        shape("GET", path, credentials, query={"externalConversationId": "CArecorded"})
    )
    assert status == 200, body
    (recording,) = body["recordings"]
    assert (recording["offsetMs"], recording["durationMs"], recording["bytes"]) == (
        1500,
        2000,
        len(wav),
    )
    assert _fetch_presigned(recording["url"], aws) == wav
    expires = urllib.parse.parse_qs(urllib.parse.urlsplit(recording["url"]).query)["X-Amz-Expires"]
    assert expires == ["3600"]
    assert recording["redacted"] is False

    # A redacted recording (its spans silenced as it was assembled) says so.
    redacted_key = CallKey("acme", "twilio", "CAredacted")
    store.create_call(
        CallRecord(redacted_key, CallStatus.COMPLETED, "http://10.0.0.5:8081", now, now, now)
    )
    wav = _put_recording(aws, redacted_key, offset_ms=0, seconds=1, extension="redacted.wav")
    status, body = invoke(
        shape("GET", path, credentials, query={"externalConversationId": "CAredacted"})
    )
    (recording,) = body["recordings"]
    assert (status, recording["redacted"], recording["durationMs"]) == (200, True, 1000)
    assert _fetch_presigned(recording["url"], aws) == wav

    # A call without a recording (audioRecordingAllowed false): an empty list.
    store.create_call(
        CallRecord(
            CallKey("acme", "twilio", "CAsilent"),
            CallStatus.COMPLETED,
            "http://10.0.0.5:8081",
            now,
            now,
            now,
        )
    )
    status, body = invoke(
        shape("GET", path, credentials, query={"externalConversationId": "CAsilent"})
    )
    assert (status, body["recordings"]) == (200, [])
    # No such call: the after-call API's 400-203; another tenant's call is no such call.
    status, body = invoke(
        shape("GET", path, credentials, query={"externalConversationId": "CAnone"})
    )
    assert (status, body["error"]["code"]) == (400, "400-203")
    # Past the retention (7 days), the recording is gone, as in local mode.
    _later(monkeypatch, 8 * 86_400)
    status, body = invoke(
        shape("GET", path, credentials, query={"externalConversationId": "CArecorded"})
    )
    assert (status, body["recordings"]) == (200, [])


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_feed_file_links_are_presigned_s3_urls(
    shape: Any, credentials: dict[str, str], aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = datetime.now(UTC).date() - timedelta(days=1)
    hours = [datetime(day.year, day.month, day.day, h, tzinfo=UTC) for h in (9, 10)]
    s3 = boto3.client("s3")
    contents = {}
    for hour in hours:
        contents[hour] = gzip.compress(f'{{"hour": {hour.hour}}}\n'.encode())
        s3.put_object(
            Bucket=aws.bucket_name,
            Key=feed_file_key("utterances", "acme", hour),
            Body=contents[hour],
        )
    # Another tenant's file in the same hours is never listed.
    s3.put_object(
        Bucket=aws.bucket_name, Key=feed_file_key("utterances", "globex", hours[0]), Body=b"other"
    )

    path = "/fileexporter/v1/feeds/utterances/files"
    query = {"start": f"{day}T09:00:00Z", "end": f"{day}T12:00:00Z"}
    status, body = invoke(shape("GET", path, credentials, query=query))
    assert status == 200, body
    assert body["complete"] is False  # 11:00 has no file
    assert [f["hourStart"] for f in body["files"]] == [
        f"{day}T09:00:00.000Z",
        f"{day}T10:00:00.000Z",
    ]
    for entry, hour in zip(body["files"], hours, strict=True):
        assert entry["bytes"] == len(contents[hour])
        assert _fetch_presigned(entry["url"], aws) == contents[hour]

    status, body = invoke(
        shape("GET", "/fileexporter/v1/feeds/nope/files", credentials, query=query)
    )
    assert (status, body["error"]["code"]) == (400, "400-201")
    _later(monkeypatch, 8 * 86_400)
    status, body = invoke(shape("GET", path, credentials, query=query))
    assert (status, body["files"], body["complete"]) == (200, [], False)


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_webhook_failures(shape: Any, credentials: dict[str, str], aws: AwsResources) -> None:
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    now = time.time()
    store.put_delivery_failure(DeliveryFailure("acme", "CAone", "m1", "http 503", 503, now - 5))
    store.put_delivery_failure(
        DeliveryFailure("acme", "CAtwo", "m2", "timeout after 5 s", None, now)
    )
    store.put_delivery_failure(DeliveryFailure("globex", "CAx", "m3", "http 500", 500, now))
    status, body = invoke(shape("GET", "/callscribe/v1/webhook-failures", credentials))
    assert status == 200, body
    assert [(f["messageId"], f["statusCode"]) for f in body["failures"]] == [
        ("m1", 503),
        ("m2", None),
    ]
    status, body = invoke(
        shape(
            "GET",
            "/callscribe/v1/webhook-failures",
            credentials,
            query={"externalConversationId": "CAtwo"},
        )
    )
    assert [f["reason"] for f in body["failures"]] == ["timeout after 5 s"]


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_vocabulary_in_the_deployments_table(
    shape: Any, credentials: dict[str, str], aws: AwsResources
) -> None:
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    path = "/callscribe/v1/vocabulary"
    status, body = invoke(shape("PUT", path, credentials, {"terms": ["Acme Cloud", "Zorblax"]}))
    assert status == 200, body
    stored = store.get_tenant_vocabulary("acme")
    assert stored is not None and stored.terms == ("Acme Cloud", "Zorblax")
    status, shown = invoke(shape("GET", path, credentials))
    assert (status, shown) == (200, body)
    status, answer = invoke(shape("PUT", path, credentials, {"terms": ["x" * 51]}))
    assert (status, answer["error"]["code"]) == (400, "400-201")
    status, body = invoke(shape("DELETE", path, credentials))
    assert (status, body["terms"]) == (200, [])
    assert store.get_tenant_vocabulary("acme") is None

    # A bad vocabulary in a start request: 400-202, as any other transcription parameter.
    start = "/mg-autotranscribe/v1/start-streaming"
    request = {"namespace": "twilio", "guid": "CAvocab", "customerId": "C", "agentId": "A"}
    status, answer = invoke(
        shape("POST", start, credentials, {**request, "autotranscribeParams": {"vocabulary": [""]}})
    )
    assert (status, answer["error"]["code"]) == (400, "400-202")
    assert answer["error"]["message"] == "vocabulary: Value error, term 1 is empty"
