"""What the services that hold calls' media share: the Twilio gateway, the KVS readers and the
SIPREC recorders.

All run the one ingest image (``containers/ingest/Dockerfile``; the stack sets each one's
command), listen on the same two ports, are configured by the same environment, and need the
same access to the deployment's table, transcript destinations (the delivery queue and the
bus), secrets and recordings.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam

from infra.config import DeploymentConfig
from infra.data import RECORDINGS_PREFIX, DataConstruct
from infra.events import TranscriptDestinations
from infra.nag import (
    acknowledge,
    acknowledge_bucket_grant,
    acknowledge_table_index_grant,
    finding_text,
)

# CALLSCRIBE_PORT: /healthz (the container health check) and, on the gateway, the media
# WebSockets the load balancer forwards.
INGEST_PORT = 8080
# CALLSCRIBE_CONTROL_PORT: the private control API (open, start, stop a call) the API reaches.
CONTROL_PORT = 8081
HEALTH_START_PERIOD = Duration.seconds(60)
# Fargate's maximum: after SIGTERM the open utterances are finished, transcribed and published
# before the process exits.
STOP_TIMEOUT = Duration.seconds(120)
# Of the stop timeout, what live calls get to end after SIGTERM (the CALLSCRIBE_*_DRAIN_TIMEOUT_S
# of each service): the rest completes the calls left and delivers their last utterances.
DRAIN_TIMEOUT_S = 100
# Tasks are added within a minute of the load rising: each one takes new calls at once.
SCALE_OUT_COOLDOWN = Duration.minutes(1)
ENVIRONMENT_HOLDS = (
    "The environment holds names, ARNs, ports and URLs only; the secrets "
    "themselves are read from Secrets Manager at run time by ARN."
)


def ingest_environment(
    config: DeploymentConfig,
    data: DataConstruct,
    transcripts: TranscriptDestinations,
    asr_url: str,
    **service_settings: str,
) -> dict[str, str]:
    """The settings every ingest task reads (callscribe/aws/settings.py), then
    `service_settings`; LOG_LEVEL last."""
    return {
        "CALLSCRIBE_TABLE_NAME": data.table.table_name,
        **transcripts.environment(),
        "CALLSCRIBE_TOKEN_SECRET_ARN": data.token_secret.secret_arn,
        "CALLSCRIBE_CONTROL_SECRET_ARN": data.control_secret.secret_arn,
        "CALLSCRIBE_ASR_URL": asr_url,
        "CALLSCRIBE_PORT": str(INGEST_PORT),
        "CALLSCRIBE_CONTROL_PORT": str(CONTROL_PORT),
        "CALLSCRIBE_MESSAGE_RETENTION_DAYS": str(config.retention_days),
        "CALLSCRIBE_BLOB_S3_BUCKET": data.exports_bucket.bucket_name,
        **service_settings,
        "LOG_LEVEL": config.log_level,
    }


def grant_ingest_task_access(
    role: iam.IRole,
    data: DataConstruct,
    transcripts: TranscriptDestinations,
    cluster: ecs.ICluster,
) -> None:
    """What a task holding calls' media needs: the table, sending to the delivery queue and
    the bus, the token and control secrets, recordings/ in the bucket; listing the cluster's
    tasks (the abandoned-call sweep); protecting itself from scale-in and reading its
    service's deployments (draining)."""
    grant_cluster_task_listing(role, cluster)
    grant_scale_in_protection_and_draining(role, cluster)
    data.table.grant_read_write_data(role)
    acknowledge_table_index_grant(role, data.table)
    transcripts.grant_publish(role)
    data.token_secret.grant_read(role)
    data.control_secret.grant_read(role)
    # Each recording is uploaded under recordings/ when its call ends, then HEADed for its
    # size (HEAD needs s3:GetObject).
    recordings = f"{RECORDINGS_PREFIX}*"
    data.exports_bucket.grant_put(role, recordings)
    data.exports_bucket.grant_read(role, recordings)
    acknowledge_bucket_grant(role, data.exports_bucket, [recordings])


def grant_scale_in_protection_and_draining(role: iam.IRole, cluster: ecs.ICluster) -> None:
    """While it holds calls a task protects itself from scale-in through the ECS agent's
    endpoint, which calls UpdateTaskProtection and GetTaskProtection with the task role; and a
    protected task is never stopped by a deployment, so each reads its service's deployments
    (DescribeServices; its own task through DescribeTasks, ``grant_cluster_task_listing``) and
    drains once its own is replaced. Only this cluster's tasks and services."""
    stack = Stack.of(cluster)
    cluster_tasks = stack.format_arn(
        service="ecs", resource="task", resource_name=f"{cluster.cluster_name}/*"
    )
    cluster_services = stack.format_arn(
        service="ecs", resource="service", resource_name=f"{cluster.cluster_name}/*"
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="ScaleInProtectionWhileHoldingCalls",
            actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
            resources=[cluster_tasks],
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="DrainWhenTheDeploymentIsReplaced",
            actions=["ecs:DescribeServices"],
            resources=[cluster_services],
        )
    )
    acknowledge(
        role,
        "AwsSolutions-IAM5",
        "A task protects itself from scale-in while it holds calls, and reads its "
        "service's deployments to drain when replaced; task ids and the service's name "
        "(CloudFormation's) are not known ahead of time, so the grants name this stack's "
        "cluster's tasks and services (task/<cluster>/*, service/<cluster>/*).",
        findings=[
            f"Resource::{finding_text(role, cluster_tasks)}",
            f"Resource::{finding_text(role, cluster_services)}",
        ],
    )


def grant_cluster_task_listing(role: iam.IRole, cluster: ecs.ICluster) -> None:
    """A starting task completes the calls that tasks gone without ending them (killed, out of
    memory) left open: it lists which of the cluster's tasks still run. (A draining task
    describes its own task to learn its deployment.)"""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["ecs:ListTasks", "ecs:DescribeTasks"],
            resources=["*"],
            conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}},
        )
    )
    acknowledge(
        role,
        "AwsSolutions-IAM5",
        "ecs:ListTasks and ecs:DescribeTasks name no task ahead of time: the policy is "
        "bound to this stack's cluster by the ecs:cluster condition instead.",
        findings=["Resource::*"],
    )
