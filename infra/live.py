"""The live event stream in AWS: an API Gateway WebSocket API that viewers connect to, whose
connections the tasks that hold calls post their tenants' events to.

A viewer opens ``<LiveWebSocketUrl>?token=<live token>`` (the token from the API's
``POST /callscribe/v1/live/token``). ``$connect`` and ``$disconnect`` go to the live Lambda
(``functions/live.py``), which checks the token and records or deletes the connection in the
deployment's table; each ingest task posts to the connections of the call's tenant through
the stage's management endpoint (``@connections``), which only they may call.
"""

from __future__ import annotations

import json

import jsii
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import DataConstruct
from infra.functions import callscribe_function
from infra.images import LIVE_HANDLER
from infra.logs import log_group
from infra.nag import acknowledge, acknowledge_table_index_grant, finding_text

STAGE_NAME = "live"
# The WebSocket API's own fields (an HTTP API's method and path do not exist here).
ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "routeKey": "$context.routeKey",
    "eventType": "$context.eventType",
    "connectionId": "$context.connectionId",
    "status": "$context.status",
    "integrationError": "$context.integrationErrorMessage",
}


@jsii.implements(apigwv2.IAccessLogSettings)
class _WebSocketAccessLogs:
    def __init__(self, destination: apigwv2.IAccessLogDestination) -> None:
        self._destination = destination

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FORMAT))


class LiveConstruct(Construct):
    def __init__(
        self, scope: Construct, id: str, *, config: DeploymentConfig, data: DataConstruct
    ) -> None:
        super().__init__(scope, id)

        # Outside the VPC: it reads only the table and the signing key, through their public
        # endpoints, and a viewer's handshake waits for its cold start.
        self.function = callscribe_function(
            self,
            "LiveFunction",
            config=config,
            handler=LIVE_HANDLER,
            service_name="callscribe-live",
            memory_mib=512,
            timeout=Duration.seconds(10),
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_TOKEN_SECRET_ARN": data.token_secret.secret_arn,
            },
        )
        data.table.grant_read_write_data(self.function)
        acknowledge_table_index_grant(self.function.role, data.table)
        data.token_secret.grant_read(self.function)

        integration = integrations.WebSocketLambdaIntegration(
            "ConnectionsIntegration", self.function
        )
        self.api = apigwv2.WebSocketApi(
            self,
            "WebSocketApi",
            api_name=f"callscribe-{config.stage}-live",
            description="CallScribe live event stream: tenants' call events as they happen",
            connect_route_options=apigwv2.WebSocketRouteOptions(integration=integration),
            disconnect_route_options=apigwv2.WebSocketRouteOptions(integration=integration),
        )
        logging_account = self._account_logging_role() if config.api_gateway_logging_role else None
        self.stage = apigwv2.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=STAGE_NAME,
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=config.api_throttle_rate_limit,
                burst_limit=config.api_throttle_burst_limit,
            ),
            access_log_settings=_WebSocketAccessLogs(
                apigwv2.LogGroupLogDestination(log_group(self, "AccessLogs", config))
            ),
        )
        if logging_account is not None:
            # The stage's access logs need the account's logging role set first.
            self.stage.node.add_dependency(logging_account)
        for route in self.api.node.find_all():
            if isinstance(route, apigwv2.WebSocketRoute):
                acknowledge(
                    route,
                    "AwsSolutions-APIG4",
                    "The $connect Lambda authorizes every connection itself: it checks the "
                    "short-lived live token (signed with the deployment's key, for an active "
                    "API key) and refuses the handshake otherwise; $disconnect only deletes the "
                    "connection's record.",
                )

    def _account_logging_role(self) -> apigw.CfnAccount:
        """API Gateway writes a WebSocket stage's access logs with the role set in the
        account's API Gateway settings (one per region), as CDK's REST APIs set it; retained
        with the stack's deletion, as theirs, so that other APIs' logging keeps working."""
        role = iam.Role(
            self,
            "ApiGatewayLoggingRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                )
            ],
        )
        role.apply_removal_policy(RemovalPolicy.RETAIN)
        acknowledge(
            role,
            "AwsSolutions-IAM4",
            "AWS's policy for API Gateway's account-level logging role: log group creation and "
            "writes only, what API Gateway's access logging requires.",
            findings=[
                "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs"
            ],
        )
        account = apigw.CfnAccount(self, "ApiGatewayAccount", cloud_watch_role_arn=role.role_arn)
        account.apply_removal_policy(RemovalPolicy.RETAIN)
        return account

    @property
    def websocket_url(self) -> str:
        """``wss://…/live``: where viewers connect (with ``?token=``)."""
        return self.stage.url

    @property
    def callback_url(self) -> str:
        """``https://…/live``: the stage's management endpoint the tasks post through."""
        return self.stage.callback_url

    def allow_posting_from(self, role: iam.IRole) -> None:
        """``execute-api:ManageConnections`` on this stage's ``@connections`` only."""
        self.stage.grant_management_api_access(role)
        resource = Stack.of(self).format_arn(
            service="execute-api",
            resource=self.api.api_id,
            resource_name=f"{STAGE_NAME}/*/@connections/*",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5",
            "Posting to viewers' connections: their ids are made by API Gateway as viewers "
            "connect, so the grant names this stage's @connections, not each connection.",
            findings=[f"Resource::{finding_text(self, resource)}"],
        )
