"""The public HTTP API: API Gateway (HTTP API) in front of the FastAPI app in a Lambda.

HTTP API rather than REST API: a third of the price per request, lower latency, native Lambda
proxy payload v2 (which Mangum reads), stage throttling and access logs; nothing CallScribe
needs is REST-only. Authentication is the API's own (asapp-api-id / asapp-api-secret headers
checked against the Store), as in the reference API.
"""

from __future__ import annotations

import jsii
from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import EXPORTS_PREFIX, RECORDINGS_PREFIX, DataConstruct
from infra.functions import callscribe_function
from infra.images import API_HANDLER
from infra.logs import log_group
from infra.nag import acknowledge, acknowledge_bucket_grant, acknowledge_table_index_grant
from infra.network import NetworkConstruct

# The reference API's two path families and CallScribe's own; nothing else (not /docs, not
# /healthz) is public, but the live page (LIVE_PAGE_PATH and what is under it).
LIVE_PAGE_PATH = "/live"  # as callscribe.api.live's
ROUTE_PREFIXES = (
    "/mg-autotranscribe/v1",
    "/conversation/v1",
    # Issue 6's outputs: feed-file links and delivery failures.
    "/fileexporter/v1",
    "/callscribe/v1",
)


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogs:
    def __init__(self, destination: apigwv2.IAccessLogDestination) -> None:
        self._destination = destination

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.json_with_standard_fields(
            caller=False,
            http_method=True,
            ip=True,
            protocol=True,
            request_time=True,
            resource_path=True,
            response_length=True,
            status=True,
            user=False,
        )


class ApiConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        data: DataConstruct,
        network: NetworkConstruct,
    ) -> None:
        super().__init__(scope, id)

        # In the VPC so that it can reach the gateway tasks' private control port (start/stop
        # the call a task holds); DynamoDB through the VPC's gateway endpoint, Secrets Manager
        # through NAT.
        self.security_group = ec2.SecurityGroup(
            self,
            "FunctionSecurityGroup",
            vpc=network.vpc,
            description="CallScribe API Lambda: egress to the gateway control port and AWS APIs",
            allow_all_outbound=True,
        )
        self.function = callscribe_function(
            self,
            "ApiFunction",
            config=config,
            handler=API_HANDLER,
            service_name="callscribe-api",
            memory_mib=1024,
            # API Gateway gives up on an integration after 30 s.
            timeout=Duration.seconds(29),
            vpc=network.vpc,
            vpc_subnets=network.private_subnets,
            security_groups=[self.security_group],
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_TOKEN_SECRET_ARN": data.token_secret.secret_arn,
                "CALLSCRIBE_CONTROL_SECRET_ARN": data.control_secret.secret_arn,
                "CALLSCRIBE_PUBLIC_GATEWAY_URL": config.public_gateway_url,
                "CALLSCRIBE_MESSAGE_RETENTION_DAYS": str(config.retention_days),
                "CALLSCRIBE_BLOB_S3_BUCKET": data.exports_bucket.bucket_name,
                "CALLSCRIBE_RECORDING_RETENTION_DAYS": str(config.recordings_expire_after_days),
                "CALLSCRIBE_EXPORT_RETENTION_DAYS": str(config.exports_expire_after_days),
            },
        )
        data.table.grant_read_write_data(self.function)
        acknowledge_table_index_grant(self.function.role, data.table)
        data.token_secret.grant_read(self.function)
        data.control_secret.grant_read(self.function)
        # Lists recordings and feed files and pre-signs GETs of them: a pre-signed URL works
        # only while its signer may read the object.
        read_patterns = [f"{RECORDINGS_PREFIX}*", f"{EXPORTS_PREFIX}*"]
        for pattern in read_patterns:
            data.exports_bucket.grant_read(self.function, pattern)
        acknowledge_bucket_grant(self.function.role, data.exports_bucket, read_patterns)

        self.domain_name: apigwv2.DomainName | None = None
        if config.api_domain_name is not None:
            self.domain_name = apigwv2.DomainName(
                self,
                "DomainName",
                domain_name=config.api_domain_name,
                certificate=acm.Certificate.from_certificate_arn(
                    self, "Certificate", config.certificate_arn
                ),
            )

        self.http_api = apigwv2.HttpApi(
            self,
            "HttpApi",
            api_name=f"callscribe-{config.stage}",
            description="CallScribe media-gateway and conversation API",
            create_default_stage=False,
            # With a custom domain, clients use it and nothing else.
            disable_execute_api_endpoint=self.domain_name is not None,
        )
        integration = integrations.HttpLambdaIntegration("ApiIntegration", self.function)
        for prefix in ROUTE_PREFIXES:
            self.http_api.add_routes(
                path=f"{prefix}/{{proxy+}}",
                methods=[apigwv2.HttpMethod.ANY],
                integration=integration,
            )
        # The live page, its files, sign-in and the token that opens the WebSocket API.
        self.http_api.add_routes(
            path=LIVE_PAGE_PATH, methods=[apigwv2.HttpMethod.GET], integration=integration
        )
        self.http_api.add_routes(
            path=f"{LIVE_PAGE_PATH}/{{proxy+}}",
            methods=[apigwv2.HttpMethod.ANY],
            integration=integration,
        )

        access_logs = log_group(self, "AccessLogs", config)
        self.stage = self.http_api.add_stage(
            "DefaultStage",
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=config.api_throttle_rate_limit,
                burst_limit=config.api_throttle_burst_limit,
            ),
            access_log_settings=_AccessLogs(apigwv2.LogGroupLogDestination(access_logs)),
            domain_mapping=(
                apigwv2.DomainMappingOptions(domain_name=self.domain_name)
                if self.domain_name is not None
                else None
            ),
        )
        for route in self.http_api.node.find_all():
            if isinstance(route, apigwv2.HttpRoute):
                acknowledge(
                    route,
                    "AwsSolutions-APIG4",
                    "Every route is authenticated by the application itself "
                    "(asapp-api-id / asapp-api-secret headers checked against hashed "
                    "keys in the Store), as the wire-compatible reference API requires.",
                )

    @property
    def url(self) -> str:
        if self.domain_name is not None:
            return f"https://{self.domain_name.name}"
        return self.http_api.api_endpoint
