"""The SIPREC recorders in the AWS stack: the internal NLB that SBCs send INVITEs to, the Fargate
tasks that answer them (SIP and RTP only from the SBCs' networks), the task role, the container's
contract, scaling; and no trace of any of it without `siprecSourceCidrs`. Template properties
only, never hashed logical ids."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template

from infra.config import SIPREC_FIXED_PORTS
from infra.images import SIPREC_RECORDER_COMMAND
from infra.ingest import CONTROL_PORT, INGEST_PORT
from infra.siprec import SIP_PORT
from infra.stack import CallScribeStack
from tests.infra_support import (
    ACCOUNT,
    REGION,
    VARIANT,
    actions_on,
    container_environment,
    context,
    default_stack,
    default_template,
    logical_id,
    policy_statements,
    synth,
    variant_stack,
    variant_template,
)
from tests.test_infra_nag import findings
from tests.test_infra_stack import SECRET_READ, bucket_actions

pytestmark = pytest.mark.slow

SBC_NETWORKS = ("10.50.0.0/16", "192.168.7.0/24")
EVERYWHERE = "0.0.0.0/0"


@pytest.fixture(scope="module")
def recorders() -> tuple[CallScribeStack, Template]:
    """cdk.json's defaults plus two SBC networks, given as `-c siprecSourceCidrs=…` gives them."""
    stack = synth(context(siprecSourceCidrs=",".join(SBC_NETWORKS)))
    return stack, Template.from_stack(stack)


def ref(construct: Any) -> dict:
    return {"Ref": logical_id(construct)}


def group_id(group: Any) -> dict:
    return {"Fn::GetAtt": [logical_id(group), "GroupId"]}


def peer(rule: dict) -> str:
    """A rule's other side: its CIDR, or the logical id of the security group it names."""
    if "CidrIp" in rule:
        return rule["CidrIp"]
    other = rule.get("SourceSecurityGroupId") or rule["DestinationSecurityGroupId"]
    return other["Fn::GetAtt"][0]


def rules(template: Template, group: Any, direction: str) -> set[tuple[str, int, int, str]]:
    """(protocol, first port, last port, peer) of the group's rules in `direction` ("Ingress"
    or "Egress"), inline or separate resources alike."""
    inline = template.find_resources("AWS::EC2::SecurityGroup")[logical_id(group)]["Properties"]
    found = list(inline.get(f"SecurityGroup{direction}", []))
    found += [
        resource["Properties"]
        for resource in template.find_resources(f"AWS::EC2::SecurityGroup{direction}").values()
        if resource["Properties"]["GroupId"] == group_id(group)
    ]
    return {(r["IpProtocol"], r.get("FromPort"), r.get("ToPort"), peer(r)) for r in found}


def sbc_rules(networks: tuple[str, ...], rtp: tuple[int, int] | None) -> set[tuple]:
    ports = [("tcp", SIP_PORT, SIP_PORT), ("udp", SIP_PORT, SIP_PORT)]
    if rtp is not None:
        ports.append(("udp", *rtp))
    return {(protocol, first, last, cidr) for cidr in networks for protocol, first, last in ports}


def scaling(template: Template, service: Any) -> tuple[dict, list[dict]]:
    """The service's scalable target and its policies' target-tracking configurations."""
    service_id = logical_id(service)
    (target_id, target) = next(
        (target_id, target["Properties"])
        for target_id, target in template.find_resources(
            "AWS::ApplicationAutoScaling::ScalableTarget"
        ).items()
        if service_id in json.dumps(target["Properties"]["ResourceId"])
    )
    policies = [
        policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for policy in template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if policy["Properties"]["ScalingTargetId"] == {"Ref": target_id}
    ]
    return target, policies


def recorder_task(stack: CallScribeStack, template: Template) -> dict:
    assert stack.siprec is not None
    return template.find_resources("AWS::ECS::TaskDefinition")[
        logical_id(stack.siprec.service.task_definition)
    ]


# --- Off unless the SBCs' networks are given -------------------------------------------------


