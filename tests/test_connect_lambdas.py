"""The contact-flow Lambdas (functions/connect_start, functions/connect_stop) with Amazon
Connect's real event shape, Secrets Manager under moto, and a real HTTP API on loopback that
records what they send."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.connect import flow
from functions import connect_start, connect_stop

REGION = "us-east-1"
CONTACT_ID = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
INITIAL_CONTACT_ID = "5ca32fbd-8f92-46af-92a5-6b0f970f0efe"
STREAM_ARN = (
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/"
    "acme-connect-acme-prod-contact-d111f871-5fe7-40b1-b5f7-6b67060de0c2/1726677687758"
)
START_FRAGMENT = "91343852333181531502161607852955530730504675150"

# What Connect sends to a Lambda invoked after "Start media streaming" (ContactFlowEvent).
CONNECT_EVENT: dict[str, Any] = {
    "Details": {
        "ContactData": {
            "Attributes": {"customerId": "TT9833237", "queue": "premium"},
            "AwsRegion": "us-east-1",
            "Channel": "VOICE",
            "ContactId": CONTACT_ID,
            "CustomerEndpoint": {"Address": "+14155550123", "Type": "TELEPHONE_NUMBER"},
            "CustomerId": None,
            "Description": None,
            "InitialContactId": INITIAL_CONTACT_ID,
            "InitiationMethod": "TRANSFER",
            "InstanceARN": "arn:aws:connect:us-east-1:111122223333:instance/d5b716a2-10bb-45cb-bf7f-01a9864be591",
            "LanguageCode": "en-GB",
            "MediaStreams": {
                "Customer": {
                    "Audio": {
                        "StartFragmentNumber": START_FRAGMENT,
                        "StartTimestamp": "1726677687758",
                        "StreamARN": STREAM_ARN,
                    }
                }
            },
            "Name": None,
            "PreviousContactId": INITIAL_CONTACT_ID,
            "Queue": {
                "ARN": "arn:aws:connect:us-east-1:111122223333:instance/d5b716a2/queue/4c0e",
                "Name": "BasicQueue",
                "OutboundCallerId": {"Address": "+18005550199", "Type": "TELEPHONE_NUMBER"},
            },
            "References": {},
            "SystemEndpoint": {"Address": "+18005550100", "Type": "TELEPHONE_NUMBER"},
        },
        "Parameters": {"agentId": "RE223444211993"},
    },
    "Name": "ContactFlowEvent",
}


def event(**changes: Any) -> dict[str, Any]:
    value = copy.deepcopy(CONNECT_EVENT)
    for path, new in changes.items():
        target = value
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        if new is None:
            target.pop(last, None)
        else:
            target[last] = new
    return value


@dataclass
class FakeApi:
    """A real HTTP server answering CallScribe's start/stop with canned answers."""

    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                api.requests.append((self.path, headers, body))
                status, answer = api.answers.pop(0) if api.answers else (200, OK)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


OK = {
    "isOk": True,
    "autotranscribeResponse": {
        "customer": {
            "streamId": "5ce2b755-3f38-11ed",
            "status": {"code": 1000, "description": "OK"},
        },
        "agent": {"streamId": "cf31116-3f38-11ed", "status": {"code": 1000, "description": "OK"}},
    },
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    fake = FakeApi()
    server = fake.serve()
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(
            Name="callscribe/connect-app",
            SecretString=json.dumps({"apiId": "cs_app1", "apiSecret": "s3cr3t"}),
        )["ARN"]
        monkeypatch.setenv("CALLSCRIBE_API_URL", fake.url)
        monkeypatch.setenv("CALLSCRIBE_CREDENTIALS_SECRET_ARN", arn)
        flow.default_handler.cache_clear()
        yield fake
        flow.default_handler.cache_clear()
    server.shutdown()


def assert_flat(result: dict[str, Any]) -> None:
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items()), result


