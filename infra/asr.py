"""GPU speech recognition: Whisper (faster-whisper, CTranslate2) workers on ECS over EC2 GPUs.

Reached only by the gateway tasks, at http://asr.<stage>.callscribe.internal:8000 (Cloud Map
A records, one per task: each task has its own ENI in awsvpc mode).
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
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
    GpuCompute,
    MetricScaling,
)
from infra.images import asr_worker_image
from infra.nag import acknowledge
from infra.network import NetworkConstruct

ASR_PORT = 8000
ASR_SERVICE_NAME = "asr"
# What the worker reserves on the instance. A g4dn/g5/g6 .xlarge has 16 GiB: ECS keeps some for
# its agent, the rest is the model's host-side buffers and the request queue.
ASR_MEMORY_RESERVATION_MIB = 12_288
# How often each worker reports its load (EMF lines in its log group: callscribe.asr.worker).
METRICS_INTERVAL_S = 60
METRICS_NAMESPACE = "CallScribe"
METRICS_SERVICE = "callscribe-asr-worker"


def asr_queue_depth_metric() -> cloudwatch.Metric:
    """Utterances waiting for a batch, averaged over the workers' reports of each minute."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name="AsrQueueDepth",
        dimensions_map={"service": METRICS_SERVICE},
        statistic="Average",
        period=Duration.minutes(1),
    )


class AsrConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        network: NetworkConstruct,
        cluster: ecs.Cluster,
        namespace: servicediscovery.INamespace,
    ) -> None:
        super().__init__(scope, id)

        instance_role = iam.Role(
            self, "InstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com")
        )
        instance_security_group = ec2.SecurityGroup(
            self,
            "InstanceSecurityGroup",
            vpc=network.vpc,
            description="CallScribe GPU instances: no inbound (tasks have their own ENIs)",
            allow_all_outbound=True,
        )
        launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            instance_type=ec2.InstanceType(config.gpu_instance_type),
            # ECS-optimised Amazon Linux 2 with the NVIDIA driver and container toolkit.
            machine_image=ecs.EcsOptimizedImage.amazon_linux2(ecs.AmiHardwareType.GPU),
            user_data=ec2.UserData.for_linux(),
            role=instance_role,
            security_group=instance_security_group,
            require_imdsv2=True,
            # Room for the CUDA image (several GiB, plus the baked-in model) and a deployment's
            # second copy while it rolls.
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.asr_root_volume_gib,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                    ),
                )
            ],
        )
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "GpuInstances",
            vpc=network.vpc,
            vpc_subnets=network.private_subnets,
            launch_template=launch_template,
            min_capacity=config.asr_min_count,
            # One spare instance: a deployment at full scale starts each replacement task
            # before it stops an old one (minimum healthy 100 %), one instance at a time.
            max_capacity=config.asr_max_count + 1,
        )
        self.capacity_provider = ecs.AsgCapacityProvider(
            self,
            "GpuCapacityProvider",
            auto_scaling_group=self.auto_scaling_group,
            # ECS adds and removes instances to fit the tasks, and keeps an instance that runs
            # a task from being scaled in underneath it.
            enable_managed_scaling=True,
            enable_managed_termination_protection=True,
            target_capacity_percent=100,
        )
        cluster.add_asg_capacity_provider(self.capacity_provider)

        self.container_service = ContainerService(
            self,
            "Default",
            config=config,
            props=ContainerServiceProps(
                cluster=cluster,
                subnets=network.private_subnets,
                compute=GpuCompute(
                    capacity_provider=self.capacity_provider,
                    memory_reservation_mib=ASR_MEMORY_RESERVATION_MIB,
                ),
                container_name="asr",
                image=asr_worker_image(config.asr_model),
                port_mappings=(ecs.PortMapping(container_port=ASR_PORT, name="asr"),),
                environment={
                    "CALLSCRIBE_ASR_MODEL": config.asr_model_dir,
                    "CALLSCRIBE_ASR_DEVICE": "cuda",
                    "CALLSCRIBE_ASR_COMPUTE_TYPE": "float16",
                    "CALLSCRIBE_ASR_PORT": str(ASR_PORT),
                    "CALLSCRIBE_ASR_METRICS_INTERVAL_S": str(METRICS_INTERVAL_S),
                    "LOG_LEVEL": config.log_level,
                },
                environment_holds=(
                    "The environment holds only non-secret settings (model path, device, port, "
                    "log level)."
                ),
                health_port=ASR_PORT,
                # Loading the model onto the GPU takes a while.
                health_start_period=Duration.seconds(180),
                stop_timeout=Duration.seconds(60),
                log_stream_prefix="asr",
                cloud_map=CloudMapName(namespace=namespace, name=ASR_SERVICE_NAME, port=ASR_PORT),
                # ECS measures no GPU, and a GPU worker's CPU says little of its load: it
                # scales on what is scarce, the utterances waiting for a batch (each worker
                # reports its queue every minute, CALLSCRIBE_ASR_METRICS_INTERVAL_S).
                scaling=MetricScaling(
                    counts=config.asr_counts,
                    metric=asr_queue_depth_metric(),
                    target=config.asr_queue_depth_target,
                    scale_out_cooldown=Duration.minutes(2),
                ),
            ),
        )
        self.container = self.container_service.container
        self.service = self.container_service.service
        self.url = f"http://{ASR_SERVICE_NAME}.{namespace.namespace_name}:{ASR_PORT}"

        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-AS3",
            "ECS managed scaling drives this group; its scaling activity is in "
            "the ECS service events and the group's activity history, and no one "
            "acts on per-instance notifications.",
        )
        acknowledge(
            instance_role,
            "AwsSolutions-IAM5",
            "The ECS container agent's statements that CDK generates for a cluster's "
            "instances: ecs:DiscoverPollEndpoint and ecr:GetAuthorizationToken support no "
            "resource scoping, and ecs:Submit* (the agent reporting task and container state) "
            "is scoped to this cluster.",
            findings=["Resource::*", "Action::ecs:Submit*"],
        )

    def allow_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(ASR_PORT), "speech recognition requests from the gateway"
        )
