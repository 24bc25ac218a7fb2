"""The AWS shape of Amazon Connect ingest, on loopback under moto: the API Lambda (real API
Gateway events) opens a contact on a KVS reader task over the signed control HTTP, the task
records itself as the call's owner in DynamoDB, later stops and starts go to that owner, and a
contact whose task is gone is opened afresh. The reader task runs in-process (its real app, two
ports); GetMedia is answered through botocore's Stubber with a simulated Connect stream."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import uvicorn
from moto import mock_aws

from callscribe.auth import create_api_key
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import api_lambda, webhook_lambda
from callscribe.aws.services.ingest_task import build_runtime
from callscribe.aws.services.kvs_reader_service import create_reader_app
from callscribe.aws.settings import AwsSettings
from callscribe.calls import CallRegistry
from callscribe.config import ConnectSettings, Settings
from callscribe.connect.kvs import BotoMediaSources
from callscribe.connect.media import AGENT_TRACK, CUSTOMER_TRACK
from callscribe.control import NotTakingCalls
from callscribe.control_http import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HttpCallHandover,
    HttpCallOpener,
    create_control_app,
    sign,
)
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.model import (
    AutotranscribeResult,
    CallError,
    ErrorCode,
    ParticipantResult,
    StartRequest,
)
from callscribe.store.base import CallKey, CallStatus, ConnectAccess
from callscribe.testing.connect_stream import SimulatedKvsStream
from callscribe.testing.simulate import WebhookReceiver, bind_loopback
from tests.aws_fixtures import (
    AwsResources,
    LambdaContext,
    create_resources,
    deliver_webhooks,
    http_api_event,
)
from tests.connect_support import (
    CONTACT_ID,
    EXTERNAL_ID,
    READER_ROLE_ARN,
    REGION,
    StubbedKvs,
    create_kvs_stream,
    fragment_pcm,
    sample_fragments,
    tone_fragments,
)
from tests.drain_support import NamingAsr
from tests.test_connect_service import FedAudio, SilentAsr, fed

__all__ = ["fed"]  # the fixture

GUID = "0c6a1d2e-9b8f-4d3c-a7e6-5f4e3d2c1b0a"
KEY = CallKey("acme", "amazonconnect", GUID)
START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"


@dataclass
class Deployment:
    store: DynamoStore
    runtime: IngestRuntime
    control_url: str
    health_url: str
    credentials: dict[str, str]
    stream_arn: str
    control_secret: str

    def invoke(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        from functions.api import handler

        # Lambda's Python runtime gives the handler a thread with an event loop (Mangum runs
        # the app on it); a worker thread has none until it is given one.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            response = handler(
                http_api_event(method, path, self.credentials, body, query), LambdaContext()
            )
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        raw = response["body"]
        if response.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        return response["statusCode"], json.loads(raw)

    async def api(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        # The Lambda runs its own event loop: in a thread, beside the reader task's.
        return await asyncio.to_thread(self.invoke, method, path, body, query)

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


# A draining reader hands its call to another -------------------------------------------------

READERS_HOST = "kvs-reader.test.callscribe.internal"


def bind_on(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@dataclass
class ReaderTask:
    runtime: IngestRuntime
    control_url: str
    health_url: str
    asr: NamingAsr
    server: uvicorn.Server
    serving: asyncio.Task[None]


async def reader_task(
    resources: AwsResources, settings: Settings, address: str, control_port: int, name: str
) -> ReaderTask:
    """A reader task's runtime and app, as its container runs them, on its own loopback
    address (the control port is the same on every task, as in ECS)."""
    control_sock = bind_on(address, control_port)
    health_sock = bind_on(address)
    control_url = f"http://{address}:{control_port}"
    aws_settings = AwsSettings(
        table_name=resources.table_name,
        delivery_queue_url=resources.queue_url,
        event_bus_name=resources.event_bus_name,
        token_secret_arn=resources.token_secret_arn,
        control_secret_arn=resources.control_secret_arn,
        control_port=control_port,
        control_url=control_url,
    )
    asr = NamingAsr(name)
    runtime, secret = build_runtime(aws_settings, settings, Ingest.AMAZON_CONNECT, asr=asr)

    async def resolve(host: str, port: int) -> list[str]:
        # What the service's Cloud Map name answers: one A record per task.
        assert (host, port) == (READERS_HOST, control_port)
        return ["127.0.0.2", "127.0.0.3"]

    assert runtime.connect is not None
    runtime.connect.handover = HttpCallHandover(
        secret, f"http://{READERS_HOST}:{control_port}", runtime.owner, resolve=resolve
    )
    app = create_reader_app(runtime, secret, control_port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.get_running_loop().create_task(
        server.serve(sockets=[control_sock, health_sock])
    )
    while not server.started:
        await asyncio.sleep(0.01)
    return ReaderTask(
        runtime,
        control_url,
        f"http://{address}:{health_sock.getsockname()[1]}",
        asr,
        server,
        serving,
    )


async def test_a_draining_reader_hands_the_call_to_another_that_the_api_then_reaches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, receiver: WebhookReceiver, fed: FedAudio
) -> None:
    """Reader A reads a contact the API Lambda opened there; A drains (SIGTERM's drain) and
    hands the call to reader B over their control endpoints; B reads on after A's last
    fragment and owns the call, so stop-streaming reaches B; the webhook Lambda delivers every
    utterance once, in order, A's and then B's."""
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
        settings = Settings(
            data_dir=tmp_path,
            blob_s3_bucket=resources.bucket_name,
            connect=ConnectSettings(
                read_timeout_s=2, retry_backoff_s=0.05, stopped_call_timeout_s=60
            ),
        )
        probe = bind_on("127.0.0.2")
        control_port = probe.getsockname()[1]
        probe.close()
        a = await reader_task(resources, settings, "127.0.0.2", control_port, "reader-a")
        b = await reader_task(resources, settings, "127.0.0.3", control_port, "reader-b")
        store = DynamoStore(resources.table_name, boto3.resource("dynamodb"))
        store.put_connect_access(ConnectAccess("acme", READER_ROLE_ARN, EXTERNAL_ID, time.time()))
        issued = create_api_key(store, "acme")
        for name, value in {
            "CALLSCRIBE_TABLE_NAME": resources.table_name,
            "CALLSCRIBE_TOKEN_SECRET_ARN": resources.token_secret_arn,
            "CALLSCRIBE_CONTROL_SECRET_ARN": resources.control_secret_arn,
            # The API's opens reach A (its address only); the readers find each other.
            "CALLSCRIBE_KVS_READER_URL": a.control_url,
            "CALLSCRIBE_BLOB_S3_BUCKET": resources.bucket_name,
            "CALLSCRIBE_WEBHOOK_URL": receiver.url,
        }.items():
            monkeypatch.setenv(name, value)
        api_lambda.asgi_handler.cache_clear()
        webhook_lambda.webhook_delivery.cache_clear()
        deployment = Deployment(
            store,
            a.runtime,
            a.control_url,
            a.health_url,
            {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret},
            create_kvs_stream(),
            "",
        )
        # Thirty seconds of the sample call (agent and customer taking turns), four times real
        # time; the producer keeps the stream open after them.
        fragments = sample_fragments()[:30]
        stream = SimulatedKvsStream(fragments, speed=4, ends=False)
        kvs = StubbedKvs(stream, deployment.stream_arn)
        for reader in (a, b):
            assert reader.runtime.connect is not None
            reader.runtime.connect.sources = BotoMediaSources(
                store, settings.connect, client_factory=kvs
            )
        stop_delivery = asyncio.Event()
        delivery = asyncio.get_running_loop().create_task(
            deliver_webhooks(resources, None, stop_delivery)
        )
        try:
            body = deployment.start_body(fragments[0].number)
            body["guid"] = CONTACT_ID
            body["autotranscribeParams"] = {"audioRecordingAllowed": True}
            key = CallKey("acme", "amazonconnect", CONTACT_ID)
            status, answer = await deployment.api("POST", START, body)
            assert status == 200, answer
            assert store.get_call(key).owner == a.control_url
            assert a.runtime.connect is not None and b.runtime.connect is not None
            on_a = a.runtime.connect.calls[key]
            deadline = time.monotonic() + 60
            while len(on_a.taken_fragments) < 12:
                assert time.monotonic() < deadline, "reader A read nothing"
                await asyncio.sleep(0.05)

            # SIGTERM on A: it drains while it still serves.
            draining = asyncio.get_running_loop().create_task(a.runtime.drain(60))
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{a.health_url}/readyz")
                assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
                assert (await http.get(f"{b.health_url}/readyz")).status_code == 200
            await asyncio.wait_for(draining, 60)
            assert on_a.handed_over_to == b.control_url
            record = store.get_call(key)
            assert record is not None and record.owner == b.control_url
            assert record.status is CallStatus.STREAMING
            cut = on_a.taken_fragments[-1]
            # B read *at* A's last fragment, which gave it nothing, and on from there.
            assert kvs.get_media[-1] == {
                "StartSelectorType": "FRAGMENT_NUMBER",
                "AfterFragmentNumber": cut,
            }
            on_b = b.runtime.connect.calls[key]
            deadline = time.monotonic() + 60
            while not on_b.taken_fragments or on_b.taken_fragments[-1] != fragments[-1].number:
                assert time.monotonic() < deadline, "reader B did not read to the end"
                await asyncio.sleep(0.05)

            # The Store names B: stop-streaming goes there and sums up the whole call.
            status, answer = await deployment.api(
                "POST", STOP, {"namespace": "amazonconnect", "guid": CONTACT_ID}
            )
            assert status == 200, answer
            customer_bytes = answer["autotranscribeResponse"]["customer"]["summary"]
            assert customer_bytes["totalAudioBytes"] == 2 * len(fragment_pcm(fragments, 0))
            assert b.runtime.connect.calls[key].status is CallStatus.STOPPED

            status, after = await deployment.api(
                "GET",
                "/conversation/v1/conversation/messages",
                query={"externalConversationId": CONTACT_ID},
            )
            assert status == 200, after
            deadline = time.monotonic() + 60
            while len(receiver.messages) < len(after["messages"]):
                assert time.monotonic() < deadline, "webhooks missing"
                await asyncio.sleep(0.1)
            stop_delivery.set()
            await delivery
        finally:
            stop_delivery.set()
            for reader in (a, b):
                reader.server.should_exit = True
                await reader.serving
        # Each reader recorded its own part (B's once its call completed as its task stopped).
        try:
            status, found = await deployment.api(
                "GET",
                "/conversation/v1/conversation/recording",
                query={"externalConversationId": CONTACT_ID},
            )
        finally:
            api_lambda.asgi_handler.cache_clear()
            webhook_lambda.webhook_delivery.cache_clear()
        assert status == 200, found

    # Every sample of the call reached one reader once, in order, on one timeline.
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    assert np.array_equal(fed.pcm(AGENT_TRACK), fragment_pcm(fragments, 1))
    assert fed.contiguous(CUSTOMER_TRACK) and fed.contiguous(AGENT_TRACK)
    # Every utterance once, in order: A's up to the cut, then B's, numbered on.
    bodies = [m.body for m in receiver.messages]
    assert bodies == after["messages"]
    texts = [body["autotranscribeResponse"]["utterance"][0]["text"] for body in bodies]
    given = texts.count("reader-a")
    assert given >= 2 and len(texts) - given >= 2
    assert texts == ["reader-a"] * given + ["reader-b"] * (len(texts) - given)
    # Each reader's ASR heard its own utterances only (and the warm-up as its task started).
    assert (a.asr.utterances, b.asr.utterances) == (given + 1, len(texts) - given + 1)
    for role in ("customer", "agent"):
        spans = [
            (body["autotranscribeResponse"]["start"], body["autotranscribeResponse"]["end"])
            for body in bodies
            if body["sender"]["role"] == role
        ]
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans)), role
    cut_ms = (
        fragments[[f.number for f in fragments].index(cut)].end_ms - fragments[0].producer_time_ms
    )
    assert all(body["autotranscribeResponse"]["end"] <= cut_ms for body in bodies[:given])
    assert all(body["autotranscribeResponse"]["start"] >= cut_ms for body in bodies[given:])
    (part_a, part_b) = found["recordings"]
    assert (part_a["offsetMs"], part_a["durationMs"]) == (0, cut_ms)
    assert part_b["offsetMs"] == cut_ms
    assert part_b["offsetMs"] + part_b["durationMs"] == len(fragments) * 1000


class ScriptedReader:
    """A reader task's control endpoint whose open and resume answer as told: it takes new
    calls or it is draining."""

    def __init__(self, name: str, draining: bool) -> None:
        self.name = name
        self.draining = draining
        self.asked: list[str] = []

    def ready(self) -> bool:
        return not self.draining

    async def open(self, key: CallKey, request: Any) -> AutotranscribeResult:
        return await self._take("open")

    async def resume(self, key: CallKey) -> AutotranscribeResult:
        return await self._take("resume")

    async def _take(self, action: str) -> AutotranscribeResult:
        self.asked.append(action)
        if self.draining:
            raise NotTakingCalls(f"{self.name} is draining")
        return AutotranscribeResult(customer=ParticipantResult(streamId=self.name))


async def test_the_api_and_a_draining_reader_pass_over_readers_that_take_no_calls() -> None:
    """Behind the readers' one name: the API's open skips a draining task (503) for one that
    takes calls; a draining reader never asks itself; with none taking calls, both say so."""
    probe = bind_on("127.0.0.2")
    port = probe.getsockname()[1]
    probe.close()
    readers = {
        "127.0.0.2": ScriptedReader("reader-a", draining=True),
        "127.0.0.3": ScriptedReader("reader-b", draining=False),
    }
    servers = []
    for address, reader in readers.items():
        app = create_control_app(CallRegistry(), "s", opener=reader, receiver=reader)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[bind_on(address, port)])
        )
        servers.append((server, task))
    for server, _ in servers:
        while not server.started:
            await asyncio.sleep(0.01)

    async def resolve(host: str, resolved_port: int) -> list[str]:
        assert (host, resolved_port) == (READERS_HOST, port)
        return list(readers)

    url = f"http://{READERS_HOST}:{port}"
    request = StartRequest.model_validate({"namespace": "amazonconnect", "guid": GUID})
    try:
        for _ in range(4):  # whichever order the tasks are asked in
            result = await HttpCallOpener("s", url, resolve=resolve).open(KEY, request)
            assert result.customer is not None and result.customer.streamId == "reader-b"
        # Reader A hands over: it asks B only, never itself.
        handover = HttpCallHandover("s", url, f"http://127.0.0.2:{port}", resolve=resolve)
        assert await handover.available()
        assert await handover.hand_over(KEY) == f"http://127.0.0.3:{port}"
        assert "resume" not in readers["127.0.0.2"].asked
        # Every reader draining: no one takes the call, and the API says so.
        readers["127.0.0.3"].draining = True
        assert not await handover.available()
        with pytest.raises(NotTakingCalls):
            await handover.hand_over(KEY)
        with pytest.raises(CallError) as refused:
            await HttpCallOpener("s", url, resolve=resolve).open(KEY, request)
        assert refused.value.code is ErrorCode.INTERNAL
        assert "no Amazon Connect reader takes new calls" in refused.value.message
    finally:
        for server, task in servers:
            server.should_exit = True
            await task
