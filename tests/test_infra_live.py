"""The live event stream's infrastructure: the WebSocket API and its connection Lambda, the
stage's throttling and access logs, and who may post to viewers (the tasks that hold calls,
on this stage's @connections only). Properties, never hashed logical ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.images import LIVE_HANDLER
from infra.live import STAGE_NAME
from tests.infra_support import (
    ACCOUNT,
    REGION,
    actions_on,
    container_environment,
    default_stack,
    default_template,
    logical_id,
    policy_statements,
    variant_stack,
    variant_template,
)

pytestmark = pytest.mark.slow


def ref(construct: Any) -> dict[str, str]:
    return {"Ref": logical_id(construct)}


def live_function(template: Any) -> dict[str, Any]:
    (function,) = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"ImageConfig": {"Command": [LIVE_HANDLER]}}}
    ).values()
    return function


def execute_api_url(stack: Any, scheme: str) -> dict[str, Any]:
    return {
        "Fn::Join": [
            "",
            [
                f"{scheme}://",
                ref(stack.live.api),
                f".execute-api.{REGION}.",
                {"Ref": "AWS::URLSuffix"},
                f"/{STAGE_NAME}",
            ],
        ]
    }


def test_connect_and_disconnect_go_to_the_live_lambda_and_nothing_else_is_routed() -> None:
    stack, template = default_stack(), default_template()
    (api,) = template.find_resources(
        "AWS::ApiGatewayV2::Api", {"Properties": {"ProtocolType": "WEBSOCKET"}}
    ).values()
    assert api["Properties"]["RouteSelectionExpression"] == "$request.body.action"
    api_ref = ref(stack.live.api)
    routes = [
        r["Properties"]
        for r in template.find_resources("AWS::ApiGatewayV2::Route").values()
        if r["Properties"]["ApiId"] == api_ref
    ]
    assert sorted(r["RouteKey"] for r in routes) == ["$connect", "$disconnect"]
    integrations = {
        name: i["Properties"]
        for name, i in template.find_resources("AWS::ApiGatewayV2::Integration").items()
        if i["Properties"]["ApiId"] == api_ref
    }
    for route in routes:
        target = json.dumps(route["Target"])
        (integration,) = [i for name, i in integrations.items() if name in target]
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert logical_id(stack.live.function) in json.dumps(integration["IntegrationUri"])


def test_the_live_lambda_reads_the_signing_key_and_writes_the_table_outside_the_vpc() -> None:
    stack, template = default_stack(), default_template()
    function = live_function(template)["Properties"]
    variables = dict(function["Environment"]["Variables"])
    # The only page whose handshake it takes: the API's, which serves /live.
    assert variables.pop("CALLSCRIBE_LIVE_PAGE_ORIGIN") == stack.resolve(stack.api.url)
    assert variables == {
        "CALLSCRIBE_TABLE_NAME": ref(stack.data.table),
        "CALLSCRIBE_TOKEN_SECRET_ARN": ref(stack.data.token_secret),
        "POWERTOOLS_SERVICE_NAME": "callscribe-live",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "LOG_LEVEL": "INFO",
    }
    assert "VpcConfig" not in function
    assert function["TracingConfig"] == {"Mode": "Active"}
    statements = policy_statements(template, stack.live.function.role)
    table = {"Fn::GetAtt": [logical_id(stack.data.table), "Arn"]}
    assert {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"} <= actions_on(
        statements, table
    )
    assert actions_on(statements, ref(stack.data.token_secret)) == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }
    # It posts to no connection: only the tasks that hold calls do.
    assert "execute-api:ManageConnections" not in json.dumps(statements)


def test_the_stage_is_throttled_and_logs_every_connection() -> None:
    stack, template = default_stack(), default_template()
    (stage,) = [
        s
        for s in template.find_resources("AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["ApiId"] == ref(stack.live.api)
    ]
    properties = stage["Properties"]
    assert properties["StageName"] == STAGE_NAME
    assert properties["AutoDeploy"] is True
    assert properties["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": stack.config.api_throttle_burst_limit,
        "ThrottlingRateLimit": stack.config.api_throttle_rate_limit,
    }
    logs = properties["AccessLogSettings"]
    (log_group_id,) = [
        name
        for name in template.find_resources("AWS::Logs::LogGroup")
        if name == logs["DestinationArn"]["Fn::GetAtt"][0]
    ]
    assert log_group_id
    fields = json.loads(logs["Format"])
    assert fields["connectionId"] == "$context.connectionId"
    assert fields["routeKey"] == "$context.routeKey"
    assert fields["status"] == "$context.status"
    # API Gateway writes a WebSocket stage's logs with the account's logging role: set first.
    (account_id, account) = next(iter(template.find_resources("AWS::ApiGateway::Account").items()))
    assert account_id in stage["DependsOn"]
    assert account["DeletionPolicy"] == "Retain"


def test_an_account_with_its_logging_role_already_keeps_it() -> None:
    """-c apiGatewayLoggingRole=false: the account's API Gateway settings are not touched (no
    role, no AWS::ApiGateway::Account), and the stage still logs, with the account's role."""
    stack, template = variant_stack(), variant_template()
    assert stack.config.api_gateway_logging_role is False
    assert template.find_resources("AWS::ApiGateway::Account") == {}
    assert "AmazonAPIGatewayPushToCloudWatchLogs" not in json.dumps(
        template.find_resources("AWS::IAM::Role")
    )
    (stage,) = [
        s
        for s in template.find_resources("AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["ApiId"] == ref(stack.live.api)
    ]
    assert "AccessLogSettings" in stage["Properties"]


def test_only_the_tasks_that_hold_calls_post_to_viewers_on_this_stage() -> None:
    stack, template = variant_stack(), variant_template()
    assert stack.siprec is not None
    connections = {
        "Fn::Join": [
            "",
            [
                f"arn:aws:execute-api:{REGION}:{ACCOUNT}:",
                ref(stack.live.api),
                f"/{STAGE_NAME}/*/@connections/*",
            ],
        ]
    }
    holders = {
        "gateway": stack.gateway.container_service.task_definition.task_role,
        "kvs reader": stack.kvs_reader.task_role,
        "siprec": stack.siprec.container_service.task_definition.task_role,
    }
    for name, role in holders.items():
        posting = [
            s
            for s in policy_statements(template, role)
            if "execute-api:ManageConnections" in json.dumps(s["Action"])
        ]
        assert posting == [
            {"Action": "execute-api:ManageConnections", "Effect": "Allow", "Resource": connections}
        ], name
    every_grant = json.dumps(template.find_resources("AWS::IAM::Policy"))
    assert every_grant.count("execute-api:ManageConnections") == len(holders)


def test_the_tasks_post_through_the_callback_url_and_the_api_gives_the_websocket_url() -> None:
    stack, template = variant_stack(), variant_template()
    assert stack.siprec is not None
    callback = execute_api_url(stack, "https")
    for service in (stack.gateway, stack.kvs_reader, stack.siprec):
        definition = template.to_json()["Resources"][
            logical_id(service.container_service.task_definition)
        ]
        assert container_environment(definition)["CALLSCRIBE_LIVE_CALLBACK_URL"] == callback
    api = template.to_json()["Resources"][logical_id(stack.api.function)]["Properties"]
    websocket = execute_api_url(stack, "wss")
    assert api["Environment"]["Variables"]["CALLSCRIBE_LIVE_WEBSOCKET_URL"] == websocket
    # With the API on its own domain, the page is there, and so is the origin the $connect
    # Lambda takes browsers' handshakes from.
    page_origin = live_function(template)["Properties"]["Environment"]["Variables"]
    assert page_origin["CALLSCRIBE_LIVE_PAGE_ORIGIN"] == {
        "Fn::Join": ["", ["https://", ref(stack.api.domain_name)]]
    }
    assert template.find_outputs("LiveWebSocketUrl")["LiveWebSocketUrl"]["Value"] == websocket
