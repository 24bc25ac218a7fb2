"""Amazon Connect ingest: the KVS reader tasks (Fargate, no load balancer).

Each task reads contacts' Kinesis Video Streams in tenants' AWS accounts. Its task role, with a
fixed name (``callscribe-<stage>-kvs-reader``), is the identity that tenants trust: the role
each tenant creates with ``infra/customer_account.py`` names this ARN as its only principal and
demands the tenant's external id. The task role itself may only assume roles named
``CallScribeConnectMediaReader…`` (in the accounts listed in ``connectAccountIds``, or any), and
read and write the deployment's own table, bus and secrets: it never touches a stream directly.

The API Lambda reaches the tasks at ``http://kvs-reader.<stage>.callscribe.internal:8081`` (Cloud
Map A records, one per task) to open a contact; the task that opens it records its own address
as the call's owner, and later stops and starts go straight to it. Only the API Lambda's
security group may reach the control port; the health port is probed inside the container.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import DataConstruct
from infra.gateway import grant_ingest_task_access
from infra.images import kvs_reader_image
from infra.logs import log_group
from infra.nag import (
    acknowledge,
    acknowledge_ecr_authorization,
)
from infra.network import NetworkConstruct

HEALTH_PORT = 8080
CONTROL_PORT = 8081
SERVICE_NAME = "kvs-reader"
# Tenants' stacks create their role under this name (customer_account.py); the readers may
# assume nothing else.
CUSTOMER_ROLE_NAME_PREFIX = "CallScribeConnectMediaReader"
HEALTH_CHECK = (
    "import urllib.request; "
    f"urllib.request.urlopen('http://localhost:{HEALTH_PORT}/healthz', timeout=4)"
)


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
        bus: events.IEventBus,
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
        task_definition = ecs.FargateTaskDefinition(
            self,
            "TaskDefinition",
            cpu=config.kvs_reader_cpu,
            memory_limit_mib=config.kvs_reader_memory_mib,
            task_role=self.task_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.container = task_definition.add_container(
            "reader",
            image=kvs_reader_image(),
            port_mappings=[
                ecs.PortMapping(container_port=HEALTH_PORT, name="health"),
                ecs.PortMapping(container_port=CONTROL_PORT, name="control"),
            ],
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_EVENT_BUS_NAME": bus.event_bus_name,
                "CALLSCRIBE_TOKEN_SECRET_ARN": data.token_secret.secret_arn,
                "CALLSCRIBE_CONTROL_SECRET_ARN": data.control_secret.secret_arn,
                "CALLSCRIBE_ASR_URL": asr_url,
                "CALLSCRIBE_PORT": str(HEALTH_PORT),
                "CALLSCRIBE_CONTROL_PORT": str(CONTROL_PORT),
                "CALLSCRIBE_MESSAGE_RETENTION_DAYS": str(config.retention_days),
                "CALLSCRIBE_BLOB_S3_BUCKET": data.exports_bucket.bucket_name,
                "CALLSCRIBE_CONNECT_ROLE_SESSION_NAME": f"callscribe-{config.stage}",
                "LOG_LEVEL": config.log_level,
            },
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c", HEALTH_CHECK],
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(60),
            ),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="kvs-reader", log_group=log_group(self, "Logs", config)
            ),
            # Fargate's maximum: after SIGTERM the open utterances are finished and published.
            stop_timeout=Duration.seconds(120),
        )
        grant_ingest_task_access(self.task_role, data, bus)
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
        acknowledge_ecr_authorization(task_definition)
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

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description="CallScribe KVS readers: control from the API Lambda; egress to AWS APIs",
            allow_all_outbound=True,
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=task_definition,
            desired_count=config.kvs_reader_desired_count,
            vpc_subnets=network.private_subnets,
            security_groups=[self.security_group],
            assign_public_ip=False,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            cloud_map_options=ecs.CloudMapOptions(
                cloud_map_namespace=namespace,
                name=SERVICE_NAME,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
                container=self.container,
                container_port=CONTROL_PORT,
            ),
        )
        self.control_url = f"http://{SERVICE_NAME}.{namespace.namespace_name}:{CONTROL_PORT}"

        scaling = self.service.auto_scale_task_count(
            min_capacity=config.kvs_reader_min_count, max_capacity=config.kvs_reader_max_count
        )
        # Each contact is a GetMedia connection, MKV parsing, resampling and VAD: CPU.
        scaling.scale_on_cpu_utilization(
            "CpuScaling",
            target_utilization_percent=config.kvs_reader_cpu_target_percent,
            scale_out_cooldown=Duration.minutes(1),
            scale_in_cooldown=Duration.minutes(10),
        )
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment holds names, ARNs, ports and URLs only; the secrets "
            "themselves are read from Secrets Manager at run time by ARN.",
        )

    def allow_control_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(CONTROL_PORT), "open/start/stop Connect calls from the API Lambda"
        )
