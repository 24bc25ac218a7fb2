"""What `cdk deploy` creates: the synthesised template's properties that the runtime contract
and the operators depend on (never its hashed logical ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Match

from callscribe.aws.adapters.eventbridge_bus import DETAIL_TYPE, SOURCE
from infra.events import EVENT_SOURCE, TRANSCRIPT_DETAIL_TYPE
from infra.images import (
    API_HANDLER,
    EXPORTER_HANDLER,
    KVS_READER_COMMAND,
    TWILIO_GATEWAY_COMMAND,
    WEBHOOK_HANDLER,
)
from tests.infra_support import (
    CERTIFICATE_ARN,
    EXPORTER_ARN,
    actions_on,
    assert_protects_itself_and_drains,
    container_environment,
    default_stack,
    default_template,
    logical_id,
    only,
    policy_statements,
    variant_stack,
    variant_template,
)

pytestmark = pytest.mark.slow

SECRET_READ = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}


def ref(construct) -> dict:
    return {"Ref": logical_id(construct)}


def bucket_actions(statements: list[dict], bucket) -> dict[str, set[str]]:
    """Actions granted on a bucket, by what follows its ARN ("" for the bucket itself,
    "/recordings/*" for keys under recordings/)."""
    bucket_id = logical_id(bucket)
    granted: dict[str, set[str]] = {}
    for statement in statements:
        resources = statement["Resource"]
        for resource in resources if isinstance(resources, list) else [resources]:
            if resource == {"Fn::GetAtt": [bucket_id, "Arn"]}:
                suffix = ""
            elif "Fn::Join" in resource and resource["Fn::Join"][1][0] == {
                "Fn::GetAtt": [bucket_id, "Arn"]
            }:
                suffix = "".join(resource["Fn::Join"][1][1:])
            else:
                continue
            actions = statement["Action"]
            granted.setdefault(suffix, set()).update(
                actions if isinstance(actions, list) else [actions]
            )
    return granted


def function_named(template, handler: str) -> dict:
    functions = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"ImageConfig": {"Command": [handler]}}}
    )
    assert len(functions) == 1, f"one function with handler {handler}"
    return next(iter(functions.values()))


# --- DynamoDB -------------------------------------------------------------------------------


def test_one_table_on_demand_with_pitr_ttl_keys_and_gsi():
    template = default_template()
    template.resource_count_is("AWS::DynamoDB::Table", 1)
    template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "DeletionProtectionEnabled": True,
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "TimeToLiveSpecification": {"AttributeName": "ttl", "Enabled": True},
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "AttributeDefinitions": Match.array_equals(
                    [
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                        {"AttributeName": "gsi1pk", "AttributeType": "S"},
                        {"AttributeName": "gsi1sk", "AttributeType": "S"},
                    ]
                ),
                "GlobalSecondaryIndexes": [
                    {
                        "IndexName": "gsi1",
                        "KeySchema": [
                            {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                            {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
            },
        },
    )


# --- Events: delivery queue, webhook Lambda, fan-out bus ---------------------------------------


def test_custom_bus_named_after_the_stage():
    default_template().has_resource_properties("AWS::Events::EventBus", {"Name": "callscribe-prod"})
    variant_template().has_resource_properties(
        "AWS::Events::EventBus", {"Name": "callscribe-staging"}
    )


def test_the_bus_carries_what_the_tasks_put_on_it_and_no_rule_or_pipe_of_ours():
    # Customers write their own rules on the bus; the webhook path does not go through it.
    assert (EVENT_SOURCE, TRANSCRIPT_DETAIL_TYPE) == (SOURCE, DETAIL_TYPE)
    template = default_template()
    assert template.find_resources("AWS::Events::Rule") == {}
    assert template.find_resources("AWS::Pipes::Pipe") == {}
    assert variant_template().find_resources("AWS::Pipes::Pipe") == {}


def test_delivery_queue_is_high_throughput_fifo_with_given_ids_and_a_dead_letter_queue():
    stack = default_stack()
    events = stack.events
    template = default_template()
    queues = template.find_resources("AWS::SQS::Queue")
    # The delivery queue and its dead-letter queue: no ingress queue any more.
    assert set(queues) == {logical_id(events.delivery_queue), logical_id(events.delivery_dlq)}
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
    delivery = queues[logical_id(events.delivery_queue)]["Properties"]
    assert delivery["FifoQueue"] is True
    assert delivery["ContentBasedDeduplication"] is False  # the publisher's message ids
    assert delivery["DeduplicationScope"] == "messageGroup"
    assert delivery["FifoThroughputLimit"] == "perMessageGroupId"
    assert delivery["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [logical_id(events.delivery_dlq), "Arn"]},
        "maxReceiveCount": 3,
    }
    dlq = queues[logical_id(events.delivery_dlq)]["Properties"]
    assert dlq["FifoQueue"] is True and dlq["MessageRetentionPeriod"] == 14 * 86400
    # The webhook Lambda may run for ten POSTs at the webhook timeout each.
    function_timeout = function_named(template, WEBHOOK_HANDLER)["Properties"]["Timeout"]
    assert delivery["VisibilityTimeout"] >= 6 * function_timeout


@pytest.mark.parametrize("service", ["gateway", "kvs_reader", "siprec"])
def test_every_task_that_holds_calls_may_send_to_the_delivery_queue_only(service):
    stack = variant_stack()  # with SIPREC recorders
    template = variant_template()
    role = getattr(stack, service).service.task_definition.task_role
    statements = policy_statements(template, role)
    queue_arn = {"Fn::GetAtt": [logical_id(stack.events.delivery_queue), "Arn"]}
    sqs_statements = [s for s in statements if "sqs:" in json.dumps(s["Action"])]
    assert sqs_statements == [
        {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": queue_arn}
    ]
    bus_arn = {"Fn::GetAtt": [logical_id(stack.events.bus), "Arn"]}
    assert [s["Resource"] for s in statements if s["Action"] == "events:PutEvents"] == [bus_arn]


def test_every_queue_refuses_non_tls_access():
    template = default_template()
    queue_ids = set(template.find_resources("AWS::SQS::Queue"))
    policies = template.find_resources("AWS::SQS::QueuePolicy")
    protected = set()
    for policy in policies.values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement.get("Condition") == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                protected.update(q["Ref"] for q in policy["Properties"]["Queues"])
    assert protected == queue_ids


def test_webhook_function_consumes_the_delivery_queue_outside_the_vpc():
    stack = default_stack()
    template = default_template()
    function = function_named(template, WEBHOOK_HANDLER)["Properties"]
    assert function["PackageType"] == "Image"
    assert "VpcConfig" not in function
    assert function["TracingConfig"] == {"Mode": "Active"}
    assert function["Environment"]["Variables"] == {
        "CALLSCRIBE_TABLE_NAME": ref(stack.data.table),
        "CALLSCRIBE_WEBHOOK_URL": "https://hooks.example.com/callscribe",
        "CALLSCRIBE_WEBHOOK_SECRET_ARN": ref(stack.data.webhook_secret),
        "CALLSCRIBE_WEBHOOK_TIMEOUT_S": "5",
        "CALLSCRIBE_MESSAGE_RETENTION_DAYS": "7",
        "CALLSCRIBE_SECRETS_PREFIX": "callscribe/prod/",
        "CALLSCRIBE_WEBHOOK_MAX_QUEUE_AGE_S": "120",
        "POWERTOOLS_SERVICE_NAME": "callscribe-webhook",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "LOG_LEVEL": "INFO",
    }
    # The one event source mapping: the delivery queue, ten to a batch (FIFO's maximum, and no
    # batching window: FIFO sources have none), failed messages reported one by one.
    mapping = only(template, "AWS::Lambda::EventSourceMapping")["Properties"]
    assert mapping == {
        "EventSourceArn": {"Fn::GetAtt": [logical_id(stack.events.delivery_queue), "Arn"]},
        "FunctionName": ref(stack.events.webhook_function),
        "BatchSize": 10,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }


def test_webhook_function_permissions_are_table_writes_and_its_secret():
    stack = default_stack()
    statements = policy_statements(default_template(), stack.events.webhook_function.role)
    table_actions = actions_on(statements, ref(stack.data.table))
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"} <= table_actions
    assert "dynamodb:Query" not in table_actions and "dynamodb:GetItem" not in table_actions
    assert actions_on(statements, ref(stack.data.webhook_secret)) == SECRET_READ
    for secret in (stack.data.token_secret, stack.data.control_secret):
        assert not actions_on(statements, ref(secret))
    # Tenants' credentials: read-only, by name under this stage's webhook/ prefix only.
    tenant_secrets = [
        s
        for s in statements
        if "Fn::Join" in json.dumps(s["Resource"]) and ":secret:" in json.dumps(s["Resource"])
    ]
    assert len(tenant_secrets) == 1
    assert tenant_secrets[0]["Action"] == "secretsmanager:GetSecretValue"
    assert tenant_secrets[0]["Resource"]["Fn::Join"][1][-1] == (":secret:callscribe/prod/webhook/*")
    assert not any(bucket_actions(statements, stack.data.exports_bucket).values())


def test_webhook_via_nat_puts_the_function_in_private_subnets():
    stack = variant_stack()
    function = function_named(variant_template(), WEBHOOK_HANDLER)["Properties"]
    assert function["VpcConfig"]["SubnetIds"]
    variables = function["Environment"]["Variables"]
    assert variables["CALLSCRIBE_WEBHOOK_TIMEOUT_S"] == "8"
    assert variables["CALLSCRIBE_SECRETS_PREFIX"] == "callscribe/staging/"
    assert variables["CALLSCRIBE_WEBHOOK_MAX_QUEUE_AGE_S"] == "300"
    assert function["Timeout"] == 10 * 8 + 30
    assert stack.config.webhook_via_nat


# --- API ------------------------------------------------------------------------------------


def test_api_function_in_private_subnets_with_contract_environment():
    stack = default_stack()
    function = function_named(default_template(), API_HANDLER)["Properties"]
    assert function["PackageType"] == "Image"
    assert function["Environment"]["Variables"] == {
        "CALLSCRIBE_TABLE_NAME": ref(stack.data.table),
        "CALLSCRIBE_TOKEN_SECRET_ARN": ref(stack.data.token_secret),
        "CALLSCRIBE_CONTROL_SECRET_ARN": ref(stack.data.control_secret),
        "CALLSCRIBE_PUBLIC_GATEWAY_URL": "wss://gw.callscribe.example.com",
        "CALLSCRIBE_MESSAGE_RETENTION_DAYS": "7",
        "CALLSCRIBE_BLOB_S3_BUCKET": ref(stack.data.exports_bucket),
        "CALLSCRIBE_RECORDING_RETENTION_DAYS": "7",
        "CALLSCRIBE_EXPORT_RETENTION_DAYS": "7",
        "CALLSCRIBE_KVS_READER_URL": "http://kvs-reader.prod.callscribe.internal:8081",
        # Where the live tokens it issues open the stream (tests/test_infra_live.py).
        "CALLSCRIBE_LIVE_WEBSOCKET_URL": stack.resolve(stack.live.websocket_url),
        "POWERTOOLS_SERVICE_NAME": "callscribe-api",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "LOG_LEVEL": "INFO",
    }
    private_subnets = [{"Ref": logical_id(subnet)} for subnet in stack.network.vpc.private_subnets]
    assert function["VpcConfig"] == {
        "SecurityGroupIds": [{"Fn::GetAtt": [logical_id(stack.api.security_group), "GroupId"]}],
        "SubnetIds": private_subnets,
    }
    assert function["Timeout"] <= 29


def test_api_function_permissions():
    stack = default_stack()
    statements = policy_statements(default_template(), stack.api.function.role)
    table_actions = actions_on(statements, ref(stack.data.table))
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= (
        table_actions
    )
    assert actions_on(statements, ref(stack.data.token_secret)) == SECRET_READ
    assert actions_on(statements, ref(stack.data.control_secret)) == SECRET_READ
    assert not actions_on(statements, ref(stack.data.webhook_secret))
    # Reads (lists, HEADs, pre-signs GETs of) recordings and feed files; writes nothing.
    by_pattern = bucket_actions(statements, stack.data.exports_bucket)
    assert set(by_pattern) == {"", "/recordings/*", "/exports/*"}
    for pattern in ("/recordings/*", "/exports/*"):
        assert "s3:GetObject*" in by_pattern[pattern]
        assert not any(a.startswith(("s3:Put", "s3:Delete")) for a in by_pattern[pattern])
    assert "s3:List*" in by_pattern[""]
    # No statement grants anything on every resource except X-Ray's (no resource scoping).
    for statement in statements:
        if statement["Resource"] == "*":
            assert set(statement["Action"]) <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def test_http_api_routes_throttling_and_access_logs():
    stack = default_stack()
    template = default_template()
    http_api = ref(stack.api.http_api)
    routes = {
        route["Properties"]["RouteKey"]
        for route in template.find_resources("AWS::ApiGatewayV2::Route").values()
        if route["Properties"]["ApiId"] == http_api
    }
    assert routes == {
        "ANY /mg-autotranscribe/v1/{proxy+}",
        "ANY /conversation/v1/{proxy+}",
        "ANY /fileexporter/v1/{proxy+}",
        "ANY /callscribe/v1/{proxy+}",
        "GET /live",
        "ANY /live/{proxy+}",
    }
    # The page's path is the one the API serves it on.
    from callscribe.api import live
    from infra import api

    assert api.LIVE_PAGE_PATH == live.LIVE_PAGE_PATH
    assert all(
        path.startswith(api.LIVE_PAGE_PATH + "/")
        for path in (
            live.LIVE_SESSION_PATH,
            live.LIVE_SESSION_TOKEN_PATH,
            live.LIVE_CONFIG_PATH,
            live.LIVE_CALLS_PATH,
            live.LIVE_ASSETS_PATH,
        )
    )
    # The live event stream's WebSocket API has its own stage (tests/test_infra_live.py).
    (stage,) = [
        stage["Properties"]
        for stage in template.find_resources("AWS::ApiGatewayV2::Stage").values()
        if stage["Properties"]["ApiId"] == http_api
    ]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": 100,
        "ThrottlingBurstLimit": 200,
    }
    log_group_id = stage["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert (
        template.find_resources("AWS::Logs::LogGroup")[log_group_id]["Properties"][
            "RetentionInDays"
        ]
        == 30
    )
    # Without apiDomainName the execute-api URL serves it and no custom domain exists.
    template.resource_count_is("AWS::ApiGatewayV2::DomainName", 0)
    assert stack.api.domain_name is None


def test_api_custom_domain_with_the_certificate_and_alias_record():
    template = variant_template()
    template.has_resource_properties(
        "AWS::ApiGatewayV2::DomainName",
        {
            "DomainName": "api.callscribe.example.com",
            "DomainNameConfigurations": [Match.object_like({"CertificateArn": CERTIFICATE_ARN})],
        },
    )
    template.has_resource_properties("AWS::ApiGatewayV2::Api", {"DisableExecuteApiEndpoint": True})
    records = {
        r["Properties"]["Name"]: r["Properties"]
        for r in template.find_resources("AWS::Route53::RecordSet").values()
    }
    assert set(records) == {"api.callscribe.example.com.", "gw.callscribe.example.com."}
    for record in records.values():
        assert record["Type"] == "A" and record["HostedZoneId"] == "Z0123456789ABCDEFGHIJ"


# --- ECS services: the Twilio gateway, the KVS readers, the ASR workers -----------------------

# Per service: its construct's attribute on the stack, the container's name, what the container
# runs (None: the image's own CMD), the port its health check probes and the grace it has to
# start, its stop timeout, its log stream prefix, scale-out cooldown, and its scaling target
# (CPU percent; the ASR workers: utterances waiting per worker) and counts (min, max) with
# cdk.json's defaults.
ECS_SERVICES = {
    "gateway": ("gateway", TWILIO_GATEWAY_COMMAND, 8080, 60, 120, "gateway", 60, 60, (2, 10)),
    "kvs_reader": ("reader", KVS_READER_COMMAND, 8080, 60, 120, "kvs-reader", 60, 60, (1, 10)),
    "asr": ("asr", None, 8000, 180, 60, "asr", 120, 8, (1, 4)),
}


def tracked_metric(policy: dict) -> str:
    """A target-tracking policy's metric: the predefined type, or namespace/name."""
    configuration = policy["TargetTrackingScalingPolicyConfiguration"]
    if "PredefinedMetricSpecification" in configuration:
        return configuration["PredefinedMetricSpecification"]["PredefinedMetricType"]
    custom = configuration["CustomizedMetricSpecification"]
    return f"{custom['Namespace']}/{custom['MetricName']}"


