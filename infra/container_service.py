"""One ECS service of one container: what the Twilio gateway, the KVS readers and the GPU ASR
workers have in common.

Each of them is a task definition holding a single container that is probed on ``/healthz`` by
ECS, logs to its own log group, and is run by a service that rolls out one replacement before
it stops an old task (and rolls back a deployment that never gets healthy), in private subnets,
scaled between a minimum and a maximum on its CPU (or, for the GPU workers, on a metric of
their own). What differs between them is in
``ContainerServiceProps``; what only one of them has (the gateway's load balancer, the readers'
named role, the ASR workers' GPU instances) stays in that service's own construct.

A service composes this construct with the id ``Default``, which CDK leaves out of logical ids:
the resources keep the ids they had when each service built them itself, so deploying the
refactored app updates nothing (a new id would replace the ECS service, dropping its calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from infra.config import DeploymentConfig, ServiceCounts
from infra.logs import log_group
from infra.nag import acknowledge, acknowledge_ecr_authorization

# How ECS probes a container: the images are Python and have no curl.
HEALTH_CHECK_INTERVAL = Duration.seconds(15)
HEALTH_CHECK_TIMEOUT = Duration.seconds(5)
HEALTH_CHECK_RETRIES = 3
# Scaling in ends tasks that hold calls (they drain first): only after load stayed low a while.
SCALE_IN_COOLDOWN = Duration.minutes(10)


def health_probe(port: int) -> str:
    """The Python one-liner the container health check runs against ``/healthz`` on `port`."""
    return (
        "import urllib.request; "
        f"urllib.request.urlopen('http://localhost:{port}/healthz', timeout=4)"
    )


@dataclass(frozen=True)
class FargateCompute:
    """A Fargate task of this size, x86_64 Linux (the platform the images are built for)."""

    cpu: int
    memory_mib: int


@dataclass(frozen=True)
class GpuCompute:
    """A task on the cluster's GPU instances (ECS on EC2, awsvpc networking): one whole GPU,
    placed by `capacity_provider`, spread over the instances; a replacement task starts on a
    new instance when none has a GPU free."""

    capacity_provider: ecs.AsgCapacityProvider
    memory_reservation_mib: int
    gpu_count: int = 1


@dataclass(frozen=True)
class CloudMapName:
    """A private DNS name with one A record per task, for the task's `port`."""

    namespace: servicediscovery.INamespace
    name: str
    port: int
    ttl: Duration = Duration.seconds(10)


@dataclass(frozen=True)
class CpuScaling:
    """Task count between ``counts.min`` and ``counts.max`` (starting at ``counts.desired``),
    tracking the service's average CPU."""

    counts: ServiceCounts
    cpu_target_percent: int
    scale_out_cooldown: Duration


@dataclass(frozen=True)
class MetricScaling:
    """Task count between ``counts.min`` and ``counts.max``, tracking ``metric`` (an average
    over the tasks) at ``target``: for a service whose scarce resource ECS does not measure
    (a GPU's queue of utterances)."""

    counts: ServiceCounts
    metric: cloudwatch.IMetric
    target: float
    scale_out_cooldown: Duration


@dataclass(frozen=True)
class ContainerServiceProps:
    cluster: ecs.ICluster
    subnets: ec2.SubnetSelection
    compute: FargateCompute | GpuCompute
    container_name: str
    image: ecs.ContainerImage
    port_mappings: tuple[ecs.PortMapping, ...]
    environment: Mapping[str, str]
    # Why the environment may be plain text (cdk-nag AwsSolutions-ECS2): what it holds.
    environment_holds: str
    # The port whose /healthz the container health check probes, and the grace it gets to
    # start (a model loading onto a GPU takes minutes).
    health_port: int
    health_start_period: Duration
    # What ECS waits after SIGTERM before it kills the container: the service's drain.
    stop_timeout: Duration
    log_stream_prefix: str
    scaling: CpuScaling | MetricScaling
    # None: the image's own CMD.
    command: tuple[str, ...] | None = None
    # None: a role of its own that CDK creates.
    task_role: iam.IRole | None = None
    # Empty: a security group of its own that CDK creates.
    security_groups: tuple[ec2.ISecurityGroup, ...] = ()
    cloud_map: CloudMapName | None = None
    # How long a new task's failing load-balancer health checks are ignored (Fargate only).
    health_check_grace_period: Duration | None = None


