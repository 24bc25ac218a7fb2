"""The Lambda functions' common shape: the repository's image, a log group, X-Ray tracing."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.config import DeploymentConfig
from infra.images import lambda_code
from infra.logs import log_group
from infra.nag import acknowledge


def callscribe_function(
    scope: Construct,
    id: str,
    *,
    config: DeploymentConfig,
    handler: str,
    service_name: str,
    environment: Mapping[str, str],
    memory_mib: int,
    timeout: Duration,
    vpc: ec2.IVpc | None = None,
    vpc_subnets: ec2.SubnetSelection | None = None,
    security_groups: list[ec2.ISecurityGroup] | None = None,
) -> lambda_.DockerImageFunction:
    function = lambda_.DockerImageFunction(
        scope,
        id,
        code=lambda_code(handler),
        architecture=lambda_.Architecture.X86_64,
        memory_size=memory_mib,
        timeout=timeout,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group(scope, f"{id}Logs", config),
        vpc=vpc,
        vpc_subnets=vpc_subnets,
        security_groups=security_groups,
        environment={
            "POWERTOOLS_SERVICE_NAME": service_name,
            "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
            "LOG_LEVEL": config.log_level,
            **environment,
        },
    )
    managed = ["AWSLambdaBasicExecutionRole"]
    if vpc is not None:
        managed.append("AWSLambdaVPCAccessExecutionRole")
    acknowledge(
        function.role,
        "AwsSolutions-IAM4",
        "AWS's Lambda execution policies grant only log writing (and, in a VPC, ENI "
        "management); CDK attaches them to every function.",
        findings=[
            f"Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/{name}" for name in managed
        ],
    )
    acknowledge(
        function.role,
        "AwsSolutions-IAM5",
        "X-Ray's PutTraceSegments/PutTelemetryRecords support no resource-level permissions; "
        "CDK grants them on * for active tracing.",
        findings=["Resource::*"],
    )
    return function