def ecs_service_resources(attribute: str) -> tuple[dict, dict, dict]:
    """The service's ECS service, its task definition's one container, and its scaling
    policy on its own load (CPU; the ASR workers' queue depth), from the default template."""
    stack = default_stack()
    template = default_template()
    construct = getattr(stack, attribute)
    service = template.find_resources("AWS::ECS::Service")[logical_id(construct.service)]
    task = template.find_resources("AWS::ECS::TaskDefinition")[
        logical_id(construct.service.task_definition)
    ]
    (container,) = task["Properties"]["ContainerDefinitions"]
    (target_id,) = [
        target_id
        for target_id, target in template.find_resources(
            "AWS::ApplicationAutoScaling::ScalableTarget"
        ).items()
        if logical_id(construct.service) in json.dumps(target["Properties"]["ResourceId"])
    ]
    (cpu_policy,) = [
        policy["Properties"]
        for policy in template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if policy["Properties"]["ScalingTargetId"] == {"Ref": target_id}
        and tracked_metric(policy["Properties"])
        in ("ECSServiceAverageCPUUtilization", "CallScribe/AsrQueueDepth")
    ]
    scalable_target = template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget")[
        target_id
    ]["Properties"]
    return service["Properties"], container, {**cpu_policy, "target": scalable_target}