def test_start_sends_the_contact_its_stream_from_the_start_fragment_and_the_participants(
    api: FakeApi,
) -> None:
    result = connect_start.handler(event(), None)
    assert_flat(result)
    assert result == {
        "callscribeResult": "ok",
        "callscribeGuid": CONTACT_ID,
        "callscribeCustomerStreamId": "5ce2b755-3f38-11ed",
        "callscribeAgentStreamId": "cf31116-3f38-11ed",
    }
    ((path, headers, body),) = api.requests
    assert path == "/mg-autotranscribe/v1/start-streaming"
    assert (headers["asapp-api-id"], headers["asapp-api-secret"]) == ("cs_app1", "s3cr3t")
    assert body == {
        "namespace": "amazonconnect",
        "guid": CONTACT_ID,
        "customerId": "TT9833237",  # a contact attribute
        "agentId": "RE223444211993",  # a parameter of the Lambda block
        "autotranscribeParams": {
            "language": "en-GB",
            "detailedToken": False,
            "redactionOutput": "redacted",
        },
        "amazonConnectParams": {
            "streamArn": STREAM_ARN,
            "startSelectorType": "FRAGMENT_NUMBER",
            "afterFragmentNumber": START_FRAGMENT,
        },
    }


def test_without_a_start_fragment_reading_starts_now(api: FakeApi) -> None:
    connect_start.handler(
        event(Details__ContactData__MediaStreams__Customer__Audio__StartFragmentNumber=None), None
    )
    ((_, _, body),) = api.requests
    assert body["amazonConnectParams"] == {"streamArn": STREAM_ARN, "startSelectorType": "NOW"}


@pytest.mark.parametrize(
    "field,expected",
    [
        ("ContactId", CONTACT_ID),
        ("InitialContactId", INITIAL_CONTACT_ID),
        ("PreviousContactId", INITIAL_CONTACT_ID),
    ],
)
def test_the_contact_id_field_is_configurable(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, field: str, expected: str
) -> None:
    monkeypatch.setenv("CALLSCRIBE_CONTACT_ID_FIELD", field)
    assert connect_start.handler(event(), None)["callscribeGuid"] == expected
    assert connect_stop.handler(event(), None)["callscribeGuid"] == expected
    assert [body["guid"] for _, _, body in api.requests] == [expected, expected]


