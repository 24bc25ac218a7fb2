"""Shared by the infra tests: deployment settings and stacks synthesised once per process.

Synthesis needs no AWS account and no Docker: image assets are only fingerprinted.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_lambda as lambda_  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from infra.config import load_config  # noqa: E402
from infra.stack import CallScribeStack  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"
CERTIFICATE_ARN = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0b9e1c3a-5d4f-4e2b-9a7c-1f2e3d4c5b6a"
EXPORTER_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:callscribe-exporter"
# What an operator must add to cdk.json's context (README "Deploy to AWS").
REQUIRED = {
    "gatewayDomainName": "gw.callscribe.example.com",
    "certificateArn": CERTIFICATE_ARN,
    "webhookUrl": "https://hooks.example.com/callscribe",
}
# Every optional feature switched on at once.
VARIANT = {
    "stage": "staging",
    "apiDomainName": "api.callscribe.example.com",
    "hostedZoneId": "Z0123456789ABCDEFGHIJ",
    "hostedZoneName": "callscribe.example.com",
    "vpcId": "vpc-0a1b2c3d4e5f60718",
    "webhookViaNat": True,
    # The account has its API Gateway logging role already.
    "apiGatewayLoggingRole": False,
    "webhookTimeoutS": 8,
    "gpuInstanceType": "g6.xlarge",
    "asrModel": "distil-large-v3",
    "retentionDays": 30,
    "recordingRetentionDays": 3,
    "webhookMaxQueueAgeS": 300,
    "logRetentionDays": 90,
    # SIPREC recorders for two SBC networks, every setting away from its default; an SBC behind
    # NAT gets the one task's advertised address.
    "siprecSourceCidrs": ["10.60.0.0/16", "192.168.40.0/24"],
    "siprecRtpPorts": "30000-30399",
    "siprecMaxCallsPerTask": 40,
    "siprecDesiredCount": 1,
    "siprecMinCount": 1,
    "siprecMaxCount": 1,
    "siprecCpu": 2048,
    "siprecMemoryMib": 4096,
    "siprecCpuTargetPercent": 50,
    "siprecAdvertisedAddress": "100.64.10.5",
    # Alarms mailed to the operators, with thresholds of their own.
    "alarmEmail": "oncall@callscribe.example.com",
    "alarmDeliveryP95Ms": 1500,
}


# What `cdk deploy` caches in cdk.context.json after looking up VARIANT's vpcId: two AZs of
# public and private subnets.
VPC_LOOKUP = {
    f"vpc-provider:account={ACCOUNT}:filter.vpc-id={VARIANT['vpcId']}:region={REGION}"
    ":returnAsymmetricSubnets=true": {
        "vpcId": VARIANT["vpcId"],
        "vpcCidrBlock": "10.20.0.0/16",
        "ownerAccountId": ACCOUNT,
        "availabilityZones": [],
        "subnetGroups": [
            {
                "name": group,
                "type": group.capitalize(),
                "subnets": [
                    {
                        "subnetId": f"subnet-0{index}{n}a2b3c4d5e6f7089",
                        "cidr": f"10.20.{index * 16 + n}.0/24",
                        "availabilityZone": f"{REGION}{'ab'[n]}",
                        "routeTableId": f"rtb-0{index}{n}a2b3c4d5e6f7089",
                    }
                    for n in range(2)
                ],
            }
            for index, group in enumerate(("public", "private"))
        ],
    }
}


def cdk_json_context() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


def context(**overrides: Any) -> dict[str, Any]:
    return {**cdk_json_context(), **REQUIRED, **overrides}


def synth(ctx: dict[str, Any], *, with_exporter: bool = False) -> CallScribeStack:
    app = cdk.App(context=ctx)
    config = load_config(ctx)
    stack = CallScribeStack(
        app,
        f"CallScribe-{config.stage}",
        config=config,
        daily_export=not with_exporter,
        env=cdk.Environment(account=ACCOUNT, region=REGION),
    )
    if with_exporter:
        # An existing function by ARN: only the schedule's wiring is under test here.
        stack.add_daily_export(lambda_.Function.from_function_arn(stack, "Exporter", EXPORTER_ARN))
    return stack


@cache
def default_stack() -> CallScribeStack:
    return synth(context())


@cache
def default_template() -> Template:
    return Template.from_stack(default_stack())


@cache
def variant_stack() -> CallScribeStack:
    return synth(context(**VARIANT, **VPC_LOOKUP), with_exporter=True)


@cache
def variant_template() -> Template:
    return Template.from_stack(variant_stack())


def logical_id(construct: Any) -> str:
    """The logical id CDK gave a construct's CloudFormation resource (never hard-coded)."""
    resource = construct.node.default_child
    if resource is None:
        (resource,) = [c for c in construct.node.children if isinstance(c, cdk.CfnResource)]
    return cdk.Stack.of(construct).get_logical_id(resource)


def resources_of(template: Template, type_: str) -> dict[str, dict[str, Any]]:
    return template.find_resources(type_)


def only(template: Template, type_: str) -> dict[str, Any]:
    found = template.find_resources(type_)
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return next(iter(found.values()))


def policy_statements(template: Template, role: Any) -> list[dict[str, Any]]:
    """Every statement of every inline policy attached to `role`."""
    role_ref = {"Ref": logical_id(role)}
    statements = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if role_ref in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def actions_on(statements: list[dict[str, Any]], resource_ref: dict[str, Any]) -> set[str]:
    """The actions granted on a resource (by Ref or GetAtt of its logical id)."""
    logical = next(iter(resource_ref.values()))
    logical = logical[0] if isinstance(logical, list) else logical
    granted = set()
    for statement in statements:
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        if any(logical in json.dumps(r) for r in resources):
            actions = statement["Action"]
            granted.update(actions if isinstance(actions, list) else [actions])
    return granted


def container_environment(task_definition: dict[str, Any]) -> dict[str, Any]:
    (container,) = task_definition["Properties"]["ContainerDefinitions"]
    return {item["Name"]: item["Value"] for item in container["Environment"]}


def ecs_actions(statements: list[dict[str, Any]]) -> set[str]:
    return {
        action
        for statement in statements
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if action.startswith("ecs:")
    }


def assert_protects_itself_and_drains(statements: list[dict[str, Any]], cluster: Any) -> None:
    """A task role's grants for scale-in protection while it holds calls and for draining when
    its deployment is replaced: on this cluster's tasks and services only, and no other ECS
    action than those and the cluster's task listing."""
    cluster_ref = {"Ref": logical_id(cluster)}
    (protection,) = [s for s in statements if "ecs:UpdateTaskProtection" in s["Action"]]
    assert sorted(protection["Action"]) == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    assert protection["Resource"] == {
        "Fn::Join": ["", [f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/", cluster_ref, "/*"]]
    }
    (deployments,) = [s for s in statements if "ecs:DescribeServices" in s["Action"]]
    assert deployments["Action"] == "ecs:DescribeServices"
    assert deployments["Resource"] == {
        "Fn::Join": ["", [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/", cluster_ref, "/*"]]
    }
    (listing,) = [s for s in statements if "ecs:ListTasks" in s["Action"]]
    assert sorted(listing["Action"]) == ["ecs:DescribeTasks", "ecs:ListTasks"]
    assert listing["Condition"] == {
        "ArnEquals": {"ecs:cluster": {"Fn::GetAtt": [logical_id(cluster), "Arn"]}}
    }
    assert ecs_actions(statements) == {
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:UpdateTaskProtection",
        "ecs:GetTaskProtection",
        "ecs:DescribeServices",
    }