@pytest.mark.parametrize("attribute", ECS_SERVICES)
def test_every_ecs_service_rolls_out_one_task_ahead_and_rolls_back_in_private_subnets(attribute):
    service, _, _ = ecs_service_resources(attribute)
    assert service["DeploymentConfiguration"] == {
        "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
        "MaximumPercent": 200,
        "MinimumHealthyPercent": 100,
    }
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    private = [ref(subnet) for subnet in default_stack().network.vpc.private_subnets]
    assert [{"Ref": s["Ref"]} for s in network["Subnets"]] == private


@pytest.mark.parametrize("attribute", ECS_SERVICES)
def test_every_ecs_container_is_health_checked_and_logs_to_its_own_log_group(attribute):
    name, command, port, start_period, stop_timeout, prefix, *_ = ECS_SERVICES[attribute]
    _, container, _ = ecs_service_resources(attribute)
    assert container["Name"] == name
    assert container.get("Command") == (list(command) if command else None)
    assert container["HealthCheck"] == {
        "Command": [
            "CMD",
            "python",
            "-c",
            "import urllib.request; "
            f"urllib.request.urlopen('http://localhost:{port}/healthz', timeout=4)",
        ],
        "Interval": 15,
        "Timeout": 5,
        "Retries": 3,
        "StartPeriod": start_period,
    }
    assert container["StopTimeout"] == stop_timeout
    log = container["LogConfiguration"]
    assert log["LogDriver"] == "awslogs"
    assert log["Options"]["awslogs-stream-prefix"] == prefix
    group = default_template().find_resources("AWS::Logs::LogGroup")[
        log["Options"]["awslogs-group"]["Ref"]
    ]
    assert group["Properties"]["RetentionInDays"] == 30
    # One log group per service.
    others = [
        ecs_service_resources(other)[1]["LogConfiguration"]["Options"]["awslogs-group"]
        for other in ECS_SERVICES
        if other != attribute
    ]
    assert log["Options"]["awslogs-group"] not in others


