"""State: the DynamoDB table, the S3 buckets and the secrets."""

from __future__ import annotations

import json

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.config import DeploymentConfig
from infra.nag import acknowledge

# The header the webhook secret names until the operator sets their own (see README).
DEFAULT_WEBHOOK_SECRET_HEADER = "X-CallScribe-Webhook-Token"
# The bucket's key layout (callscribe.recording.PREFIX, callscribe.export.PREFIX).
RECORDINGS_PREFIX = "recordings/"
EXPORTS_PREFIX = "exports/"


class DataConstruct(Construct):
    def __init__(self, scope: Construct, id: str, *, config: DeploymentConfig) -> None:
        super().__init__(scope, id)

        # One table for every record type (API keys, calls, ownership, messages, delivery
        # failures); the AWS Store adapter lays out pk/sk and the gsi1 inverted index. Messages
        # expire through TTL on `ttl`. Losing it loses every tenant's keys and transcripts:
        # deletion protection, PITR, and RETAIN when the stack goes.
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="ttl",
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.table.add_global_secondary_index(
            index_name="gsi1",
            partition_key=dynamodb.Attribute(name="gsi1pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="gsi1sk", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )

        # Server access logs of the exports bucket and the load balancer's access logs. SSE-S3:
        # ELB access logging supports no other encryption.
        self.logs_bucket = s3.Bucket(
            self,
            "AccessLogsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs", expiration=Duration.days(config.log_retention_days)
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.logs_bucket,
            "AwsSolutions-S1",
            "This is the access-log bucket itself; logging it into itself would "
            "loop, and its writers (S3 log delivery, ELB) are AWS services.",
        )

        # Daily exports (exports/) and call recordings (recordings/); each expires after its
        # retention, which the API also applies when it lists them.
        self.exports_bucket = s3.Bucket(
            self,
            "ExportsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.logs_bucket,
            server_access_logs_prefix="s3/exports/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-recordings",
                    prefix=RECORDINGS_PREFIX,
                    expiration=Duration.days(config.recordings_expire_after_days),
                ),
                s3.LifecycleRule(
                    id="expire-exports",
                    prefix=EXPORTS_PREFIX,
                    expiration=Duration.days(config.exports_expire_after_days),
                ),
                # Recordings of hours-long calls are multipart uploads; a task stopped mid-upload
                # would leave billed parts behind.
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

        # Signs the short-lived stream URLs (tokens) that the API hands out and the gateway
        # checks when Twilio connects.
        self.token_secret = secretsmanager.Secret(
            self,
            "TokenSigningKey",
            description=f"CallScribe {config.stage}: stream-token signing key",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
        )
        # Shared by the API Lambda and the gateway tasks: authenticates start/stop calls on the
        # tasks' private control port.
        self.control_secret = secretsmanager.Secret(
            self,
            "ControlSecret",
            description=f"CallScribe {config.stage}: API-to-gateway control shared secret",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
        )
        # {"name", "value", "in"}: what every webhook POST carries. Deployed with a random
        # value under a default header name; the operator either configures the receiver to
        # expect it or puts the receiver's own credentials here (README "Deploy to AWS").
        self.webhook_secret = secretsmanager.Secret(
            self,
            "WebhookSecret",
            description=f"CallScribe {config.stage}: webhook credentials "
            '{"name": header or query parameter, "value": secret, "in": "header"|"query"}',
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps(
                    {"name": DEFAULT_WEBHOOK_SECRET_HEADER, "in": "header"}
                ),
                generate_string_key="value",
                password_length=48,
                exclude_punctuation=True,
            ),
        )
        acknowledge(
            self.token_secret,
            "AwsSolutions-SMG4",
            "Stream tokens live 5 minutes and every process reads the key at "
            "start; rotating it is a redeploy-free `put-secret-value` that invalidates "
            "only unused stream URLs, so no rotation Lambda is deployed.",
        )
        acknowledge(
            self.control_secret,
            "AwsSolutions-SMG4",
            "Used only inside the VPC between the API Lambda and the gateway "
            "tasks on a port no one else can reach; rotating it means restarting both "
            "sides together, which a rotation Lambda cannot coordinate.",
        )
        acknowledge(
            self.webhook_secret,
            "AwsSolutions-SMG4",
            "The webhook credential is shared with the customer's receiver, "
            "which AWS cannot update; the operator changes both sides together.",
        )