def test_a_first_contact_has_no_previous_contact_id_and_falls_back_to_its_own(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCRIBE_CONTACT_ID_FIELD", "PreviousContactId")
    result = connect_start.handler(event(Details__ContactData__PreviousContactId=None), None)
    assert result["callscribeGuid"] == CONTACT_ID


def test_participant_attributes_and_settings_are_configurable(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCRIBE_CUSTOMER_ID_ATTRIBUTE", "crmId")
    monkeypatch.setenv("CALLSCRIBE_AGENT_ID_ATTRIBUTE", "agentLogin")
    monkeypatch.setenv("CALLSCRIBE_REDACTION_OUTPUT", "redacted_and_unredacted")
    monkeypatch.setenv("CALLSCRIBE_LANGUAGE", "es-US")
    attributes = {"crmId": "C-42", "agentLogin": "sarah"}
    result = connect_start.handler(
        event(
            Details__ContactData__Attributes=attributes,
            Details__Parameters={"detailedToken": "true"},
        ),
        None,
    )
    assert result["callscribeResult"] == "ok"
    ((_, _, body),) = api.requests
    assert (body["customerId"], body["agentId"]) == ("C-42", "sarah")
    assert body["autotranscribeParams"] == {
        "language": "es-US",
        "detailedToken": True,
        "redactionOutput": "redacted_and_unredacted",
    }


def test_stop_answers_with_the_summaries_flat(api: FakeApi) -> None:
    api.answers.append(
        (
            200,
            {
                "isOk": True,
                "autotranscribeResponse": {
                    "customer": {
                        "streamId": "5ce2",
                        "status": {"code": 1000},
                        "summary": {
                            "totalAudioBytes": 1334720,
                            "audioDurationMs": 83420,
                            "streamingSeconds": 84,
                            "transcripts": 2,
                        },
                    },
                },
            },
        )
    )
    result = connect_stop.handler(event(), None)
    assert_flat(result)
    assert result == {
        "callscribeResult": "ok",
        "callscribeGuid": CONTACT_ID,
        "callscribeCustomerStreamId": "5ce2",
        "callscribeCustomerTotalAudioBytes": "1334720",
        "callscribeCustomerAudioDurationMs": "83420",
        "callscribeCustomerStreamingSeconds": "84",
        "callscribeCustomerTranscripts": "2",
    }
    ((path, _, body),) = api.requests
    assert path == "/mg-autotranscribe/v1/stop-streaming"
    assert body == {"namespace": "amazonconnect", "guid": CONTACT_ID}


def test_api_errors_come_back_as_attributes(api: FakeApi) -> None:
    api.answers.append((409, {"isOk": False, "error": {"code": "409-201", "message": "already"}}))
    result = connect_start.handler(event(), None)
    assert_flat(result)
    assert result == {
        "callscribeResult": "error",
        "callscribeGuid": CONTACT_ID,
        "callscribeErrorCode": "409-201",
        "callscribeError": "already",
    }
    api.answers.append((502, {"message": "Bad Gateway"}))
    assert connect_stop.handler(event(), None)["callscribeErrorCode"] == "http-502"


def test_a_rotated_key_is_read_again_after_a_401(api: FakeApi) -> None:
    connect_start.handler(event(), None)
    boto3.client("secretsmanager").put_secret_value(
        SecretId="callscribe/connect-app",
        SecretString=json.dumps({"apiId": "cs_app2", "apiSecret": "n3w"}),
    )
    api.answers.append((401, {"isOk": False, "error": {"code": "401-201", "message": "revoked"}}))
    assert connect_stop.handler(event(), None)["callscribeResult"] == "ok"
    assert [h["asapp-api-id"] for _, h, _ in api.requests] == ["cs_app1", "cs_app1", "cs_app2"]


@pytest.mark.parametrize(
    "bad_event,code,words",
    [
        (event(Details__Parameters={}), "event", "agentId"),
        (event(Details__ContactData__MediaStreams={}), "event", "Start media streaming"),
        ({"Name": "ContactFlowEvent"}, "event", "ContactData"),
        ({"Details": "garbage"}, "event", "ContactData"),
    ],
)
def test_bad_events_are_reported_without_calling_the_api(
    api: FakeApi, bad_event: dict[str, Any], code: str, words: str
) -> None:
    result = connect_start.handler(bad_event, None)
    assert_flat(result)
    assert result["callscribeResult"] == "error"
    assert result["callscribeErrorCode"] == code
    assert words in result["callscribeError"]
    assert api.requests == []


def test_configuration_and_network_problems_never_raise(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCRIBE_CONTACT_ID_FIELD", "CustomerId")
    flow.default_handler.cache_clear()
    result = connect_start.handler(event(), None)
    assert (result["callscribeResult"], result["callscribeErrorCode"]) == ("error", "configuration")
    monkeypatch.setenv("CALLSCRIBE_CONTACT_ID_FIELD", "ContactId")
    monkeypatch.setenv("CALLSCRIBE_API_URL", "http://127.0.0.1:9")  # nothing listens
    flow.default_handler.cache_clear()
    result = connect_start.handler(event(), None)
    assert (result["callscribeResult"], result["callscribeErrorCode"]) == ("error", "unreachable")
    boto3.client("secretsmanager").put_secret_value(
        SecretId="callscribe/connect-app", SecretString="not json"
    )
    monkeypatch.setenv("CALLSCRIBE_API_URL", api.url)
    flow.default_handler.cache_clear()
    result = connect_stop.handler(event(), None)
    assert (result["callscribeResult"], result["callscribeErrorCode"]) == ("error", "configuration")
    monkeypatch.delenv("CALLSCRIBE_API_URL")
    flow.default_handler.cache_clear()
    assert connect_stop.handler(event(), None)["callscribeErrorCode"] == "configuration"