@pytest.mark.parametrize("attribute", ECS_SERVICES)
def test_every_ecs_service_scales_on_its_load_between_its_counts(attribute):
    *_, scale_out_s, cpu_target, (minimum, maximum) = ECS_SERVICES[attribute]
    service, _, scaling = ecs_service_resources(attribute)
    assert (scaling["target"]["MinCapacity"], scaling["target"]["MaxCapacity"]) == (
        minimum,
        maximum,
    )
    assert scaling["target"]["ScalableDimension"] == "ecs:service:DesiredCount"
    assert minimum <= service["DesiredCount"] <= maximum
    configuration = scaling["TargetTrackingScalingPolicyConfiguration"]
    assert configuration["TargetValue"] == cpu_target
    assert configuration["ScaleOutCooldown"] == scale_out_s
    assert configuration["ScaleInCooldown"] == 600


def test_gateway_and_reader_run_one_image_with_their_own_commands():
    _, gateway, _ = ecs_service_resources("gateway")
    _, reader, _ = ecs_service_resources("kvs_reader")
    _, asr, _ = ecs_service_resources("asr")
    assert gateway["Image"] == reader["Image"] != asr["Image"]
    assert gateway["Command"] != reader["Command"]


# --- Twilio gateway -------------------------------------------------------------------------