class ContainerService(Construct):
    """``task_definition``, ``container``, ``service`` and ``scaling`` (to add other scaling
    policies to) of one service. Compose it with the id ``Default`` (see the module)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        props: ContainerServiceProps,
    ) -> None:
        super().__init__(scope, id)
        compute = props.compute

        self.task_definition: ecs.TaskDefinition
        if isinstance(compute, FargateCompute):
            self.task_definition = ecs.FargateTaskDefinition(
                self,
                "TaskDefinition",
                cpu=compute.cpu,
                memory_limit_mib=compute.memory_mib,
                task_role=props.task_role,
                runtime_platform=ecs.RuntimePlatform(
                    cpu_architecture=ecs.CpuArchitecture.X86_64,
                    operating_system_family=ecs.OperatingSystemFamily.LINUX,
                ),
            )
        else:
            self.task_definition = ecs.Ec2TaskDefinition(
                self,
                "TaskDefinition",
                network_mode=ecs.NetworkMode.AWS_VPC,
                task_role=props.task_role,
            )
        gpu = compute if isinstance(compute, GpuCompute) else None
        self.container = self.task_definition.add_container(
            props.container_name,
            image=props.image,
            command=list(props.command) if props.command is not None else None,
            gpu_count=gpu.gpu_count if gpu else None,
            memory_reservation_mib=gpu.memory_reservation_mib if gpu else None,
            port_mappings=list(props.port_mappings),
            environment=dict(props.environment),
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c", health_probe(props.health_port)],
                interval=HEALTH_CHECK_INTERVAL,
                timeout=HEALTH_CHECK_TIMEOUT,
                retries=HEALTH_CHECK_RETRIES,
                start_period=props.health_start_period,
            ),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix=props.log_stream_prefix, log_group=log_group(self, "Logs", config)
            ),
            stop_timeout=props.stop_timeout,
        )
        acknowledge_ecr_authorization(self.task_definition)
        acknowledge(self.task_definition, "AwsSolutions-ECS2", props.environment_holds)

        cloud_map_options = None
        if props.cloud_map is not None:
            cloud_map_options = ecs.CloudMapOptions(
                cloud_map_namespace=props.cloud_map.namespace,
                name=props.cloud_map.name,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=props.cloud_map.ttl,
                container=self.container,
                container_port=props.cloud_map.port,
            )
        # What both kinds of service take: the task, its network, service discovery, and the
        # rollout: every service starts a replacement task before it stops an old one (minimum
        # healthy 100 %), and a deployment whose tasks never get healthy is rolled back.
        common = {
            "cluster": props.cluster,
            "task_definition": self.task_definition,
            "desired_count": props.scaling.counts.desired,
            "vpc_subnets": props.subnets,
            "security_groups": list(props.security_groups) or None,
            "cloud_map_options": cloud_map_options,
            "health_check_grace_period": props.health_check_grace_period,
            "min_healthy_percent": 100,
            "max_healthy_percent": 200,
            "circuit_breaker": ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
        }
        self.service: ecs.BaseService
        if isinstance(compute, FargateCompute):
            self.service = ecs.FargateService(self, "Service", assign_public_ip=False, **common)
        else:
            self.service = ecs.Ec2Service(
                self,
                "Service",
                capacity_provider_strategies=[
                    ecs.CapacityProviderStrategy(
                        capacity_provider=compute.capacity_provider.capacity_provider_name,
                        weight=1,
                    )
                ],
                placement_strategies=[ecs.PlacementStrategy.spread_across_instances()],
                **common,
            )

        if not props.security_groups:
            # CDK describes the group it makes for the service by its construct path, which
            # now runs through this construct. A changed description replaces the group (and
            # with it the running tasks' network), so it keeps the path its logical id comes
            # from: the one without the hidden "Default".
            (group,) = self.service.connections.security_groups
            group_resource = group.node.default_child
            assert isinstance(group_resource, ec2.CfnSecurityGroup)
            group_resource.group_description = "/".join(
                part for part in group.node.path.split("/") if part != "Default"
            )

        self.scaling = self.service.auto_scale_task_count(
            min_capacity=props.scaling.counts.min, max_capacity=props.scaling.counts.max
        )
        scaling = props.scaling
        if isinstance(scaling, CpuScaling):
            self.scaling.scale_on_cpu_utilization(
                "CpuScaling",
                target_utilization_percent=scaling.cpu_target_percent,
                scale_out_cooldown=scaling.scale_out_cooldown,
                scale_in_cooldown=SCALE_IN_COOLDOWN,
            )
        else:
            self.scaling.scale_to_track_custom_metric(
                "MetricScaling",
                metric=scaling.metric,
                target_value=scaling.target,
                scale_out_cooldown=scaling.scale_out_cooldown,
                scale_in_cooldown=SCALE_IN_COOLDOWN,
            )