def test_without_sbc_networks_the_stack_has_no_siprec_resources():
    stack = default_stack()
    template = default_template()
    assert stack.siprec is None
    assert not stack.config.siprec_enabled
    assert not template.find_resources(
        "AWS::ElasticLoadBalancingV2::LoadBalancer", {"Properties": {"Type": "network"}}
    )
    assert not template.find_resources(
        "AWS::ElasticLoadBalancingV2::TargetGroup", {"Properties": {"Protocol": "TCP_UDP"}}
    )
    assert "SiprecLoadBalancerDns" not in template.find_outputs("*")
    containers = {
        task["Properties"]["ContainerDefinitions"][0]["Name"]
        for task in template.find_resources("AWS::ECS::TaskDefinition").values()
    }
    assert containers == {"gateway", "reader", "asr"}
    assert "SIPREC" not in json.dumps(template.to_json()).upper()
    assert not [path for path in (c.node.path for c in stack.node.find_all()) if "Siprec" in path]


# --- The internal NLB ------------------------------------------------------------------------


def test_nlb_is_internal_in_the_private_subnets_with_a_tcp_udp_listener_on_5070(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    (balancer_id, balancer) = next(
        iter(
            template.find_resources(
                "AWS::ElasticLoadBalancingV2::LoadBalancer", {"Properties": {"Type": "network"}}
            ).items()
        )
    )
    properties = balancer["Properties"]
    assert properties["Scheme"] == "internal"
    assert properties["Subnets"] == [ref(s) for s in stack.network.vpc.private_subnets]
    assert properties["SecurityGroups"] == [group_id(stack.siprec.load_balancer_security_group)]
    attributes = {a["Key"]: a["Value"] for a in properties["LoadBalancerAttributes"]}
    # An SBC sends to one of the NLB's addresses; that address must reach every zone's tasks.
    assert attributes["load_balancing.cross_zone.enabled"] == "true"
    (listener,) = [
        listener["Properties"]
        for listener in template.find_resources("AWS::ElasticLoadBalancingV2::Listener").values()
        if listener["Properties"]["LoadBalancerArn"] == {"Ref": balancer_id}
    ]
    assert (listener["Port"], listener["Protocol"]) == (5070, "TCP_UDP")
    assert listener["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": ref(stack.siprec.target_group)}
    ]
    output = template.find_outputs("SiprecLoadBalancerDns")["SiprecLoadBalancerDns"]
    assert output["Value"] == {"Fn::GetAtt": [balancer_id, "DNSName"]}