def test_gateway_task_definition():
    stack = default_stack()
    task = default_template().find_resources("AWS::ECS::TaskDefinition")[
        logical_id(stack.gateway.service.task_definition)
    ]
    assert task["Properties"]["RequiresCompatibilities"] == ["FARGATE"]
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [8080, 8081]
    assert container_environment(task) == {
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
        # After SIGTERM live streams get 100 s of the 120 s stop timeout; once replaced, the
        # task takes streams for the minute the ALB needs to see it unready.
        "CALLSCRIBE_TWILIO_DRAIN_TIMEOUT_S": "100",
        "CALLSCRIBE_TWILIO_UNREADY_GRACE_S": "60",
        "LOG_LEVEL": "INFO",
        "CALLSCRIBE_LIVE_CALLBACK_URL": stack.resolve(stack.live.callback_url),
    }
    # ECS's container health check is liveness: a draining task is alive.
    command = container["HealthCheck"]["Command"]
    assert command[0] == "CMD" and "http://localhost:8080/healthz" in command[-1]
    assert container["StopTimeout"] == 120
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["Command"] == list(TWILIO_GATEWAY_COMMAND)


def test_gateway_task_role_permissions():
    stack = default_stack()
    statements = policy_statements(
        default_template(), stack.gateway.service.task_definition.task_role
    )
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"} <= actions_on(
        statements, ref(stack.data.table)
    )
    bus_arn = {"Fn::GetAtt": [logical_id(stack.events.bus), "Arn"]}
    assert [s["Resource"] for s in statements if s["Action"] == "events:PutEvents"] == [bus_arn]
    assert actions_on(statements, ref(stack.data.token_secret)) == SECRET_READ
    assert actions_on(statements, ref(stack.data.control_secret)) == SECRET_READ
    assert not actions_on(statements, ref(stack.data.webhook_secret))
    # Writes recordings, and only under recordings/.
    by_pattern = bucket_actions(statements, stack.data.exports_bucket)
    assert "s3:PutObject" in by_pattern["/recordings/*"]
    assert "/exports/*" not in by_pattern
    assert not any(a.startswith("s3:Delete") for actions in by_pattern.values() for a in actions)
    # Which of its cluster's tasks still run (the abandoned-call sweep); scale-in protection
    # while it holds calls; its service's deployments (to drain once replaced): only its
    # cluster's.
    assert_protects_itself_and_drains(statements, stack.cluster)


