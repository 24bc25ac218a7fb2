"""Calls a dead process left behind are completed by the next one to start.

Local mode: `callscribe serve` killed with SIGKILL mid-call, a new one started on the same data
dir completes the call (its persisted messages kept, the after-call API complete). AWS: the
gateway task, on start, completes the calls whose owner is no longer a live ECS task."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.aws.adapters.dynamodb_store import DynamoStore, create_table
from callscribe.store.base import CallKey, CallRecord, CallStatus, StoredMessage
from callscribe.store.sqlite import SqliteStore
from callscribe.takeover import LocalInstance, complete_abandoned_calls
from callscribe.testing.simulate import running_receiver, running_server
from tests.serve_support import TwilioCall, agent_lines, api_client, wait_until

pytestmark = pytest.mark.e2e

DAY_S = 86_400
RETENTION_S = 7 * DAY_S


# --------------------------------------------------------------------------- local mode


async def test_a_call_left_streaming_by_a_killed_server_is_completed_by_the_next(
    tmp_path: Path,
) -> None:
    """A Twilio call is streaming and one transcript is persisted when the server is killed
    (SIGKILL: no shutdown at all). The server started next on the same data dir completes
    the call: the after-call API says complete, with the messages persisted before the kill."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with running_receiver() as receiver:
        async with running_server(data_dir, receiver.url) as first:
            api = api_client(data_dir, first.base_url)
            call = TwilioCall(api)
            await call.open()
            await call.send_line(agent_lines(call.call)[0])

            async def persisted() -> bool:
                return bool((await api.messages(call.call_sid)).json()["messages"])

            await wait_until(persisted, 120, "a transcript persisted")
            before = (await api.messages(call.call_sid)).json()
            assert before["complete"] is False
            first.process.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(first.process.wait, 30) == -signal.SIGKILL
            await call.close()
            await api.close()

        store = SqliteStore(data_dir / "callscribe.sqlite3")
        (left,) = store.find_calls("acme", call.call_sid)
        store.close()
        assert left.status is CallStatus.STREAMING  # what the kill left behind

        async with running_server(data_dir, receiver.url) as second:
            api = api_client(data_dir, second.base_url)
            after = (await api.messages(call.call_sid)).json()
            assert after["complete"] is True
            assert after["messages"] == before["messages"]
            # The call has ended: start-streaming says so, as for any completed call.
            restart = await api.start(call.call_sid, "C1", "A1")
            assert restart.status_code == 400
            error = restart.json()["error"]
            assert error["code"] == "400-203" and "ended" in error["message"]
            await api.close()

    store = SqliteStore(data_dir / "callscribe.sqlite3")
    (done,) = store.find_calls("acme", call.call_sid)
    messages = store.list_messages(done.key, 100, time.time())
    store.close()
    assert done.completed_at is not None
    # Kept for the retention period from the call's completion, as a call that ended well.
    assert messages and all(
        abs(m.expires_at - (done.completed_at + RETENTION_S)) < 1 for m in messages
    )


def add_call(
    store: Any,
    guid: str,
    owner: str,
    status: CallStatus = CallStatus.STREAMING,
    updated_at: float | None = None,
    tenant: str = "acme",
) -> CallKey:
    key = CallKey(tenant, "twilio", guid)
    at = time.time() - 600 if updated_at is None else updated_at
    store.create_call(CallRecord(key, status, owner, at, at))
    store.put_message(StoredMessage(key, 0, f"{guid}-m0", {"seq": 0}, at, at + 10 * DAY_S))
    return key


