"""The AWS shape of Amazon Connect ingest, on loopback under moto: the API Lambda (real API
Gateway events) opens a contact on a KVS reader task over the signed control HTTP, the task
records itself as the call's owner in DynamoDB, later stops and starts go to that owner, and a
contact whose task is gone is opened afresh. The reader task runs in-process (its real app, two
ports); GetMedia is answered through botocore's Stubber with a simulated Connect stream."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
import uvicorn
from moto import mock_aws

from callscribe.auth import create_api_key
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import api_lambda
from callscribe.aws.services.gateway_service import build_runtime
from callscribe.aws.services.kvs_reader_service import create_reader_app
from callscribe.aws.settings import AwsSettings
from callscribe.calls import CallRegistry
from callscribe.config import ConnectSettings, Settings
from callscribe.connect.kvs import BotoMediaSources
from callscribe.control_http import SIGNATURE_HEADER, TIMESTAMP_HEADER, create_control_app, sign
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.store.base import CallKey, CallStatus, ConnectAccess
from callscribe.testing.connect_stream import SimulatedKvsStream
from callscribe.testing.simulate import bind_loopback
from tests.aws_fixtures import LambdaContext, create_resources, http_api_event
from tests.connect_support import (
    EXTERNAL_ID,
    READER_ROLE_ARN,
    REGION,
    StubbedKvs,
    create_kvs_stream,
    tone_fragments,
)
from tests.test_connect_service import SilentAsr

GUID = "0c6a1d2e-9b8f-4d3c-a7e6-5f4e3d2c1b0a"
KEY = CallKey("acme", "amazonconnect", GUID)


@dataclass
class Deployment:
    store: DynamoStore
    runtime: IngestRuntime
    control_url: str
    health_url: str
    credentials: dict[str, str]
    stream_arn: str
    control_secret: str

    def invoke(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        from functions.api import handler

        # Lambda's Python runtime gives the handler a thread with an event loop (Mangum runs
        # the app on it); a worker thread has none until it is given one.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            response = handler(
                http_api_event(method, path, self.credentials, body), LambdaContext()
            )
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        raw = response["body"]
        if response.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        return response["statusCode"], json.loads(raw)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        # The Lambda runs its own event loop: in a thread, beside the reader task's.
        return await asyncio.to_thread(self.invoke, method, path, body)

    def start_body(self, fragment: str) -> dict[str, Any]:
        return {
            "namespace": "amazonconnect",
            "guid": GUID,
            "customerId": "C-1",
            "agentId": "A-1",
            "amazonConnectParams": {
                "streamArn": self.stream_arn,
                "startSelectorType": "FRAGMENT_NUMBER",
                "afterFragmentNumber": fragment,
            },
        }


@pytest.fixture
async def deployment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> AsyncIterator[Deployment]:
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
        control_sock, health_sock = bind_loopback(), bind_loopback()
        control_port = control_sock.getsockname()[1]
        control_url = f"http://127.0.0.1:{control_port}"
        aws = AwsSettings(
            table_name=resources.table_name,
            delivery_queue_url=resources.queue_url,
            event_bus_name=resources.event_bus_name,
            token_secret_arn=resources.token_secret_arn,
            control_secret_arn=resources.control_secret_arn,
            control_port=control_port,
            control_url=control_url,
        )
        settings = Settings(
            data_dir=tmp_path,
            blob_s3_bucket=resources.bucket_name,
            connect=ConnectSettings(
                read_timeout_s=2, retry_backoff_s=0.05, stopped_call_timeout_s=30
            ),
        )
        runtime, control_secret = build_runtime(
            aws, settings, Ingest.AMAZON_CONNECT, asr=SilentAsr()
        )
        app = create_reader_app(runtime, control_secret, control_port)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[control_sock, health_sock])
        )
        while not server.started:
            await asyncio.sleep(0.01)
        store = DynamoStore(resources.table_name, boto3.resource("dynamodb"))
        store.put_connect_access(ConnectAccess("acme", READER_ROLE_ARN, EXTERNAL_ID, time.time()))
        issued = create_api_key(store, "acme")
        for name, value in {
            "CALLSCRIBE_TABLE_NAME": resources.table_name,
            "CALLSCRIBE_TOKEN_SECRET_ARN": resources.token_secret_arn,
            "CALLSCRIBE_CONTROL_SECRET_ARN": resources.control_secret_arn,
            "CALLSCRIBE_KVS_READER_URL": control_url,
            "CALLSCRIBE_BLOB_S3_BUCKET": resources.bucket_name,
        }.items():
            monkeypatch.setenv(name, value)
        api_lambda.asgi_handler.cache_clear()
        try:
            yield Deployment(
                store,
                runtime,
                control_url,
                f"http://127.0.0.1:{health_sock.getsockname()[1]}",
                {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret},
                create_kvs_stream(),
                control_secret,
            )
        finally:
            api_lambda.asgi_handler.cache_clear()
            server.should_exit = True
            await task


async def test_the_api_lambda_opens_the_contact_on_a_reader_task_and_controls_it_there(
    deployment: Deployment,
) -> None:
    fragments = tone_fragments(6.0, fragment_ms=500)
    stream = SimulatedKvsStream(fragments, speed=4, ends=False)
    kvs = StubbedKvs(stream, deployment.stream_arn)
    assert deployment.runtime.connect is not None
    deployment.runtime.connect.sources = BotoMediaSources(
        deployment.store, deployment.runtime.settings.connect, client_factory=kvs
    )
    start = "/mg-autotranscribe/v1/start-streaming"
    stop = "/mg-autotranscribe/v1/stop-streaming"

    status, answer = await deployment.api("POST", start, deployment.start_body(fragments[0].number))
    assert status == 200, answer
    record = deployment.store.get_call(KEY)
    assert record is not None and record.owner == deployment.control_url
    assert record.status is CallStatus.STREAMING

    await asyncio.sleep(0.5)
    # The reader's call details are shown to its tenant's API key only.
    async with httpx.AsyncClient(headers=deployment.credentials) as http:
        health = (await http.get(f"{deployment.health_url}/healthz")).json()["amazonConnect"]
    assert health["readersActive"] == 1
    assert health["readers"][0]["guid"] == GUID
    assert health["readers"][0]["millisBehindNow"] is not None

    status, answer = await deployment.api(
        "POST", stop, {"namespace": "amazonconnect", "guid": GUID}
    )
    assert status == 200, answer
    assert answer["autotranscribeResponse"]["customer"]["summary"]["totalAudioBytes"] > 0
    # Resumed on the task that holds it, from the flow's new fragment.
    status, answer = await deployment.api("POST", start, deployment.start_body(fragments[6].number))
    assert status == 200, answer
    assert [s["AfterFragmentNumber"] for s in kvs.get_media] == [
        fragments[0].number,
        fragments[6].number,
    ]

    # The task is replaced (its address answers no more): the next start opens it afresh.
    await deployment.api("POST", stop, {"namespace": "amazonconnect", "guid": GUID})
    deployment.store.update_call(KEY, owner="http://127.0.0.1:9", updated_at=time.time())
    status, answer = await deployment.api("POST", start, deployment.start_body(fragments[8].number))
    assert status == 200, answer
    assert deployment.store.get_call(KEY).owner == deployment.control_url
    await deployment.api("POST", stop, {"namespace": "amazonconnect", "guid": GUID})


async def test_connect_errors_through_the_lambda(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = "/mg-autotranscribe/v1/start-streaming"
    body = deployment.start_body("91343852333181432392682062607743920146159169392")
    body["amazonConnectParams"]["streamArn"] = deployment.stream_arn.replace("contact", "gone")
    status, answer = await deployment.api("POST", start, body)
    assert (status, answer["error"]["code"]) == (400, "400-202")
    assert deployment.store.get_call(KEY) is None
    # Without reader tasks the deployment says so instead of pretending the call is unknown.
    monkeypatch.delenv("CALLSCRIBE_KVS_READER_URL")
    api_lambda.asgi_handler.cache_clear()
    status, answer = await deployment.api("POST", start, deployment.start_body("1"))
    assert (status, answer["error"]["code"]) == (400, "400-202")
    assert "amazonconnect" in answer["error"]["message"]
    # Reader tasks configured but unreachable: an internal error, not the customer's.
    monkeypatch.setenv("CALLSCRIBE_KVS_READER_URL", "http://127.0.0.1:9")
    api_lambda.asgi_handler.cache_clear()
    status, answer = await deployment.api("POST", start, deployment.start_body("1"))
    assert (status, answer["error"]["code"]) == (500, "500-201")


async def test_open_is_only_for_tasks_that_read_kvs_and_needs_the_signature() -> None:
    body = json.dumps(
        {
            "key": {"tenant": "acme", "namespace": "amazonconnect", "guid": GUID},
            "request": {"namespace": "amazonconnect", "guid": GUID},
        }
    ).encode()
    timestamp = str(int(time.time()))
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign("s", timestamp, body)}
    gateway = create_control_app(CallRegistry(), "s")
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://task") as http:
        assert (await http.post("/control/open", content=body, headers=headers)).status_code == 404

    class Opener:
        async def open(self, key: CallKey, request: Any) -> Any:
            raise AssertionError("an unsigned request must not reach the opener")

    reader = create_control_app(CallRegistry(), "s", opener=Opener())
    transport = httpx.ASGITransport(app=reader)
    async with httpx.AsyncClient(transport=transport, base_url="http://task") as http:
        bad = {**headers, SIGNATURE_HEADER: sign("other", timestamp, body)}
        assert (await http.post("/control/open", content=body, headers=bad)).status_code == 401
