"""The SIPREC recorder task's own pieces, against real HTTP endpoints standing in for what ECS
gives a task: the task metadata endpoint (its private address) and the agent's task-protection
endpoint (scale-in protection while calls are live)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from callscribe.aws.adapters.ecs_tasks import DeploymentCheck, drain_when_superseded
from callscribe.aws.adapters.target_group import leave_target_group
from callscribe.aws.adapters.task_protection import (
    ScaleInGuard,
    TaskProtection,
    TaskProtectionError,
)
from callscribe.aws.services.ingest_task import TaskJobs
from callscribe.aws.services.siprec_service import with_advertised_address
from callscribe.config import Settings, SiprecSettings
from tests.ecs_support import TASK_IP, FakeEcsEndpoints, ecs

__all__ = ["ecs"]  # the fixture


def test_in_ecs_the_sdp_advertises_the_tasks_private_address(
    ecs: FakeEcsEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri)
    settings = with_advertised_address(Settings(siprec=SiprecSettings()))
    assert settings.siprec.advertised_address == TASK_IP


def test_a_configured_advertised_address_wins_over_the_tasks(
    ecs: FakeEcsEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri)
    configured = Settings(siprec=SiprecSettings(advertised_address="172.16.0.9"))
    assert with_advertised_address(configured).siprec.advertised_address == "172.16.0.9"


def test_outside_ecs_the_address_is_left_to_the_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    assert with_advertised_address(Settings()).siprec.advertised_address is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_scale_in_protection_is_held_exactly_while_calls_are_live(
    ecs: FakeEcsEndpoints,
) -> None:
    live = [0]
    clock = Clock()
    guard = ScaleInGuard(
        TaskProtection(ecs.agent_uri), lambda: live[0], expires_minutes=10, clock=clock
    )
    await guard.check()
    assert ecs.protection_requests == [] and not guard.protected
    live[0] = 2
    await guard.check()
    assert ecs.protection_requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 10}]
    # Still busy: nothing asked again until half the protection has gone by, then renewed.
    clock.now = 299.0
    await guard.check()
    assert len(ecs.protection_requests) == 1
    clock.now = 300.0
    await guard.check()
    assert ecs.protection_requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 10}
    assert len(ecs.protection_requests) == 2
    live[0] = 0
    await guard.check()
    assert ecs.protection_requests[-1] == {"ProtectionEnabled": False}
    assert not guard.protected
    await guard.check()
    assert len(ecs.protection_requests) == 3


async def test_a_refused_protection_is_an_error_and_is_asked_for_again(
    ecs: FakeEcsEndpoints,
) -> None:
    ecs.refuse_protection = True
    guard = ScaleInGuard(TaskProtection(ecs.agent_uri), lambda: 1)
    with pytest.raises(TaskProtectionError, match="AccessDenied"):
        await guard.check()
    assert not guard.protected
    ecs.refuse_protection = False
    await guard.check()
    assert guard.protected and len(ecs.protection_requests) == 2


async def test_an_unreachable_agent_is_an_error() -> None:
    with pytest.raises(TaskProtectionError, match="unreachable"):
        await TaskProtection("http://127.0.0.1:9/agent", timeout_s=1).set(True)


# A rolling deployment: the old tasks take no new calls -------------------------------------

CLUSTER = "callscribe-test"
SERVICE = "siprec"


@pytest.fixture
def ecs_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A cluster with the SIPREC service (moto), and a task its first deployment started."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        ec2 = boto3.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as CDK's
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=SERVICE, Description="tasks", VpcId=vpc)
        network = {
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group["GroupId"]]}
        }
        ecs = boto3.client("ecs")
        ecs.create_cluster(clusterName=CLUSTER)
        ecs.register_task_definition(
            family=SERVICE,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="1024",
            memory="2048",
            containerDefinitions=[{"name": SERVICE, "image": "callscribe", "memory": 2048}],
        )
        ecs.create_service(
            cluster=CLUSTER,
            serviceName=SERVICE,
            taskDefinition=SERVICE,
            desiredCount=1,
            launchType="FARGATE",
            networkConfiguration=network,
        )
        ecs.network = network  # for the tasks the tests run
        yield ecs


def service_task(ecs: Any, started_by: str, group: str = f"service:{SERVICE}") -> str:
    (task,) = ecs.run_task(
        cluster=CLUSTER,
        taskDefinition=SERVICE,
        launchType="FARGATE",
        networkConfiguration=ecs.network,
        startedBy=started_by,
        group=group,
    )["tasks"]
    return str(task["taskArn"])


def primary_deployment(ecs: Any) -> str:
    (service,) = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"]
    (primary,) = [d["id"] for d in service["deployments"] if d["status"] == "PRIMARY"]
    return str(primary)


def test_a_task_of_the_current_deployment_is_not_superseded_until_a_new_one_rolls_out(
    ecs_cluster: Any,
) -> None:
    check = DeploymentCheck(CLUSTER, service_task(ecs_cluster, primary_deployment(ecs_cluster)))
    assert not check.superseded(ecs_cluster)
    ecs_cluster.update_service(cluster=CLUSTER, service=SERVICE, forceNewDeployment=True)
    assert check.superseded(ecs_cluster)


def test_a_task_no_service_started_is_never_superseded(ecs_cluster: Any) -> None:
    by_hand = DeploymentCheck(CLUSTER, service_task(ecs_cluster, "operator", group="family:x"))
    ecs_cluster.update_service(cluster=CLUSTER, service=SERVICE, forceNewDeployment=True)
    assert not by_hand.superseded(ecs_cluster)


async def test_a_superseded_task_stops_taking_calls_and_a_failed_look_is_tried_again(
    ecs_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    check = DeploymentCheck(CLUSTER, service_task(ecs_cluster, primary_deployment(ecs_cluster)))
    stopped: list[bool] = []
    denied = [True]
    real_describe = ecs_cluster.describe_services

    def describe_services(**kwargs: Any) -> Any:
        if denied[0]:
            denied[0] = False
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "DescribeServices"
            )
        return real_describe(**kwargs)

    ecs_cluster.describe_services = describe_services
    watching = asyncio.get_running_loop().create_task(
        drain_when_superseded(check, lambda: stopped.append(True), 0.05, ecs=ecs_cluster)
    )
    await asyncio.sleep(0.3)
    assert not stopped and not watching.done()
    assert "cannot tell whether this task was replaced" in caplog.text
    ecs_cluster.update_service(cluster=CLUSTER, service=SERVICE, forceNewDeployment=True)
    await asyncio.wait_for(watching, 10)
    assert stopped == [True]


# A replaced recorder leaves the NLB's target group ---------------------------------------


def test_a_recorder_leaves_its_target_group_and_a_refusal_is_only_logged(
    ecs_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    elbv2 = boto3.client("elbv2")
    vpc = boto3.client("ec2").describe_vpcs()["Vpcs"][-1]["VpcId"]
    group = elbv2.create_target_group(
        Name="siprec", Protocol="TCP_UDP", Port=5070, VpcId=vpc, TargetType="ip"
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(
        TargetGroupArn=group, Targets=[{"Id": "10.0.1.7", "Port": 5070}, {"Id": "10.0.1.8"}]
    )

    def registered() -> set[str]:
        health = elbv2.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]
        return {d["Target"]["Id"] for d in health}

    assert registered() == {"10.0.1.7", "10.0.1.8"}
    assert asyncio.run(leave_target_group(group, "10.0.1.7", 5070)) is True
    assert registered() == {"10.0.1.8"}
    missing = group.replace("siprec", "nothere")
    assert asyncio.run(leave_target_group(missing, "10.0.1.8", 5070)) is False
    assert "could not leave target group" in caplog.text


async def test_once_replaced_a_task_stops_taking_calls_then_does_what_else_it_must(
    ecs_cluster: Any,
) -> None:
    task = service_task(ecs_cluster, primary_deployment(ecs_cluster))
    ecs_cluster.update_service(cluster=CLUSTER, service=SERVICE, forceNewDeployment=True)
    steps: list[str] = []

    class Runtime:
        def stop_taking_calls(self) -> None:
            steps.append("stopped taking calls")

    async def leave() -> bool:
        steps.append("left the load balancer")
        return True

    jobs = TaskJobs(deployment=DeploymentCheck(CLUSTER, task), when_replaced=leave)
    (watch,) = jobs.coroutines(Runtime())  # type: ignore[arg-type]
    await asyncio.wait_for(watch, 30)
    assert steps == ["stopped taking calls", "left the load balancer"]
