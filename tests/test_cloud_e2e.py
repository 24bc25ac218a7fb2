"""The AWS deployment's path, shaped as in the cloud, on loopback:

    simulated Twilio ──wss──▶ gateway task (a real process: containers.twilio_gateway.entrypoint,
        drained by SIGTERM mid-call in one test)
        │  DynamoDB + Secrets Manager + SQS + EventBridge (moto server)
        │  ASR over HTTP ──▶ ASR worker (a real process: callscribe asr-worker)
        ▼
    SendMessage ──▶ delivery SQS FIFO (a group per conversation) ──▶ webhook Lambda
        ──▶ real HTTP receiver;   PutEvents ──▶ bus (a copy for customers' own rules)
    customer ──HTTP──▶ "API Gateway" ──▶ API Lambda (functions.api.handler) ──signed HTTP──▶ gateway
    sipp (the SBC) ──SIP/RTP──▶ SIPREC recorder task (containers.siprec_recorder.entrypoint),
        beside stand-ins for the ECS task metadata and agent (task-protection) endpoints

Only moto stands in for AWS, and the test's pollers stand in for the Lambda event source
mapping (moto runs no Lambda). Each webhook's hops are timed and printed (run with -s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import httpx
import pytest
import uvicorn
import websockets

from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.services import api_lambda, webhook_lambda
from callscribe.siprec.callid import ucid_from_user_to_user
from callscribe.store.base import CallKey
from callscribe.testing.simulate import (
    ApiClient,
    Control,
    PlayedCall,
    WebhookReceiver,
    bind_loopback,
    free_port,
    load_sample_call,
    play_call,
)
from callscribe.webhooks.delivery import MESSAGE_ID_HEADER
from tests.aws_fixtures import AwsResources, api_gateway_bridge, create_resources
from tests.cloud_support import DeliveryQueueMapping, aws_env, moto_endpoint, print_hops
from tests.ecs_support import FakeEcsEndpoints, ecs
from tests.siprec_support import (
    AGENT_AOR,
    CUSTOMER_AOR,
    FRAME_MS,
    RtpPlayback,
    SiprecApi,
    SipUdpPeer,
    bind_rtp_sockets,
    dialog_headers,
    encode_track,
    free_udp_tcp_port,
    numbered_streams,
    sip_request,
    source_ports,
    start_sipp,
)

pytestmark = pytest.mark.e2e
__all__ = ["ecs", "moto_endpoint"]  # the fixtures

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url, timeout=2)).is_success:
                    return
            await asyncio.sleep(0.25)
    raise AssertionError(f"{url} never became healthy:\n{log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def api_gateway(port_sock: object) -> AsyncIterator[str]:
    from functions.api import handler

    sock = bind_loopback()
    server = uvicorn.Server(
        uvicorn.Config(api_gateway_bridge(handler), log_level="warning", lifespan="off")
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def deliver_webhooks(
    resources: AwsResources, endpoint: str, stop: asyncio.Event
) -> DeliveryQueueMapping:
    """The SQS event source mapping and the webhook Lambda, until ``stop`` and an empty
    queue."""
    return await DeliveryQueueMapping(resources, endpoint).run(stop)


def print_webhook_hops(
    mapping: DeliveryQueueMapping, resources: AwsResources, key: CallKey, receiver: WebhookReceiver
) -> None:
    """The webhook path's hops for a call's messages: from the task persisting each (its
    created time in the table) to the receiver."""
    arrival = {m.headers[MESSAGE_ID_HEADER.lower()]: m.received_at for m in receiver.messages}
    stored = DynamoStore(resources.table_name).list_messages(key, limit=1000, now=time.time())
    created = {message.message_id: message.created_at for message in stored}
    hops = {m: h for m, h in mapping.hops.items() if m in created and m in arrival}
    print_hops(
        "Webhook hops in the cloud-shaped deployment (moto's server; not AWS figures):",
        [
            (
                "task: persisted -> SQS accepted the send",
                (h.queued_at - created[m] for m, h in hops.items()),
            ),
            (
                "queue: SQS accepted -> poller received",
                (h.received_at - h.queued_at for h in hops.values()),
            ),
            (
                "handler invoked -> receiver got the POST",
                (arrival[m] - h.invoked_at for m, h in hops.items()),
            ),
            ("persisted -> receiver", (arrival[m] - created[m] for m in hops)),
        ],
    )


def cloud_env(
    resources: AwsResources, endpoint: str, receiver: WebhookReceiver, **more: str
) -> dict[str, str]:
    """What the stack gives every task and function: the resources' names, the secrets' ARNs."""
    return {
        **aws_env(endpoint),
        "CALLSCRIBE_TABLE_NAME": resources.table_name,
        "CALLSCRIBE_DELIVERY_QUEUE_URL": resources.queue_url,
        "CALLSCRIBE_EVENT_BUS_NAME": resources.event_bus_name,
        "CALLSCRIBE_TOKEN_SECRET_ARN": resources.token_secret_arn,
        "CALLSCRIBE_CONTROL_SECRET_ARN": resources.control_secret_arn,
        "CALLSCRIBE_BLOB_S3_BUCKET": resources.bucket_name,
        "CALLSCRIBE_WEBHOOK_URL": receiver.url,
        **more,
    }


def callscribe_cli(args: list[str], resources: AwsResources, env: dict[str, str]) -> str:
    """The operator's CLI against the deployment's table: its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "callscribe", *args]
        + ["--store", "dynamodb", "--table", resources.table_name],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.1)