def test_alb_internet_facing_https_only_with_websocket_idle_timeout_and_access_logs():
    stack = default_stack()
    template = default_template()
    balancer = only(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")["Properties"]
    assert balancer["Scheme"] == "internet-facing"
    attributes = {a["Key"]: a["Value"] for a in balancer["LoadBalancerAttributes"]}
    assert attributes["idle_timeout.timeout_seconds"] == "4000"
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == ref(stack.data.logs_bucket)
    listener = only(template, "AWS::ElasticLoadBalancingV2::Listener")["Properties"]
    assert listener["Port"] == 443 and listener["Protocol"] == "HTTPS"
    assert listener["Certificates"] == [{"CertificateArn": CERTIFICATE_ARN}]
    # Only 443 is open to the world; nothing listens on 80.
    (lb_group,) = [
        sg["Properties"]
        for sg_id, sg in template.find_resources("AWS::EC2::SecurityGroup").items()
        if sg_id == logical_id(stack.gateway.load_balancer.connections.security_groups[0])
    ]
    assert [
        (r["FromPort"], r["ToPort"], r["CidrIp"]) for r in lb_group["SecurityGroupIngress"]
    ] == [(443, 443, "0.0.0.0/0")]


def test_target_group_health_check_and_draining():
    group = only(default_template(), "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"]
    assert group["Port"] == 8080 and group["TargetType"] == "ip"
    # Readiness: a draining task fails it (three checks 15 s apart) and gets no new streams.
    assert {
        key: group[key]
        for key in (
            "HealthCheckPath",
            "Matcher",
            "HealthCheckIntervalSeconds",
            "HealthCheckTimeoutSeconds",
            "HealthyThresholdCount",
            "UnhealthyThresholdCount",
        )
    } == {
        "HealthCheckPath": "/readyz",
        "Matcher": {"HttpCode": "200"},
        "HealthCheckIntervalSeconds": 15,
        "HealthCheckTimeoutSeconds": 5,
        "HealthyThresholdCount": 2,
        "UnhealthyThresholdCount": 3,
    }
    # Its streams cannot move: ECS waits up to an hour for them before it stops a task.
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    assert attributes["deregistration_delay.timeout_seconds"] == "3600"
    assert attributes["stickiness.enabled"] == "false"


def test_control_port_reachable_only_from_the_api_function():
    stack = default_stack()
    template = default_template()
    gateway_group = {
        "Fn::GetAtt": [logical_id(stack.gateway.service.connections.security_groups[0]), "GroupId"]
    }
    rules = [
        r["Properties"]
        for r in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == gateway_group
    ]
    by_port = {(r["FromPort"], r["ToPort"]): r["SourceSecurityGroupId"] for r in rules}
    assert by_port == {
        (8081, 8081): {"Fn::GetAtt": [logical_id(stack.api.security_group), "GroupId"]},
        (8080, 8080): {
            "Fn::GetAtt": [
                logical_id(stack.gateway.load_balancer.connections.security_groups[0]),
                "GroupId",
            ]
        },
    }


def test_gateway_autoscaling_on_requests_per_target_and_cpu():
    template = default_template()
    template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {"MinCapacity": 2, "MaxCapacity": 10, "ScalableDimension": "ecs:service:DesiredCount"},
    )
    metrics = {
        tracked_metric(p["Properties"])
        for p in template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if "PredefinedMetricSpecification"
        in p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    }
    assert metrics == {"ALBRequestCountPerTarget", "ECSServiceAverageCPUUtilization"}


# --- ASR workers ----------------------------------------------------------------------------


def test_asr_task_has_one_gpu_and_the_contract_environment():
    stack = default_stack()
    task = default_template().find_resources("AWS::ECS::TaskDefinition")[
        logical_id(stack.asr.service.task_definition)
    ]
    assert task["Properties"]["RequiresCompatibilities"] == ["EC2"]
    assert task["Properties"]["NetworkMode"] == "awsvpc"
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [8000]
    environment = container_environment(task)
    assert {k: environment[k] for k in environment if k.startswith("CALLSCRIBE_")} == {
        "CALLSCRIBE_ASR_MODEL": "/models/large-v3-turbo",
        "CALLSCRIBE_ASR_DEVICE": "cuda",
        "CALLSCRIBE_ASR_COMPUTE_TYPE": "float16",
        "CALLSCRIBE_ASR_PORT": "8000",
        "CALLSCRIBE_ASR_METRICS_INTERVAL_S": "60",
    }
    assert "http://localhost:8000/healthz" in container["HealthCheck"]["Command"][-1]


def test_asr_workers_scale_on_their_queue_depth_not_cpu():
    stack = default_stack()
    template = default_template()
    service = logical_id(stack.asr.service)
    (target_id,) = [
        target_id
        for target_id, target in template.find_resources(
            "AWS::ApplicationAutoScaling::ScalableTarget"
        ).items()
        if service in json.dumps(target["Properties"]["ResourceId"])
    ]
    (policy,) = [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if p["Properties"]["ScalingTargetId"] == {"Ref": target_id}
    ]
    assert "PredefinedMetricSpecification" not in policy
    assert policy["CustomizedMetricSpecification"] == {
        "Namespace": "CallScribe",
        "MetricName": "AsrQueueDepth",
        "Dimensions": [{"Name": "service", "Value": "callscribe-asr-worker"}],
        "Statistic": "Average",
    }
    assert policy["TargetValue"] == 8
    # The worker publishes under that name and dimension (callscribe.asr.worker).
    from callscribe.asr.worker import METRICS_SERVICE

    assert METRICS_SERVICE == "callscribe-asr-worker"


