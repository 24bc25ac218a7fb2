"""The stack a CallScribe tenant deploys in its own Amazon Connect account.

It creates:

- the role CallScribe's KVS readers assume to read the account's Connect media: trusted by the
  deployment's reader role only (its ARN is the main stack's ``ConnectReaderRoleArn`` output),
  and only with the tenant's external id (the confused-deputy guard: another CallScribe tenant
  cannot make the readers use this role); it may only find and read the Connect instance's
  streams (``kinesisvideo:GetDataEndpoint``, ``GetMedia``, ``DescribeStream`` on
  ``stream/<prefix>-connect-*``, and ``ListStreams``, which has no resource scoping), plus
  ``kms:Decrypt`` through Kinesis Video Streams on the instance's own key when it has one;
- optionally (``callscribeApiUrl`` set) the two contact-flow Lambdas ``connect_start`` and
  ``connect_stop`` with the secret that holds the CallScribe API key they use, invocable by
  Amazon Connect (and associated with the instance when ``connectInstanceArn`` is given).

Deployed with ``cdk deploy --app "python3 customer_account_app.py" -c …`` (README "Amazon
Connect"); settings come from CDK context, validated here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aws_cdk import CfnOutput, Duration, IgnoreMode, Stack, Token
from aws_cdk import aws_connect as connect
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct
from pydantic import BaseModel, Field, HttpUrl, field_validator
from pydantic.alias_generators import to_camel

from infra.config import (
    CONTEXT_SETTINGS,
    DeploymentConfig,
    LogRetentionDays,
    is_cdk_key,
    validate_context,
)
from infra.kvs_reader import CUSTOMER_ROLE_NAME_PREFIX
from infra.logs import retention
from infra.nag import acknowledge

REPO_ROOT = Path(__file__).resolve().parent.parent
# What the contact-flow Lambdas' zip holds: their two entrypoints and the stdlib-only flow
# module (gitignore syntax: everything out, then these back in).
FLOW_LAMBDA_FILES = (
    "functions/__init__.py",
    "functions/connect_start.py",
    "functions/connect_stop.py",
    "callscribe/__init__.py",
    "callscribe/connect/__init__.py",
    "callscribe/connect/flow.py",
)
FLOW_LAMBDA_EXCLUDE = [
    "*",
    "!functions/",
    "!callscribe/",
    "!callscribe/connect/",
    *(f"!{path}" for path in FLOW_LAMBDA_FILES),
]
# The newest Python runtime (cdk-nag's AwsSolutions-L1); flow.py needs only the stdlib and the
# runtime's own boto3.
FLOW_LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14
# Connect waits at most 8 seconds for a Lambda.
FLOW_LAMBDA_TIMEOUT = Duration.seconds(8)
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-fA-F-]{36}$")
CONNECT_INSTANCE_ARN = re.compile(
    r"^arn:aws[a-z-]*:connect:[a-z0-9-]+:\d{12}:instance/[0-9a-fA-F-]{36}$"
)


class CustomerAccountConfig(BaseModel):
    model_config = CONTEXT_SETTINGS

    # The main stack's ConnectReaderRoleArn output (the operator gives it to the tenant).
    callscribe_reader_role_arn: str
    # Agreed between the tenant and CallScribe's operator (callscribe connect-access set).
    external_id: str
    # The "Kinesis Video Streams prefix" of the instance's live media streaming settings:
    # Connect names its streams <prefix>-connect-<instance alias>-contact-<contact id>.
    connect_stream_prefix: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    # The instance's own KMS key for its streams, when it uses one (not the AWS-managed key).
    kms_key_arn: str | None = None
    role_name: str = CUSTOMER_ROLE_NAME_PREFIX
    stack_name: str = Field("CallScribe-ConnectAccess", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")

    # The contact-flow Lambdas, deployed when the API's URL is given.
    callscribe_api_url: HttpUrl | None = None
    connect_instance_arn: str | None = None
    contact_id_field: Literal["ContactId", "InitialContactId", "PreviousContactId"] = "ContactId"
    customer_id_attribute: str = Field("customerId", pattern=r"^[\w.-]{1,128}$")
    agent_id_attribute: str = Field("agentId", pattern=r"^[\w.-]{1,128}$")
    language: str | None = Field(None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    redaction_output: Literal["redacted", "unredacted", "redacted_and_unredacted"] = "redacted"
    log_retention_days: LogRetentionDays = 30

    @field_validator("callscribe_reader_role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not ROLE_ARN.match(value):
            raise ValueError(f"{value!r} is not an IAM role ARN (the ConnectReaderRoleArn output)")
        return value

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: str) -> str:
        # What STS accepts as an ExternalId.
        if not re.fullmatch(r"[\w+=,.@:/-]{2,1224}", value, re.ASCII):
            raise ValueError("2 to 1224 letters, digits or +=,.@:/-_")
        return value

    @field_validator("kms_key_arn")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not KMS_KEY_ARN.match(value):
            raise ValueError(
                f"{value!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)"
            )
        return value

    @field_validator("connect_instance_arn")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is not None and not CONNECT_INSTANCE_ARN.match(value):
            raise ValueError(f"{value!r} is not an Amazon Connect instance ARN")
        return value

    @field_validator("role_name")
    @classmethod
    def _role_name(cls, value: str) -> str:
        # The readers may assume only roles named so (infra/kvs_reader.py).
        if not re.fullmatch(rf"{CUSTOMER_ROLE_NAME_PREFIX}[\w+=,.@-]{{0,32}}", value):
            raise ValueError(f"the role's name must start with {CUSTOMER_ROLE_NAME_PREFIX}")
        return value

    @field_validator("callscribe_api_url")
    @classmethod
    def _https(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and value.scheme != "https":
            raise ValueError("the API is reached over https:// (the Lambdas send the API key)")
        return value


def _main_stack_keys() -> set[str]:
    return {to_camel(name) for name in DeploymentConfig.model_fields}


def load_customer_config(context: Mapping[str, Any]) -> CustomerAccountConfig:
    """This stack's keys of a CDK context (cdk.json's context is shared with the main stack,
    whose keys are left alone); ConfigError names every problem."""
    main_keys = _main_stack_keys()
    own = set(CustomerAccountConfig.model_fields) | {
        to_camel(n) for n in CustomerAccountConfig.model_fields
    }
    values = {
        key: value
        for key, value in context.items()
        if not is_cdk_key(key) and (key in own or key not in main_keys)
    }
    return validate_context(
        CustomerAccountConfig,
        values,
        what="Connect access settings",
        unknown_key="not a setting of this stack (a typo?)",
    )


def _nag(value: str, pseudo: str) -> str:
    """How cdk-nag writes a value in a finding: a pseudo parameter's token as <AWS::Name>."""
    return f"<AWS::{pseudo}>" if Token.is_unresolved(value) else value


class ConnectMediaAccessStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, config: CustomerAccountConfig, **kwargs: Any
    ) -> None:
        super().__init__(
            scope,
            id,
            description="CallScribe: read access to this account's Amazon Connect media streams",
            **kwargs,
        )
        self.config = config
        partition, region, account = self.partition, self.region, self.account
        streams = (
            f"arn:{partition}:kinesisvideo:{region}:{account}:stream/"
            f"{config.connect_stream_prefix}-connect-*/*"
        )
        statements = [
            iam.PolicyStatement(
                sid="ReadConnectMediaStreams",
                actions=[
                    "kinesisvideo:GetDataEndpoint",
                    "kinesisvideo:GetMedia",
                    "kinesisvideo:DescribeStream",
                ],
                resources=[streams],
            ),
            iam.PolicyStatement(
                sid="ListStreams", actions=["kinesisvideo:ListStreams"], resources=["*"]
            ),
        ]
        if config.kms_key_arn is not None:
            statements.append(
                iam.PolicyStatement(
                    sid="DecryptConnectMedia",
                    actions=["kms:Decrypt"],
                    resources=[config.kms_key_arn],
                    conditions={
                        "StringEquals": {"kms:ViaService": f"kinesisvideo.{region}.amazonaws.com"}
                    },
                )
            )
        self.role = iam.Role(
            self,
            "MediaReaderRole",
            role_name=config.role_name,
            assumed_by=iam.ArnPrincipal(config.callscribe_reader_role_arn).with_conditions(
                {"StringEquals": {"sts:ExternalId": config.external_id}}
            ),
            description="CallScribe's KVS readers read this account's Amazon Connect audio",
            max_session_duration=Duration.hours(1),
            inline_policies={"ConnectMedia": iam.PolicyDocument(statements=statements)},
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "Connect creates a stream per contact (<prefix>-connect-<alias>-contact-<id>): the "
            "streams are only known by that pattern; kinesisvideo:ListStreams supports no "
            "resource scoping.",
            findings=[
                "Resource::*",
                f"Resource::arn:{_nag(partition, 'Partition')}:kinesisvideo:"
                f"{_nag(region, 'Region')}:{_nag(account, 'AccountId')}:stream/"
                f"{config.connect_stream_prefix}-connect-*/*",
            ],
        )
        CfnOutput(
            self,
            "MediaReaderRoleArn",
            value=self.role.role_arn,
            description="Give this to CallScribe's operator (callscribe connect-access set --role-arn)",
        )

        self.start_function: lambda_.Function | None = None
        self.stop_function: lambda_.Function | None = None
        self.credentials_secret: secretsmanager.Secret | None = None
        if config.callscribe_api_url is not None:
            self._flow_lambdas(config)

    def _flow_lambdas(self, config: CustomerAccountConfig) -> None:
        from aws_cdk import aws_logs as logs

        self.credentials_secret = secretsmanager.Secret(
            self,
            "ApiCredentials",
            description='CallScribe API key of the contact-flow Lambdas: {"apiId": …, "apiSecret": …}',
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template='{"apiId": "set-me"}', generate_string_key="apiSecret"
            ),
        )
        acknowledge(
            self.credentials_secret,
            "AwsSolutions-SMG4",
            "The value is an API key issued by CallScribe's operator (callscribe keys create); "
            "it is rotated by issuing a new key and putting it here, which the Lambdas pick up "
            "at their next 401.",
        )
        code = lambda_.Code.from_asset(
            str(REPO_ROOT), exclude=FLOW_LAMBDA_EXCLUDE, ignore_mode=IgnoreMode.GIT
        )
        environment = {
            "CALLSCRIBE_API_URL": str(config.callscribe_api_url).rstrip("/"),
            "CALLSCRIBE_CREDENTIALS_SECRET_ARN": self.credentials_secret.secret_arn,
            "CALLSCRIBE_CONTACT_ID_FIELD": config.contact_id_field,
            "CALLSCRIBE_CUSTOMER_ID_ATTRIBUTE": config.customer_id_attribute,
            "CALLSCRIBE_AGENT_ID_ATTRIBUTE": config.agent_id_attribute,
            "CALLSCRIBE_REDACTION_OUTPUT": config.redaction_output,
        }
        if config.language is not None:
            environment["CALLSCRIBE_LANGUAGE"] = config.language
        functions = []
        for id, module in (("ConnectStart", "connect_start"), ("ConnectStop", "connect_stop")):
            function = lambda_.Function(
                self,
                id,
                runtime=FLOW_LAMBDA_RUNTIME,
                architecture=lambda_.Architecture.ARM_64,
                handler=f"functions.{module}.handler",
                code=code,
                memory_size=256,
                timeout=FLOW_LAMBDA_TIMEOUT,
                environment=environment,
                description=f"CallScribe {module.replace('_', ' ')} for Amazon Connect contact flows",
                log_group=logs.LogGroup(
                    self, f"{id}Logs", retention=retention(config.log_retention_days)
                ),
            )
            self.credentials_secret.grant_read(function)
            function.add_permission(
                "InvokedByConnect",
                principal=iam.ServicePrincipal("connect.amazonaws.com"),
                source_account=self.account,
                source_arn=config.connect_instance_arn,
            )
            if config.connect_instance_arn is not None:
                # Listed in the instance's flows (Invoke AWS Lambda function block).
                connect.CfnIntegrationAssociation(
                    self,
                    f"{id}Integration",
                    instance_id=config.connect_instance_arn,
                    integration_type="LAMBDA_FUNCTION",
                    integration_arn=function.function_arn,
                )
            acknowledge(
                function.role,  # type: ignore[arg-type]
                "AwsSolutions-IAM4",
                "AWS's Lambda execution policy grants only log writing.",
                findings=[
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
                ],
            )
            CfnOutput(self, f"{id}FunctionArn", value=function.function_arn)
            functions.append(function)
        self.start_function, self.stop_function = functions
        CfnOutput(
            self,
            "ApiCredentialsSecretArn",
            value=self.credentials_secret.secret_arn,
            description='Put {"apiId": …, "apiSecret": …} here (callscribe keys create)',
        )