async def test_call_through_the_cloud_shaped_deployment(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    resources = create_resources(moto_endpoint)
    gateway_port, control_port, asr_port = free_port(), free_port(), free_port()
    env = cloud_env(
        resources,
        moto_endpoint,
        receiver,
        CALLSCRIBE_PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api_lambda.asgi_handler.cache_clear()
    webhook_lambda.webhook_delivery.cache_clear()
    issued = json.loads(callscribe_cli(["keys", "create", "--tenant", "acme"], resources, env))

    asr_log, gateway_log = tmp_path / "asr.log", tmp_path / "gateway.log"
    spool_parent = tmp_path / "task-tmp"
    spool = spool_parent / "callscribe-spool"
    spool_parent.mkdir()
    with (
        process(
            [
                sys.executable,
                "-m",
                "callscribe",
                "asr-worker",
                "--host",
                "127.0.0.1",
                "--port",
                str(asr_port),
            ],
            env,
            asr_log,
        ) as asr_worker,
        process(
            [sys.executable, "-m", "containers.twilio_gateway.entrypoint"],
            {
                **env,
                "CALLSCRIBE_HOST": "127.0.0.1",
                "CALLSCRIBE_PORT": str(gateway_port),
                "CALLSCRIBE_CONTROL_PORT": str(control_port),
                "CALLSCRIBE_CONTROL_URL": f"http://127.0.0.1:{control_port}",
                "CALLSCRIBE_ASR_URL": f"http://127.0.0.1:{asr_port}",
                # The task's temporary directory: where recordings are spooled before upload.
                "TMPDIR": str(spool_parent),
            },
            gateway_log,
        ) as gateway,
    ):
        await wait_healthy(f"http://127.0.0.1:{asr_port}/healthz", asr_worker, asr_log)
        await wait_healthy(f"http://127.0.0.1:{gateway_port}/healthz", gateway, gateway_log)

        async with api_gateway(None) as api_url:
            api = ApiClient(api_url, issued["apiId"], issued["apiSecret"])
            call = load_sample_call()
            controls = sorted(call.controls, key=lambda c: c.at_ms)
            first_window = replace(
                call,
                tracks={t: b[: (controls[1].at_ms + 500) * 8] for t, b in call.tracks.items()},
                duration_ms=controls[1].at_ms + 500,
                controls=tuple(controls[:2]),
            )
            stop_delivery = asyncio.Event()
            delivery = asyncio.get_running_loop().create_task(
                deliver_webhooks(resources, moto_endpoint, stop_delivery)
            )
            played = await play_call(
                await api.stream_url(),
                first_window,
                api,
                played=PlayedCall("CAcloud0000000000000000000000001", speed=4),
                autotranscribe_params={"audioRecordingAllowed": True},
            )
            assert [r.status_code for _, r in played.control_responses] == [200, 200], [
                r.text for _, r in played.control_responses
            ]
            stop_summary = played.control_responses[1][1].json()["autotranscribeResponse"]
            assert stop_summary["agent"]["summary"]["transcripts"] >= 2

            # The hang-up completes the call; the after-call API (the Lambda) sees it.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                after = (await api.messages(played.call_sid)).json()
                if after.get("complete"):
                    break
                await asyncio.sleep(0.5)
            assert after["complete"] is True
            assert len(after["messages"]) >= 4

            deadline = time.monotonic() + 60
            while len(receiver.messages) < len(after["messages"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
            stop_delivery.set()
            print_webhook_hops(
                await delivery, resources, CallKey("acme", "twilio", played.call_sid), receiver
            )

            # The gateway task left the call's WAV in S3; the API links to it (pre-signed).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                recordings = (await api.recording(played.call_sid)).json()["recordings"]
                if recordings:
                    break
                await asyncio.sleep(0.5)
            (recording,) = recordings
            async with httpx.AsyncClient(timeout=60) as http:
                wav = await http.get(recording["url"])
            assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
            assert len(wav.content) == recording["bytes"] > 44
            assert recording["durationMs"] > 0

            # A call that did not allow recording leaves no audio in S3, nor in the spool.
            unrecorded = await play_call(
                await api.stream_url(),
                first_window,
                api,
                played=PlayedCall("CAcloud0000000000000000000000002", speed=4),
                autotranscribe_params={"audioRecordingAllowed": False},
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (await api.messages(unrecorded.call_sid)).json().get("complete"):
                    break
                await asyncio.sleep(0.5)
            assert (await api.recording(unrecorded.call_sid)).json()["recordings"] == []
            await api.close()

    bodies = [m.body for m in receiver.messages]
    assert bodies == after["messages"]
    text = " ".join(u["text"] for b in bodies for u in b["autotranscribeResponse"]["utterance"])
    assert "package" in text.lower()
    s3_keys = [
        o["Key"]
        for o in boto3.client("s3")
        .list_objects_v2(Bucket=resources.bucket_name)
        .get("Contents", [])
    ]
    wav_name = recording["url"].split("?")[0].rsplit("/", 1)[-1]
    assert [k for k in s3_keys if k.startswith("recordings/")] == [
        f"recordings/acme/twilio/{played.call_sid}/{wav_name}"
    ]
    assert list(spool.iterdir()) == []
    health = gateway_log.read_text()
    assert "Traceback" not in health, health[-3000:]


async def test_sigterm_drains_the_gateway_task_and_its_live_stream_ends_there(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    receiver: WebhookReceiver,
    ecs: FakeEcsEndpoints,
) -> None:
    """Scale-in or a deployment stops a gateway task while it holds a Twilio stream (a
    stream cannot move between tasks): after SIGTERM a new stream is refused and /readyz
    answers 503, the live stream goes on to its hang-up with its start and stop served, every
    utterance reaches the webhook, and the task exits with status 0."""
    resources = create_resources(moto_endpoint)
    gateway_port, control_port, asr_port = free_port(), free_port(), free_port()
    env = cloud_env(
        resources,
        moto_endpoint,
        receiver,
        CALLSCRIBE_PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api_lambda.asgi_handler.cache_clear()
    webhook_lambda.webhook_delivery.cache_clear()
    issued = json.loads(callscribe_cli(["keys", "create", "--tenant", "acme"], resources, env))
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    asr_log, gateway_log = tmp_path / "asr.log", tmp_path / "gateway.log"
    with (
        process(
            [sys.executable, "-m", "callscribe", "asr-worker", "--host", "127.0.0.1"]
            + ["--port", str(asr_port)],
            env,
            asr_log,
        ) as asr_worker,
        process(
            [sys.executable, "-m", "containers.twilio_gateway.entrypoint"],
            {
                **env,
                "CALLSCRIBE_HOST": "127.0.0.1",
                "CALLSCRIBE_PORT": str(gateway_port),
                "CALLSCRIBE_CONTROL_PORT": str(control_port),
                "CALLSCRIBE_CONTROL_URL": f"http://127.0.0.1:{control_port}",
                "CALLSCRIBE_ASR_URL": f"http://127.0.0.1:{asr_port}",
                "CALLSCRIBE_TWILIO_DRAIN_TIMEOUT_S": "90",
                "ECS_CONTAINER_METADATA_URI_V4": ecs.metadata_uri,
                "ECS_AGENT_URI": ecs.agent_uri,
            },
            gateway_log,
        ) as gateway,
    ):
        await wait_healthy(f"http://127.0.0.1:{asr_port}/healthz", asr_worker, asr_log)
        await wait_healthy(f"{gateway_url}/readyz", gateway, gateway_log)
        async with api_gateway(None) as api_url:
            api = ApiClient(api_url, issued["apiId"], issued["apiSecret"])
            call = load_sample_call()
            controls = sorted(call.controls, key=lambda c: c.at_ms)
            window_ms = controls[1].at_ms + 500
            first_window = replace(
                call,
                tracks={t: b[: window_ms * 8] for t, b in call.tracks.items()},
                duration_ms=window_ms,
                controls=tuple(controls[:2]),
            )
            stream_url = await api.stream_url()
            stop_delivery = asyncio.Event()
            delivery = asyncio.get_running_loop().create_task(
                deliver_webhooks(resources, moto_endpoint, stop_delivery)
            )
            refusal: list[tuple[int, str]] = []

            async def sigterm_once_transcribing(
                control: Control, response: httpx.Response, played: PlayedCall
            ) -> None:
                if control.action != "start":
                    return
                assert response.status_code == 200, response.text
                # A live call: the task asked ECS not to scale it in.
                await wait_for(lambda: ecs.protection_asked(True), 30, "scale-in protection")
                gateway.send_signal(signal.SIGTERM)
                async with httpx.AsyncClient(timeout=5) as http:
                    deadline = time.monotonic() + 10
                    while (ready := await http.get(f"{gateway_url}/readyz")).status_code == 200:
                        assert time.monotonic() < deadline, "never stopped being ready"
                        await asyncio.sleep(0.05)
                    assert ready.json()["reason"] == "draining"
                    assert (await http.get(f"{gateway_url}/healthz")).status_code == 200
                async with websockets.connect(stream_url) as late:
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(late.recv(), 5)
                assert closed.value.rcvd is not None
                refusal.append((closed.value.rcvd.code, closed.value.rcvd.reason))

            played = await play_call(
                stream_url,
                first_window,
                api,
                played=PlayedCall("CAcloud0000000000000000000000003", speed=2),
                on_control=sigterm_once_transcribing,
            )
            assert refusal == [(1013, "draining: this gateway takes no new streams")]
            # Started before SIGTERM and stopped after it, on the draining task.
            assert [r.status_code for _, r in played.control_responses] == [200, 200], [
                r.text for _, r in played.control_responses
            ]
            stop_summary = played.control_responses[1][1].json()["autotranscribeResponse"]
            assert stop_summary["agent"]["summary"]["transcripts"] >= 2
            assert played.close_code == 1000
            # Its last call over, the task exits, cleanly.
            assert await asyncio.to_thread(gateway.wait, 60) == 0

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                after = (await api.messages(played.call_sid)).json()
                if after.get("complete"):
                    break
                await asyncio.sleep(0.5)
            assert after["complete"] is True
            assert len(after["messages"]) >= 4
            await wait_for(lambda: len(receiver.messages) >= len(after["messages"]), 60, "webhooks")
            stop_delivery.set()
            await delivery
            await api.close()

    bodies = [m.body for m in receiver.messages]
    assert bodies == after["messages"]
    text = " ".join(u["text"] for b in bodies for u in b["autotranscribeResponse"]["utterance"])
    assert "package" in text.lower()
    log = gateway_log.read_text()
    assert "Traceback" not in log and "drained: 0 live calls left" in log, log[-3000:]


async def test_siprec_call_through_the_cloud_shaped_deployment(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    receiver: WebhookReceiver,
    ecs: FakeEcsEndpoints,
) -> None:
    """sipp as the customer's SBC against the SIPREC recorder task (a real process:
    containers.siprec_recorder.entrypoint), its tenant found from the SBC's network in
    DynamoDB; start-streaming through the API Lambda; SIGTERM mid-call drains the task: no new
    INVITE, the live call goes on to its BYE, then the task exits with every utterance out."""
    resources = create_resources(moto_endpoint)
    recorder_port, control_port, asr_port = free_port(), free_port(), free_port()
    sip_port = free_udp_tcp_port()
    env = cloud_env(resources, moto_endpoint, receiver)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api_lambda.asgi_handler.cache_clear()
    webhook_lambda.webhook_delivery.cache_clear()
    issued = json.loads(callscribe_cli(["keys", "create", "--tenant", "acme"], resources, env))
    callscribe_cli(
        ["siprec-sources", "set", "--network", "127.0.0.0/8", "--tenant", "acme"], resources, env
    )
    # The task's address as ECS reports it (another loopback address than the one the test
    # dials): what the answer's Contact and SDP must carry, so the BYE must come to it.
    ecs.task_ip = "127.0.0.2"

    call = load_sample_call()
    window_ms = sorted(c.at_ms for c in call.controls)[1] + 500
    payloads = {
        label: encode_track(call.tracks[track][: window_ms * 8], "PCMU")
        for label, track in (("1", "inbound"), ("2", "outbound"))
    }
    speed = 4.0
    play_s = min(len(p) for p in payloads.values()) * FRAME_MS / 1000 / speed
    uui = "00FA080002D3DF63111234"
    guid = ucid_from_user_to_user(uui)
    assert guid is not None

    asr_log, recorder_log = tmp_path / "asr.log", tmp_path / "recorder.log"
    recorder_url = f"http://127.0.0.1:{recorder_port}"
    with (
        process(
            [sys.executable, "-m", "callscribe", "asr-worker", "--host", "127.0.0.1"]
            + ["--port", str(asr_port)],
            env,
            asr_log,
        ) as asr_worker,
        process(
            [sys.executable, "-m", "containers.siprec_recorder.entrypoint"],
            {
                **env,
                "CALLSCRIBE_HOST": "0.0.0.0",
                "CALLSCRIBE_PORT": str(recorder_port),
                "CALLSCRIBE_CONTROL_PORT": str(control_port),
                "CALLSCRIBE_CONTROL_URL": f"http://127.0.0.1:{control_port}",
                "CALLSCRIBE_ASR_URL": f"http://127.0.0.1:{asr_port}",
                "CALLSCRIBE_SIPREC_PORT": str(sip_port),
                "CALLSCRIBE_SIPREC_RTP_PORTS": "31000-31099",
                # As the stack sets it: only SBC networks mapped in the Store are served.
                "CALLSCRIBE_SIPREC_TENANT": "",
                "CALLSCRIBE_SIPREC_AGENT_PATTERN": r"^sip:4\d{3}@",
                "CALLSCRIBE_SIPREC_DRAIN_TIMEOUT_S": "90",
                "CALLSCRIBE_METRICS_INTERVAL_S": "0.5",
                # On for this task (the test's own environment turns the Lambdas' off).
                "POWERTOOLS_METRICS_DISABLED": "false",
                "ECS_CONTAINER_METADATA_URI_V4": ecs.metadata_uri,
                "ECS_AGENT_URI": ecs.agent_uri,
            },
            recorder_log,
        ) as recorder,
    ):
        await wait_healthy(f"http://127.0.0.1:{asr_port}/healthz", asr_worker, asr_log)
        await wait_healthy(f"{recorder_url}/readyz", recorder, recorder_log)

        sources = bind_rtp_sockets(["1", "2"])
        sipp = await start_sipp(
            "siprec_call",
            ("127.0.0.1", sip_port),
            tmp_path / "sipp",
            pause_ms=int((play_s + 3) * 1000),
            injection=[[uui, "0", "PCMU", CUSTOMER_AOR, AGENT_AOR, *source_ports(sources)]],
        )
        answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
        ports = {"1": int(answered.group(1)), "2": int(answered.group(2))}
        answer_sdp = sipp.messages()
        assert "c=IN IP4 127.0.0.2" in answer_sdp and "Contact: <sip:srs@127.0.0.2:" in answer_sdp

        stop_delivery = asyncio.Event()
        delivery = asyncio.get_running_loop().create_task(
            deliver_webhooks(resources, moto_endpoint, stop_delivery)
        )
        async with api_gateway(None) as api_url:
            api = SiprecApi(api_url, issued["apiId"], issued["apiSecret"])
            started = await api.start(guid, call.customer_id, call.agent_id)
            assert started.status_code == 200, started.text
            playback = RtpPlayback(
                {label: ("127.0.0.1", port) for label, port in ports.items()},
                payloads,
                0,
                sources=sources,
                speed=speed,
            )
            playing = asyncio.get_running_loop().create_task(playback.play())

            # A live call: the task asked ECS not to scale it in.
            await wait_for(lambda: ecs.protection_asked(True), 30, "scale-in protection")

            # Scale-in or a deployment: SIGTERM. New calls go elsewhere, this one goes on.
            recorder.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient(timeout=5) as http:
                deadline = time.monotonic() + 30
                while (ready := await http.get(f"{recorder_url}/readyz")).status_code == 200:
                    assert time.monotonic() < deadline, "never stopped being ready"
                    await asyncio.sleep(0.1)
                assert ready.status_code == 503 and ready.json()["reason"] == "draining"
                assert (await http.get(f"{recorder_url}/healthz")).status_code == 200
            sbc = SipUdpPeer()
            try:
                ping = await sbc.request(
                    sip_request(
                        "OPTIONS",
                        dialog_headers("OPTIONS", call_id="ping-1", via_host=sbc.via_host),
                    ),
                    ("127.0.0.1", sip_port),
                )
                assert ping.code == 503 and int(ping.headers["Retry-After"]) > 0
                refused = await sbc.invite(("127.0.0.1", sip_port), numbered_streams(2))
                assert refused.code == 503 and "draining" in refused.phrase
            finally:
                sbc.close()
            # The control endpoint still serves the live call.
            again = await api.start(guid, call.customer_id, call.agent_id)
            assert again.status_code == 409, again.text

            await playing
            assert await sipp.finish() == 0, sipp.stderr.decode(errors="replace")[-3000:]
            assert any(line.startswith(f"bye-answered {uui}") for line in sipp.logged())
            assert await asyncio.to_thread(recorder.wait, 60) == 0

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                after = (await api.messages(guid)).json()
                if after.get("complete"):
                    break
                await asyncio.sleep(0.5)
            assert after["complete"] is True
            assert len(after["messages"]) >= 2
            await wait_for(lambda: len(receiver.messages) >= len(after["messages"]), 60, "webhooks")
            stop_delivery.set()
            print_webhook_hops(await delivery, resources, CallKey("acme", "siprec", guid), receiver)
            await api.close()

    bodies = [m.body for m in receiver.messages]
    assert bodies == after["messages"]
    assert {b["externalConversationId"] for b in bodies} == {guid}
    text = " ".join(u["text"] for b in bodies for u in b["autotranscribeResponse"]["utterance"])
    assert "package" in text.lower()
    log = recorder_log.read_text()
    assert "Traceback" not in log, log[-3000:]
    # Its load went out as CloudWatch metrics (EMF lines), the call counted while it lasted.
    emf = [json.loads(line) for line in log.splitlines() if line.startswith('{"_aws"')]
    assert {line["service"] for line in emf} == {"callscribe-siprec-recorder"}
    live = [line["LiveCalls"] for line in emf]
    assert max(v[0] if isinstance(v, list) else v for v in live) == 1
