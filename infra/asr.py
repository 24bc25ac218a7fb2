"""GPU speech recognition: Whisper (faster-whisper, CTranslate2) workers on ECS over EC2 GPUs.

Reached only by the gateway tasks, at http://asr.<stage>.callscribe.internal:8000 (Cloud Map
A records, one per task: each task has its own ENI in awsvpc mode).
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from infra.config import DeploymentConfig
from infra.images import asr_worker_image
from infra.logs import log_group
from infra.nag import acknowledge, acknowledge_ecr_authorization
from infra.network import NetworkConstruct

ASR_PORT = 8000
ASR_SERVICE_NAME = "asr"
# What the worker reserves on the instance. A g4dn/g5/g6 .xlarge has 16 GiB: ECS keeps some for
# its agent, the rest is the model's host-side buffers and the request queue.
ASR_MEMORY_RESERVATION_MIB = 12_288
HEALTH_CHECK = (
    "import urllib.request; "
    f"urllib.request.urlopen('http://localhost:{ASR_PORT}/healthz', timeout=4)"
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

        task_definition = ecs.Ec2TaskDefinition(
            self, "TaskDefinition", network_mode=ecs.NetworkMode.AWS_VPC
        )
        self.container = task_definition.add_container(
            "asr",
            image=asr_worker_image(config.asr_model),
            gpu_count=1,
            memory_reservation_mib=ASR_MEMORY_RESERVATION_MIB,
            port_mappings=[ecs.PortMapping(container_port=ASR_PORT, name="asr")],
            environment={
                "CALLSCRIBE_ASR_MODEL": config.asr_model_dir,
                "CALLSCRIBE_ASR_DEVICE": "cuda",
                "CALLSCRIBE_ASR_COMPUTE_TYPE": "float16",
                "CALLSCRIBE_ASR_PORT": str(ASR_PORT),
                "LOG_LEVEL": config.log_level,
            },
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c", HEALTH_CHECK],
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                retries=3,
                # Loading the model onto the GPU takes a while.
                start_period=Duration.seconds(180),
            ),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="asr", log_group=log_group(self, "Logs", config)
            ),
            stop_timeout=Duration.seconds(60),
        )

        acknowledge_ecr_authorization(task_definition)

        self.service = ecs.Ec2Service(
            self,
            "Service",
            cluster=cluster,
            task_definition=task_definition,
            desired_count=config.asr_desired_count,
            vpc_subnets=network.private_subnets,
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(
                    capacity_provider=self.capacity_provider.capacity_provider_name, weight=1
                )
            ],
            cloud_map_options=ecs.CloudMapOptions(
                cloud_map_namespace=namespace,
                name=ASR_SERVICE_NAME,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
                container=self.container,
                container_port=ASR_PORT,
            ),
            placement_strategies=[ecs.PlacementStrategy.spread_across_instances()],
            # A replacement task starts (on a new instance if needed) before the old one stops.
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
        )
        self.url = f"http://{ASR_SERVICE_NAME}.{namespace.namespace_name}:{ASR_PORT}"

        scaling = self.service.auto_scale_task_count(
            min_capacity=config.asr_min_count, max_capacity=config.asr_max_count
        )
        # The container exposes no GPU metric to ECS; its CPU work (feature extraction, the
        # decoding loop, the HTTP server) grows with the utterances in flight.
        scaling.scale_on_cpu_utilization(
            "CpuScaling",
            target_utilization_percent=config.asr_cpu_target_percent,
            scale_out_cooldown=Duration.minutes(2),
            scale_in_cooldown=Duration.minutes(10),
        )

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
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment holds only non-secret settings (model path, device, port, log level).",
        )

    def allow_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(ASR_PORT), "speech recognition requests from the gateway"
        )