def test_target_group_sends_to_live_tasks_by_ip_and_drains_briefly(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    group = template.find_resources("AWS::ElasticLoadBalancingV2::TargetGroup")[
        logical_id(stack.siprec.target_group)
    ]["Properties"]
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("TCP_UDP", 5070, "ip")
    # Liveness, not readiness: ECS replaces a task its load balancer finds unhealthy, so a
    # check that failed while a task is full or draining would cut its live calls.
    assert {
        key: group[key]
        for key in (
            "HealthCheckProtocol",
            "HealthCheckPort",
            "HealthCheckPath",
            "Matcher",
            "HealthCheckIntervalSeconds",
            "HealthCheckTimeoutSeconds",
            "HealthyThresholdCount",
            "UnhealthyThresholdCount",
        )
    } == {
        "HealthCheckProtocol": "HTTP",
        "HealthCheckPort": "8080",
        "HealthCheckPath": "/healthz",
        "Matcher": {"HttpCode": "200"},
        "HealthCheckIntervalSeconds": 10,
        "HealthCheckTimeoutSeconds": 5,
        "HealthyThresholdCount": 2,
        "UnhealthyThresholdCount": 2,
    }
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    # Calls never pass the NLB: a stopping task's flows only need their last INVITE answered,
    # then they end and the SBC's next packet goes to another task.
    assert attributes == {
        "deregistration_delay.timeout_seconds": "15",
        "deregistration_delay.connection_termination.enabled": "true",
    }
    service = template.find_resources("AWS::ECS::Service")[logical_id(stack.siprec.service)]
    assert service["Properties"]["LoadBalancers"] == [
        {
            "ContainerName": "recorder",
            "ContainerPort": 5070,
            "TargetGroupArn": ref(stack.siprec.target_group),
        }
    ]


# --- Who may reach what ----------------------------------------------------------------------


def test_tasks_admit_sip_and_rtp_only_from_the_sbc_networks(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    siprec = stack.siprec
    assert rules(template, siprec.security_group, "Ingress") == sbc_rules(
        SBC_NETWORKS, (20000, 20999)
    ) | {
        ("tcp", 8080, 8080, logical_id(siprec.load_balancer_security_group)),
        ("tcp", 8081, 8081, logical_id(stack.api.security_group)),
    }
    ecs_service = template.find_resources("AWS::ECS::Service")[logical_id(siprec.service)]
    network = ecs_service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["SecurityGroups"] == [group_id(siprec.security_group)]
    assert network["AssignPublicIp"] == "DISABLED"
    assert [{"Ref": s["Ref"]} for s in network["Subnets"]] == [
        ref(s) for s in stack.network.vpc.private_subnets
    ]


def test_nlb_admits_sip_from_the_sbc_networks_and_sends_only_to_the_recorders(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    balancer_group = stack.siprec.load_balancer_security_group
    recorders_group = logical_id(stack.siprec.security_group)
    assert rules(template, balancer_group, "Ingress") == sbc_rules(SBC_NETWORKS, None)
    # The forwarded SIP and the health checks, and nothing else.
    assert rules(template, balancer_group, "Egress") == {
        ("tcp", 5070, 5070, recorders_group),
        ("udp", 5070, 5070, recorders_group),
        ("tcp", 8080, 8080, recorders_group),
    }


def test_nothing_siprec_is_open_to_everyone(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    for group in (stack.siprec.security_group, stack.siprec.load_balancer_security_group):
        assert EVERYWHERE not in {rule[3] for rule in rules(template, group, "Ingress")}
    # Across the stack, the gateway's public HTTPS listener is the only thing open to all.
    open_to_all = [
        rule
        for group in template.find_resources("AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
        if rule.get("CidrIp") == EVERYWHERE
    ] + [
        rule["Properties"]
        for rule in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"].get("CidrIp") == EVERYWHERE
    ]
    assert [(r["IpProtocol"], r["FromPort"]) for r in open_to_all] == [("tcp", 443)]


def test_control_port_only_from_the_api_function_and_asr_from_the_recorders(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    control = {
        rule
        for rule in rules(template, stack.siprec.security_group, "Ingress")
        if rule[1] <= CONTROL_PORT <= rule[2]
    }
    assert control == {("tcp", 8081, 8081, logical_id(stack.api.security_group))}
    asr = rules(template, stack.asr.service.connections.security_groups[0], "Ingress")
    assert ("tcp", 8000, 8000, logical_id(stack.siprec.security_group)) in asr


# --- The task: role, container, scaling ------------------------------------------------------


def test_task_role_has_the_gateways_grants_and_protects_only_this_clusters_tasks(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    statements = policy_statements(template, stack.siprec.service.task_definition.task_role)
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"} <= actions_on(
        statements, ref(stack.data.table)
    )
    bus_arn = {"Fn::GetAtt": [logical_id(stack.events.bus), "Arn"]}
    assert [s["Resource"] for s in statements if s["Action"] == "events:PutEvents"] == [bus_arn]
    assert actions_on(statements, ref(stack.data.token_secret)) == SECRET_READ
    assert actions_on(statements, ref(stack.data.control_secret)) == SECRET_READ
    assert not actions_on(statements, ref(stack.data.webhook_secret))
    by_pattern = bucket_actions(statements, stack.data.exports_bucket)
    assert "s3:PutObject" in by_pattern["/recordings/*"]
    assert "/exports/*" not in by_pattern
    assert not any(a.startswith("s3:Delete") for actions in by_pattern.values() for a in actions)

    cluster_arn = {"Fn::GetAtt": [logical_id(stack.cluster), "Arn"]}
    (listing,) = [s for s in statements if "ecs:ListTasks" in s["Action"]]
    assert sorted(listing["Action"]) == ["ecs:DescribeTasks", "ecs:ListTasks"]
    assert listing["Condition"] == {"ArnEquals": {"ecs:cluster": cluster_arn}}
    (protection,) = [s for s in statements if "ecs:UpdateTaskProtection" in s["Action"]]
    assert sorted(protection["Action"]) == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    assert protection["Resource"] == {
        "Fn::Join": ["", [f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/", ref(stack.cluster), "/*"]]
    }
    # A task reads its service's deployments (to drain once replaced), in this cluster only.
    (deployments,) = [s for s in statements if "ecs:DescribeServices" in s["Action"]]
    assert deployments["Action"] == "ecs:DescribeServices"
    assert deployments["Resource"] == {
        "Fn::Join": ["", [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/", ref(stack.cluster), "/*"]]
    }
    ecs_actions = {
        action
        for statement in statements
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if action.startswith("ecs:")
    }
    assert ecs_actions == {
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:UpdateTaskProtection",
        "ecs:GetTaskProtection",
        "ecs:DescribeServices",
    }
    # A replaced task leaves its own target group, and may touch no other.
    (leaving,) = [s for s in statements if "elasticloadbalancing" in json.dumps(s["Action"])]
    assert leaving["Action"] == "elasticloadbalancing:DeregisterTargets"
    assert leaving["Resource"] == ref(stack.siprec.target_group)


def test_container_runs_the_recorder_with_its_ports_and_environment(recorders):
    stack, template = recorders
    task = recorder_task(stack, template)["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    assert (task["Cpu"], task["Memory"]) == ("1024", "2048")
    (container,) = task["ContainerDefinitions"]
    assert container["Name"] == "recorder"
    assert container["Command"] == list(SIPREC_RECORDER_COMMAND)
    gateway_task = template.find_resources("AWS::ECS::TaskDefinition")[
        logical_id(stack.gateway.service.task_definition)
    ]["Properties"]
    assert container["Image"] == gateway_task["ContainerDefinitions"][0]["Image"]
    assert [
        (p.get("ContainerPort"), p.get("ContainerPortRange"), p["Protocol"])
        for p in container["PortMappings"]
    ] == [
        (8080, None, "tcp"),
        (8081, None, "tcp"),
        (5070, None, "tcp"),
        (5070, None, "udp"),
        # awsvpc: the task's own ENI carries the whole range.
        (None, "20000-20999", "udp"),
    ]
    assert container_environment(recorder_task(stack, template)) == {
        "CALLSCRIBE_TABLE_NAME": ref(stack.data.table),
        "CALLSCRIBE_DELIVERY_QUEUE_URL": ref(stack.events.delivery_queue),
        "CALLSCRIBE_EVENT_BUS_NAME": ref(stack.events.bus),
        "CALLSCRIBE_TOKEN_SECRET_ARN": ref(stack.data.token_secret),
        "CALLSCRIBE_CONTROL_SECRET_ARN": ref(stack.data.control_secret),
        "CALLSCRIBE_ASR_URL": "http://asr.prod.callscribe.internal:8000",
        "CALLSCRIBE_PORT": "8080",
        "CALLSCRIBE_CONTROL_PORT": "8081",
        "CALLSCRIBE_MESSAGE_RETENTION_DAYS": "7",
        "CALLSCRIBE_BLOB_S3_BUCKET": ref(stack.data.exports_bucket),
        "CALLSCRIBE_ECS_CLUSTER": {"Fn::GetAtt": [logical_id(stack.cluster), "Arn"]},
        "CALLSCRIBE_SIPREC_PORT": "5070",
        "CALLSCRIBE_SIPREC_RTP_PORTS": "20000-20999",
        # Only SBC networks mapped in the Store are recorded.
        "CALLSCRIBE_SIPREC_TENANT": "",
        "CALLSCRIBE_SIPREC_MAX_CALLS": "25",
        "CALLSCRIBE_SIPREC_DRAIN_TIMEOUT_S": "100",
        "CALLSCRIBE_SIPREC_TARGET_GROUP_ARN": ref(stack.siprec.target_group),
        "LOG_LEVEL": "INFO",
        "CALLSCRIBE_LIVE_CALLBACK_URL": stack.resolve(stack.live.callback_url),
    }
    assert container["HealthCheck"]["Command"][-1] == (
        "import urllib.request; urllib.request.urlopen('http://localhost:8080/healthz', timeout=4)"
    )
    # Fargate's maximum: the open utterances are finished and published after SIGTERM.
    assert container["StopTimeout"] == 120
    assert container["LogConfiguration"]["Options"]["awslogs-stream-prefix"] == "siprec-recorder"


def test_service_scales_on_cpu_between_its_counts(recorders):
    stack, template = recorders
    assert stack.siprec is not None
    service = template.find_resources("AWS::ECS::Service")[logical_id(stack.siprec.service)]
    assert service["Properties"]["DesiredCount"] == 2
    assert service["Properties"]["HealthCheckGracePeriodSeconds"] == 60
    assert service["Properties"]["DeploymentConfiguration"]["MinimumHealthyPercent"] == 100
    target, (policy,) = scaling(template, stack.siprec.service)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 10)
    assert policy == {
        "PredefinedMetricSpecification": {
            "PredefinedMetricType": "ECSServiceAverageCPUUtilization"
        },
        "TargetValue": 60,
        "ScaleOutCooldown": 60,
        "ScaleInCooldown": 600,
    }


def test_siprec_deployment_has_no_unacknowledged_cdk_nag_findings(recorders):
    stack, _ = recorders
    assert findings(stack) == []


# --- Every SIPREC setting away from its default (the variant deployment) ---------------------


def test_settings_reach_the_task_its_rules_and_its_scaling():
    stack = variant_stack()
    template = variant_template()
    assert stack.siprec is not None
    task = recorder_task(stack, template)
    environment = container_environment(task)
    assert {k: v for k, v in environment.items() if k.startswith("CALLSCRIBE_SIPREC_")} == {
        "CALLSCRIBE_SIPREC_PORT": "5070",
        "CALLSCRIBE_SIPREC_RTP_PORTS": "30000-30399",
        "CALLSCRIBE_SIPREC_TENANT": "",
        "CALLSCRIBE_SIPREC_MAX_CALLS": "40",
        "CALLSCRIBE_SIPREC_DRAIN_TIMEOUT_S": "100",
        "CALLSCRIBE_SIPREC_TARGET_GROUP_ARN": ref(stack.siprec.target_group),
        "CALLSCRIBE_SIPREC_ADVERTISED_ADDRESS": "100.64.10.5",
    }
    assert environment["CALLSCRIBE_ASR_URL"] == "http://asr.staging.callscribe.internal:8000"
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert container["PortMappings"][-1]["ContainerPortRange"] == "30000-30399"
    assert (task["Properties"]["Cpu"], task["Properties"]["Memory"]) == ("2048", "4096")
    networks = tuple(VARIANT["siprecSourceCidrs"])
    assert rules(template, stack.siprec.security_group, "Ingress") == sbc_rules(
        networks, (30000, 30399)
    ) | {
        ("tcp", 8080, 8080, logical_id(stack.siprec.load_balancer_security_group)),
        ("tcp", 8081, 8081, logical_id(stack.api.security_group)),
    }
    # In the existing VPC's private subnets, as everything else.
    balancer = template.find_resources(
        "AWS::ElasticLoadBalancingV2::LoadBalancer", {"Properties": {"Type": "network"}}
    )
    (properties,) = [b["Properties"] for b in balancer.values()]
    assert properties["Scheme"] == "internal"
    assert properties["Subnets"] == [
        subnet.subnet_id for subnet in stack.network.vpc.private_subnets
    ]
    target, (policy,) = scaling(template, stack.siprec.service)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 1)
    assert policy["TargetValue"] == 50


def test_the_rtp_range_may_not_include_the_containers_other_ports():
    assert SIPREC_FIXED_PORTS == (SIP_PORT, INGEST_PORT, CONTROL_PORT)
