"""The API Lambda (functions/api.handler) driven with real API Gateway event shapes, REST (v1)
and HTTP API (v2), on the DynamoDB and Secrets Manager adapters under moto."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.auth import create_api_key
from callscribe.aws import api_lambda
from callscribe.aws.dynamodb_store import DynamoStore
from callscribe.store.base import CallKey, CallRecord, CallStatus, StoredMessage
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
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe", "CALLSCRIBE_PUBLIC_GATEWAY_URL":
        "wss://gw.example.com",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", resources.table_name)
        monkeypatch.setenv("CALLSCRIBE_TOKEN_SECRET_ARN", resources.token_secret_arn)
        monkeypatch.setenv("CALLSCRIBE_CONTROL_SECRET_ARN", resources.control_secret_arn)
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
    status, body = invoke(shape("GET", "/mg-autotranscribe/v1/twilio-media-stream-url", credentials))
    assert status == 200
    assert body["streamingUrl"].startswith("wss://gw.example.com/twilio-media?token=")
    status, body = invoke(shape("GET", "/mg-autotranscribe/v1/twilio-media-stream-url",
                                {"asapp-api-id": credentials["asapp-api-id"],
                                 "asapp-api-secret": "wrong"}))
    assert status == 401 and body["error"]["code"] == "401-201"


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_start_and_stop_errors(shape: Any, credentials: dict[str, str], aws: AwsResources) -> None:
    start = "/mg-autotranscribe/v1/start-streaming"
    body = {"namespace": "twilio", "guid": "CAunknown", "customerId": "C", "agentId": "A"}
    status, answer = invoke(shape("POST", start, credentials, body))
    assert (status, answer["error"]["code"]) == (400, "400-203")
    status, answer = invoke(shape("POST", start, credentials, "{broken"))
    assert (status, answer["error"]["code"]) == (400, "400-201")
    status, answer = invoke(shape("POST", start, credentials,
                                  {**body, "autotranscribeParams": {"language": "xx-XX"}}))
    assert (status, answer["error"]["code"]) == (400, "400-202")

    # A call whose gateway task is gone: its recorded owner does not answer.
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    key = CallKey("acme", "twilio", "CAorphan")
    store.create_call(CallRecord(key, CallStatus.CONNECTED, "http://127.0.0.1:9", time.time(),
                                 time.time()))
    status, answer = invoke(shape("POST", start, credentials, {**body, "guid": "CAorphan"}))
    assert (status, answer["error"]["code"]) == (400, "400-203")
    assert "unreachable" in answer["error"]["message"]

    # Another request holds the call's lock: 409-202.
    store.acquire_call_lock(key, "other-lambda", time.time(), 30)
    status, answer = invoke(shape("POST", "/mg-autotranscribe/v1/stop-streaming", credentials,
                                  {"namespace": "twilio", "guid": "CAorphan"}))
    assert (status, answer["error"]["code"]) == (409, "409-202")


@pytest.mark.parametrize("shape", [rest_event, http_api_event])
def test_after_call_messages(shape: Any, credentials: dict[str, str], aws: AwsResources) -> None:
    store = DynamoStore(aws.table_name, boto3.resource("dynamodb"))
    key = CallKey("acme", "twilio", "CAdone")
    now = time.time()
    store.create_call(CallRecord(key, CallStatus.COMPLETED, "http://10.0.0.5:8081", now, now, now))
    for seq in (1, 0, 2):
        store.put_message(StoredMessage(key, seq, f"m{seq}", {"seq": seq}, now, now + 3600))
    status, body = invoke(shape("GET", "/conversation/v1/conversation/messages", credentials,
                                query={"externalConversationId": "CAdone"}))
    assert status == 200
    assert body["complete"] is True
    assert [m["seq"] for m in body["messages"]] == [0, 1, 2]

    other = create_api_key(store, "globex")
    status, body = invoke(shape("GET", "/conversation/v1/conversation/messages",
                                {"asapp-api-id": other.api_id, "asapp-api-secret": other.api_secret},
                                query={"externalConversationId": "CAdone"}))
    assert (status, body["error"]["code"]) == (400, "400-203")
