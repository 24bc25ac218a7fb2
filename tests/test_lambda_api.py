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
from tests.aws_fixtures import REGION, AwsResources, create_resources


class LambdaContext:
    function_name = "callscribe-api"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:callscribe-api"
    memory_limit_in_mb = 512
    aws_request_id = "8f5b1c2e-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/callscribe-api"
    log_stream_name = "2026/11/21/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def rest_event(method: str, path: str, headers: dict[str, str], body: Any = None,
               query: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway REST API (payload v1.0) proxy event."""
    raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com",
                    "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", **headers},
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "accountId": "123456789012",
            "apiId": "abc123",
            "protocol": "HTTP/1.1",
            "requestTimeEpoch": int(time.time() * 1000),
        },
        "body": raw,
        "isBase64Encoded": False,
    }


def http_api_event(method: str, path: str, headers: dict[str, str], body: Any = None,
                   query: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload v2.0) event; its body arrives base64-encoded."""
    raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    query_string = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": {"host": "abc123.execute-api.us-east-1.amazonaws.com",
                    "x-forwarded-proto": "https", "x-forwarded-port": "443",
                    **{k.lower(): v for k, v in headers.items()}},
        "queryStringParameters": query,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "21/Nov/2026:10:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(raw.encode()).decode() if raw is not None else None,
        "isBase64Encoded": raw is not None,
    }


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
