"""Amazon Connect ingest: the KVS reader tasks (Fargate, no load balancer).

Each task reads contacts' Kinesis Video Streams in tenants' AWS accounts. Its task role, with a
fixed name (``callscribe-<stage>-kvs-reader``), is the identity that tenants trust: the role
each tenant creates with ``infra/customer_account.py`` names this ARN as its only principal and
demands the tenant's external id. The task role itself may only assume roles named
``CallScribeConnectMediaReader…`` (in the accounts listed in ``connectAccountIds``, or any), and
read and write the deployment's own table and secrets and send transcripts to its delivery queue
and bus: it never touches a stream directly.

The API Lambda reaches the tasks at ``http://kvs-reader.<stage>.callscribe.internal:8081`` (Cloud
Map A records, one per task) to open a contact; the task that opens it records its own address
as the call's owner, and later stops and starts go straight to it. A reader that stops (scale-in,
a deployment) hands its calls to the others at the same name, so the readers reach each other's
control port too. Only the API Lambda and the readers may reach the control port; the health
port is probed inside the container.

A reader protects itself from scale-in while it holds calls, and once its deployment is
replaced, or on SIGTERM, it hands its calls over (the next reader reads each call's stream
on from the fragment after the last one it processed) and takes no new ones.
"""

from __future__ import annotations

from aws_cdk import Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from infra.config import DeploymentConfig
from infra.container_service import (
    CloudMapName,
    ContainerService,
    ContainerServiceProps,
    CpuScaling,
    FargateCompute,
)
from infra.data import DataConstruct
from infra.events import TranscriptDestinations
from infra.images import KVS_READER_COMMAND, ingest_image
from infra.ingest import (
    CONTROL_PORT,
    DRAIN_TIMEOUT_S,
    ENVIRONMENT_HOLDS,
    HEALTH_START_PERIOD,
    INGEST_PORT,
    SCALE_OUT_COOLDOWN,
    STOP_TIMEOUT,
    grant_ingest_task_access,
    ingest_environment,
)
from infra.nag import acknowledge
from infra.network import NetworkConstruct

# /healthz and /readyz only: the readers serve no media port.
HEALTH_PORT = INGEST_PORT
SERVICE_NAME = "kvs-reader"
# Tenants' stacks create their role under this name (customer_account.py); the readers may
# assume nothing else.
CUSTOMER_ROLE_NAME_PREFIX = "CallScribeConnectMediaReader"


def reader_role_name(config: DeploymentConfig) -> str:
    return f"callscribe-{config.stage}-kvs-reader"


class KvsReaderConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        network: NetworkConstruct,
        cluster: ecs.Cluster,
        namespace: servicediscovery.INamespace,
        data: DataConstruct,
        transcripts: TranscriptDestinations,
        asr_url: str,
    ) -> None:
        super().__init__(scope, id)

        # A fixed name keeps the ARN that tenants' trust policies name stable across
        # deployments (a replaced role with a generated name would break every tenant).
        self.task_role = iam.Role(
            self,
            "TaskRole",
            role_name=reader_role_name(config),
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="CallScribe KVS readers: the identity tenants' Connect roles trust",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description="CallScribe KVS readers: control from the API Lambda; egress to AWS APIs",
            allow_all_outbound=True,
        )
        self.control_url = f"http://{SERVICE_NAME}.{namespace.namespace_name}:{CONTROL_PORT}"
        self.container_service = ContainerService(
            self,
            "Default",
            config=config,
            props=ContainerServiceProps(
                cluster=cluster,
                subnets=network.private_subnets,
                compute=FargateCompute(
                    cpu=config.kvs_reader_cpu, memory_mib=config.kvs_reader_memory_mib
                ),
                task_role=self.task_role,
                security_groups=(self.security_group,),
                container_name="reader",
                image=ingest_image(),
                command=KVS_READER_COMMAND,
                port_mappings=(
                    ecs.PortMapping(container_port=HEALTH_PORT, name="health"),
                    ecs.PortMapping(container_port=CONTROL_PORT, name="control"),
                ),
                environment=ingest_environment(
                    config,
                    data,
                    transcripts,
                    asr_url,
                    CALLSCRIBE_CONNECT_ROLE_SESSION_NAME=f"callscribe-{config.stage}",
                    # Its own task and service (to drain when its deployment is replaced).
                    CALLSCRIBE_ECS_CLUSTER=cluster.cluster_arn,
                    # Where a stopping reader hands its calls: the other readers.
                    CALLSCRIBE_KVS_READER_URL=self.control_url,
                    # After SIGTERM, the calls no other reader took get this long to end.
                    CALLSCRIBE_CONNECT_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
                ),
                environment_holds=ENVIRONMENT_HOLDS,
                health_port=HEALTH_PORT,
                health_start_period=HEALTH_START_PERIOD,
                stop_timeout=STOP_TIMEOUT,
                log_stream_prefix="kvs-reader",
                cloud_map=CloudMapName(namespace=namespace, name=SERVICE_NAME, port=CONTROL_PORT),
                # Each contact is a GetMedia connection, MKV parsing, resampling and VAD: CPU.
                scaling=CpuScaling(
                    counts=config.kvs_reader_counts,
                    cpu_target_percent=config.kvs_reader_cpu_target_percent,
                    scale_out_cooldown=SCALE_OUT_COOLDOWN,
                ),
            ),
        )
        self.container = self.container_service.container
        self.service = self.container_service.service
        grant_ingest_task_access(self.task_role, data, transcripts, cluster)
        # A stopping reader hands its calls to the others over their control port.
        self.security_group.add_ingress_rule(
            self.security_group,
            ec2.Port.tcp(CONTROL_PORT),
            "hand Connect calls over between KVS readers",
        )
        partition = Stack.of(self).partition
        accounts = config.connect_account_ids or ("*",)
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="AssumeTenantsConnectMediaRoles",
                actions=["sts:AssumeRole"],
                resources=[
                    f"arn:{partition}:iam::{account}:role/{CUSTOMER_ROLE_NAME_PREFIX}*"
                    for account in accounts
                ],
            )
        )
        # cdk-nag names a partition literal as is and a token as <AWS::Partition>.
        nag_partition = "<AWS::Partition>" if Token.is_unresolved(partition) else partition
        acknowledge(
            self.task_role,
            "AwsSolutions-IAM5",
            "Tenants' Connect roles are named CallScribeConnectMediaReader… in accounts that "
            "are onboarded at run time; each of those roles trusts only this role, and only "
            "with the tenant's own external id.",
            findings=[
                f"Resource::arn:{nag_partition}:iam::{account}:role/{CUSTOMER_ROLE_NAME_PREFIX}*"
                for account in accounts
            ],
        )

    def allow_control_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(CONTROL_PORT), "open/start/stop Connect calls from the API Lambda"
        )