def killed_instance(data_dir: Path) -> str:
    """The owner id of a local instance whose process was killed with SIGKILL."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from callscribe.takeover import "
            "LocalInstance; print(LocalInstance(Path(sys.argv[1])).owner, flush=True); "
            "time.sleep(600)",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    owner = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    child.stdout.close()
    return owner


def test_local_instances_sharing_a_data_dir_leave_each_other_s_calls(tmp_path: Path) -> None:
    """Two servers on one data dir: the one starting second completes only the calls of
    instances that are not running (a killed one, an older version's), never a live one's."""
    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    running = LocalInstance(tmp_path)
    killed_owner = killed_instance(tmp_path)
    assert killed_owner.startswith("local:")
    live_call = add_call(store, "CA-live", running.owner)
    dead_call = add_call(store, "CA-dead", killed_owner)
    old_call = add_call(store, "CA-old", "local:host:4242")  # an older version's owner
    stopped_dead = add_call(store, "CA-stopped", killed_owner, CallStatus.STOPPED)
    aws_call = add_call(store, "CA-aws", "http://10.0.0.9:8081")  # not a local owner
    assert len(list((tmp_path / "instances").iterdir())) == 2  # SIGKILL left its lock file

    starting = LocalInstance(tmp_path)
    now = time.time()
    completed = complete_abandoned_calls(store, starting.owner_is_gone, RETENTION_S, now)

    assert set(completed) == {dead_call, old_call, stopped_dead}
    status = {
        k.guid: store.get_call(k).status
        for k in (live_call, dead_call, old_call, stopped_dead, aws_call)  # type: ignore[union-attr]
    }
    assert status == {
        "CA-live": CallStatus.STREAMING,
        "CA-dead": CallStatus.COMPLETED,
        "CA-old": CallStatus.COMPLETED,
        "CA-stopped": CallStatus.COMPLETED,
        "CA-aws": CallStatus.STREAMING,
    }
    (message,) = store.list_messages(dead_call, 10, now)
    assert message.expires_at == now + RETENTION_S
    # The killed instance's lock file is cleared away; the live ones' stay.
    locks = sorted(p.name for p in (tmp_path / "instances").iterdir())
    assert locks == sorted(f"{i.instance_id}.lock" for i in (running, starting))
    running.close()
    starting.close()
    assert list((tmp_path / "instances").iterdir()) == []
    store.close()


# --------------------------------------------------------------------------- AWS


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


CLUSTER = "callscribe-test"


def run_tasks(count: int) -> list[tuple[str, str]]:
    """``count`` Fargate tasks (awsvpc) in the cluster: (task ARN, private IP) each."""
    ec2 = boto3.client("ec2")
    ecs = boto3.client("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as CDK's VPCs
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="gateway", Description="gateway tasks", VpcId=vpc)[
        "GroupId"
    ]
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family="gateway",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": "gateway",
                "image": "callscribe",
                "essential": True,
                "cpu": 1024,
                "memory": 2048,
            }
        ],
    )
    tasks = ecs.run_task(
        cluster=CLUSTER,
        taskDefinition="gateway",
        launchType="FARGATE",
        count=count,
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
        },
    )["tasks"]
    found = []
    for task in tasks:
        details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
        found.append((task["taskArn"], details["privateIPv4Address"]))
    return found


def control_url(ip: str) -> str:
    return f"http://{ip}:8081"


def test_gateway_sweep_completes_the_calls_of_tasks_that_are_gone(aws: None) -> None:
    from callscribe.aws.adapters.ecs_tasks import EcsOwnerLiveness

    create_table(boto3.client("dynamodb"), "calls")
    store = DynamoStore("calls")
    (own_arn, own_ip), (_, live_ip), (stopped_arn, stopped_ip) = run_tasks(3)
    boto3.client("ecs").stop_task(cluster=CLUSTER, task=stopped_arn, reason="scaled in")
    started_at = time.time()

    keys = {
        "live task": add_call(store, "CA-live", control_url(live_ip)),
        "stopped task": add_call(store, "CA-stopped", control_url(stopped_ip)),
        "task long gone": add_call(store, "CA-gone", control_url("10.0.9.9")),
        # This task's own address, held by an earlier task with the same IP: it is gone.
        "our address, before we started": add_call(
            store, "CA-ours-old", control_url(own_ip), updated_at=started_at - 60
        ),
        "ours": add_call(store, "CA-ours", control_url(own_ip), updated_at=started_at + 1),
        # An owner named by a DNS name says nothing about which task it is: left alone.
        "named owner": add_call(store, "CA-named", "http://kvs-reader.internal:8081"),
    }
    liveness = EcsOwnerLiveness.load(CLUSTER, own_owner=control_url(own_ip), started_at=started_at)
    assert liveness is not None
    now = time.time()
    completed = complete_abandoned_calls(store, liveness.owner_is_gone, RETENTION_S, now)

    gone = {"stopped task", "task long gone", "our address, before we started"}
    assert set(completed) == {keys[name] for name in gone}
    for name, key in keys.items():
        call = store.get_call(key)
        assert call is not None
        assert (call.status is CallStatus.COMPLETED) == (name in gone), name
    (message,) = store.list_messages(keys["stopped task"], 10, now)
    assert message.expires_at == pytest.approx(now + RETENTION_S)
    assert {c.key.guid for c in store.list_incomplete_calls()} == {"CA-live", "CA-ours", "CA-named"}


def test_gateway_sweep_completes_nothing_when_the_live_tasks_are_unknown(aws: None) -> None:
    """A wrong cluster, or this task missing from the cluster's list: the live set cannot be
    trusted, so no call is completed."""
    from callscribe.aws.adapters.ecs_tasks import EcsOwnerLiveness

    create_table(boto3.client("dynamodb"), "calls")
    store = DynamoStore("calls")
    ((_, ip),) = run_tasks(1)
    add_call(store, "CA-gone", control_url("10.0.9.9"))
    assert EcsOwnerLiveness.load("no-such-cluster", control_url(ip), time.time()) is None
    assert EcsOwnerLiveness.load(CLUSTER, control_url("10.0.7.7"), time.time()) is None
    assert [c.key.guid for c in store.list_incomplete_calls()] == ["CA-gone"]


async def test_gateway_task_sweeps_on_start(
    aws: None, monkeypatch: pytest.MonkeyPatch, asr_engine: Any
) -> None:
    """The gateway service, as its container starts it: its lifespan sweeps the table."""
    from starlette.testclient import TestClient

    from callscribe.aws.services.gateway_service import create_gateway_app
    from callscribe.aws.services.ingest_task import (
        TaskJobs,
        abandoned_call_sweep,
        build_runtime,
    )
    from callscribe.aws.settings import AwsSettings
    from callscribe.config import Settings, SiprecSettings
    from callscribe.ingest import Ingest
    from tests.aws_fixtures import create_resources

    resources = create_resources()
    ((_, ip),) = run_tasks(1)
    store = DynamoStore(resources.table_name)
    gone = add_call(store, "CA-gone", control_url("10.0.9.9"))
    aws_settings = AwsSettings(
        table_name=resources.table_name,
        delivery_queue_url=resources.queue_url,
        event_bus_name=resources.event_bus_name,
        token_secret_arn=resources.token_secret_arn,
        control_secret_arn=resources.control_secret_arn,
        control_url=control_url(ip),
        ecs_cluster=CLUSTER,
    )
    settings = Settings(blob_s3_bucket=resources.bucket_name, siprec=SiprecSettings(port=0))
    runtime, secret = build_runtime(aws_settings, settings, Ingest.TWILIO, asr=asr_engine)
    sweep = abandoned_call_sweep(aws_settings, settings, runtime)
    assert sweep is not None
    app = create_gateway_app(runtime, secret, aws_settings.control_port, TaskJobs(sweep=sweep))

    def swept() -> bool:
        call = store.get_call(gone)
        return call is not None and call.status is CallStatus.COMPLETED

    with TestClient(app):
        deadline = time.monotonic() + 60
        while not swept():
            assert time.monotonic() < deadline, "the gateway did not sweep on start"
            await asyncio.sleep(0.1)