def test_asr_runs_on_gpu_instances_through_a_capacity_provider():
    stack = default_stack()
    template = default_template()
    launch = only(template, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    assert launch["InstanceType"] == "g5.xlarge"
    assert launch["MetadataOptions"] == {"HttpTokens": "required"}
    assert launch["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    # The ECS GPU-optimised Amazon Linux 2 AMI, resolved from its public SSM parameter.
    ami_parameter = launch["ImageId"]["Ref"]
    assert template.to_json()["Parameters"][ami_parameter]["Default"] == (
        "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"
    )
    template.has_resource_properties(
        "AWS::ECS::CapacityProvider",
        {
            "AutoScalingGroupProvider": Match.object_like(
                {
                    "ManagedScaling": Match.object_like({"Status": "ENABLED"}),
                    "ManagedTerminationProtection": "ENABLED",
                }
            )
        },
    )
    service = template.find_resources("AWS::ECS::Service")[logical_id(stack.asr.service)]
    assert service["Properties"]["CapacityProviderStrategy"] == [
        {"CapacityProvider": ref(stack.asr.capacity_provider), "Weight": 1}
    ]
    template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup", {"MinSize": "1", "MaxSize": "5"}
    )
    variant = only(variant_template(), "AWS::EC2::LaunchTemplate")["Properties"]
    assert variant["LaunchTemplateData"]["InstanceType"] == "g6.xlarge"


def test_asr_is_private_reachable_from_gateways_through_cloud_map():
    stack = default_stack()
    template = default_template()
    template.has_resource_properties(
        "AWS::ServiceDiscovery::PrivateDnsNamespace", {"Name": "prod.callscribe.internal"}
    )
    template.has_resource_properties(
        "AWS::ServiceDiscovery::Service",
        {"Name": "asr", "DnsConfig": Match.object_like({"DnsRecords": [{"TTL": 10, "Type": "A"}]})},
    )
    asr_group = {
        "Fn::GetAtt": [logical_id(stack.asr.service.connections.security_groups[0]), "GroupId"]
    }
    rules = [
        r["Properties"]
        for r in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == asr_group
    ]
    # The callers: the Twilio gateways and the KVS readers (Amazon Connect).
    callers = [stack.gateway.service, stack.kvs_reader.service]
    assert sorted(
        ((r["FromPort"], r["ToPort"], r["SourceSecurityGroupId"]) for r in rules), key=json.dumps
    ) == sorted(
        (
            (8000, 8000, {"Fn::GetAtt": [logical_id(c.connections.security_groups[0]), "GroupId"]})
            for c in callers
        ),
        key=json.dumps,
    )
    assert stack.asr.url == "http://asr.prod.callscribe.internal:8000"


def test_asr_model_choice_reaches_the_image_build_and_the_task():
    stack = variant_stack()
    task = variant_template().find_resources("AWS::ECS::TaskDefinition")[
        logical_id(stack.asr.service.task_definition)
    ]
    assert container_environment(task)["CALLSCRIBE_ASR_MODEL"] == "/models/distil-large-v3"
    assembly = stack.node.root.synth()
    assets = json.loads(
        (Path(assembly.directory) / f"{stack.artifact_id}.assets.json").read_text()
    )["dockerImages"]
    build_args = [
        image["source"].get("dockerBuildArgs")
        for image in assets.values()
        if image["source"]["dockerFile"] == "containers/asr_worker/Dockerfile"
    ]
    assert build_args == [{"WHISPER_MODEL": "distil-large-v3"}]


def test_cluster_has_container_insights():
    default_template().has_resource_properties(
        "AWS::ECS::Cluster",
        {"ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}]},
    )


# --- S3, network, logs ----------------------------------------------------------------------


def test_buckets_block_public_access_encrypt_and_enforce_tls():
    template = default_template()
    buckets = template.find_resources("AWS::S3::Bucket")
    assert len(buckets) == 2
    for bucket in buckets.values():
        properties = bucket["Properties"]
        assert properties["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert properties["BucketEncryption"] == {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        }
    denied = set()
    for policy in template.find_resources("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement.get("Condition") == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                denied.add(policy["Properties"]["Bucket"]["Ref"])
    assert denied == set(buckets)


def test_exports_bucket_expires_objects_after_retention_and_logs_access():
    stack = default_stack()
    exports = default_template().find_resources("AWS::S3::Bucket")[
        logical_id(stack.data.exports_bucket)
    ]["Properties"]

    def lifecycle(rules: list[dict]) -> set[tuple]:
        assert all(rule["Status"] == "Enabled" for rule in rules)
        return {
            (
                rule.get("Prefix"),
                rule.get("ExpirationInDays"),
                (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"),
            )
            for rule in rules
        }

    assert lifecycle(exports["LifecycleConfiguration"]["Rules"]) == {
        ("recordings/", 7, None),
        ("exports/", 7, None),
        (None, None, 1),
    }
    assert exports["LoggingConfiguration"]["DestinationBucketName"] == ref(stack.data.logs_bucket)
    variant = variant_template().find_resources("AWS::S3::Bucket")[
        logical_id(variant_stack().data.exports_bucket)
    ]["Properties"]
    # retentionDays 30, recordingRetentionDays 3; exports follow retentionDays.
    assert lifecycle(variant["LifecycleConfiguration"]["Rules"]) == {
        ("recordings/", 3, None),
        ("exports/", 30, None),
        (None, None, 1),
    }


def test_secrets_generated_and_webhook_secret_shaped_for_the_runtime():
    template = default_template()
    secrets = template.find_resources("AWS::SecretsManager::Secret")
    assert len(secrets) == 3
    stack = default_stack()
    webhook = secrets[logical_id(stack.data.webhook_secret)]["Properties"]["GenerateSecretString"]
    assert webhook["GenerateStringKey"] == "value"
    assert (
        webhook["SecretStringTemplate"] == '{"name": "X-CallScribe-Webhook-Token", "in": "header"}'
    )
    for secret in (stack.data.token_secret, stack.data.control_secret):
        generated = secrets[logical_id(secret)]["Properties"]["GenerateSecretString"]
        assert generated["PasswordLength"] >= 48


def test_new_vpc_with_private_egress_flow_logs_and_gateway_endpoints():
    template = default_template()
    template.resource_count_is("AWS::EC2::VPC", 1)
    # One NAT gateway in each AZ, each AZ's private subnets routed through their own.
    template.resource_count_is("AWS::EC2::NatGateway", 2)
    nat_subnets = {
        n["Properties"]["SubnetId"]["Ref"]
        for n in template.find_resources("AWS::EC2::NatGateway").values()
    }
    assert len(nat_subnets) == 2
    nat_routes = [
        r["Properties"]["NatGatewayId"]["Ref"]
        for r in template.find_resources("AWS::EC2::Route").values()
        if "NatGatewayId" in r["Properties"]
    ]
    assert len(nat_routes) == 2 and len(set(nat_routes)) == 2
    template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})
    endpoints = template.find_resources("AWS::EC2::VPCEndpoint")
    services = {
        "".join(str(part) for part in e["Properties"]["ServiceName"]["Fn::Join"][1])
        for e in endpoints.values()
    }
    assert any(s.endswith(".dynamodb") for s in services)
    assert any(s.endswith(".s3") for s in services)


def test_existing_vpc_is_looked_up_not_created():
    template = variant_template()
    template.resource_count_is("AWS::EC2::VPC", 0)
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    assert not variant_stack().network.created_vpc


def test_every_log_group_has_the_configured_retention():
    for template, days in ((default_template(), 30), (variant_template(), 90)):
        groups = template.find_resources("AWS::Logs::LogGroup")
        assert groups
        assert {g["Properties"].get("RetentionInDays") for g in groups.values()} == {days}
    # Every Lambda function of the deployment logs into one of those groups.
    template = default_template()
    group_ids = set(template.find_resources("AWS::Logs::LogGroup"))
    for function in template.find_resources("AWS::Lambda::Function").values():
        assert function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in group_ids


# --- The daily export seam ------------------------------------------------------------------


def test_a_second_schedule_is_refused():
    with pytest.raises(ValueError, match="already scheduled"):
        default_stack().add_daily_export(default_stack().exports.function)


def test_schedule_at_two_utc_invokes_the_given_exporter():
    template = variant_template()
    # The caller's exporter replaces the stack's own.
    assert variant_stack().exports is None
    assert not template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"ImageConfig": {"Command": [EXPORTER_HANDLER]}}}
    )
    schedule = only(template, "AWS::Scheduler::Schedule")["Properties"]
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["Arn"] == EXPORTER_ARN
    role = schedule["Target"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert len(statements) == 1
    assert statements[0]["Action"] == "lambda:InvokeFunction"
    assert statements[0]["Resource"] == EXPORTER_ARN


def test_default_stack_schedules_its_own_exporter():
    stack = default_stack()
    template = default_template()
    schedule = only(template, "AWS::Scheduler::Schedule")["Properties"]
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": [logical_id(stack.exports.function), "Arn"]}
    function = function_named(template, EXPORTER_HANDLER)["Properties"]
    assert function["PackageType"] == "Image"
    assert "VpcConfig" not in function
    assert function["Timeout"] == 900
    assert function["Environment"]["Variables"] == {
        "CALLSCRIBE_TABLE_NAME": ref(stack.data.table),
        "CALLSCRIBE_BLOB_S3_BUCKET": ref(stack.data.exports_bucket),
        "POWERTOOLS_SERVICE_NAME": "callscribe-exporter",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "LOG_LEVEL": "INFO",
    }


def test_exporter_reads_the_table_and_writes_only_exports():
    stack = default_stack()
    statements = policy_statements(default_template(), stack.exports.function.role)
    table_actions = actions_on(statements, ref(stack.data.table))
    assert {"dynamodb:Query", "dynamodb:GetItem", "dynamodb:Scan"} <= table_actions
    assert not any(a in table_actions for a in ("dynamodb:PutItem", "dynamodb:DeleteItem"))
    by_pattern = bucket_actions(statements, stack.data.exports_bucket)
    assert "s3:PutObject" in by_pattern["/exports/*"]
    assert "/recordings/*" not in by_pattern
    assert not any(a.startswith("s3:Delete") for actions in by_pattern.values() for a in actions)
    for secret in (stack.data.token_secret, stack.data.control_secret, stack.data.webhook_secret):
        assert not actions_on(statements, ref(secret))
