"""The Twilio media gateway: Fargate tasks behind an internet-facing ALB (TLS, WebSockets).

Twilio connects to wss://<gatewayDomainName>/twilio-media on 443; the ALB forwards to the tasks'
port 8080 (WebSocket + /healthz). Each task also listens on 8081, its private control API, which
only the API Lambda's security group can reach: the API calls the task that holds a call's
media to start or stop its transcription.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import RECORDINGS_PREFIX, DataConstruct
from infra.images import twilio_gateway_image
from infra.logs import log_group
from infra.nag import (
    acknowledge,
    acknowledge_bucket_grant,
    acknowledge_ecr_authorization,
    acknowledge_table_index_grant,
)
from infra.network import NetworkConstruct

GATEWAY_PORT = 8080
CONTROL_PORT = 8081
# The ALB's maximum: a WebSocket on which nothing arrives for this long is closed. Twilio sends a
# media frame every 20 ms, so only a dead stream gets near it; calls themselves last hours.
ALB_IDLE_TIMEOUT = Duration.seconds(4000)
# On scale-in or deployment ECS first deregisters a task and waits this long (or until its
# connections close) before stopping it: the ALB maximum, so calls up to an hour finish on the
# task that has them instead of being cut.
DEREGISTRATION_DELAY = Duration.seconds(3600)
HEALTH_CHECK = (
    "import urllib.request; "
    f"urllib.request.urlopen('http://localhost:{GATEWAY_PORT}/healthz', timeout=4)"
)


def grant_ingest_task_access(role: iam.IRole, data: DataConstruct, bus: events.IEventBus) -> None:
    """What a task holding calls' media needs (a Twilio gateway, a KVS reader): the table,
    the transcript bus, the token and control secrets, and recordings/ in the bucket."""
    data.table.grant_read_write_data(role)
    acknowledge_table_index_grant(role, data.table)
    bus.grant_put_events_to(role)
    data.token_secret.grant_read(role)
    data.control_secret.grant_read(role)
    # Each recording is uploaded under recordings/ when its call ends, then HEADed for its
    # size (HEAD needs s3:GetObject).
    recordings = f"{RECORDINGS_PREFIX}*"
    data.exports_bucket.grant_put(role, recordings)
    data.exports_bucket.grant_read(role, recordings)
    acknowledge_bucket_grant(role, data.exports_bucket, [recordings])


class GatewayConstruct(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        network: NetworkConstruct,
        cluster: ecs.Cluster,
        data: DataConstruct,
        bus: events.IEventBus,
        asr_url: str,
    ) -> None:
        super().__init__(scope, id)

        task_definition = ecs.FargateTaskDefinition(
            self,
            "TaskDefinition",
            cpu=config.gateway_cpu,
            memory_limit_mib=config.gateway_memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.container = task_definition.add_container(
            "gateway",
            image=twilio_gateway_image(),
            port_mappings=[
                ecs.PortMapping(container_port=GATEWAY_PORT, name="media"),
                ecs.PortMapping(container_port=CONTROL_PORT, name="control"),
            ],
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_EVENT_BUS_NAME": bus.event_bus_name,
                "CALLSCRIBE_TOKEN_SECRET_ARN": data.token_secret.secret_arn,
                "CALLSCRIBE_CONTROL_SECRET_ARN": data.control_secret.secret_arn,
                "CALLSCRIBE_ASR_URL": asr_url,
                "CALLSCRIBE_PORT": str(GATEWAY_PORT),
                "CALLSCRIBE_CONTROL_PORT": str(CONTROL_PORT),
                "CALLSCRIBE_MESSAGE_RETENTION_DAYS": str(config.retention_days),
                "CALLSCRIBE_BLOB_S3_BUCKET": data.exports_bucket.bucket_name,
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
                stream_prefix="gateway", log_group=log_group(self, "Logs", config)
            ),
            # Fargate's maximum: after SIGTERM the gateway finishes open utterances, transcribes
            # and publishes them before it exits.
            stop_timeout=Duration.seconds(120),
        )
        grant_ingest_task_access(task_definition.task_role, data, bus)

        acknowledge_ecr_authorization(task_definition)

        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=task_definition,
            desired_count=config.gateway_desired_count,
            vpc_subnets=network.private_subnets,
            assign_public_ip=False,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            health_check_grace_period=Duration.seconds(60),
        )

        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=network.vpc,
            vpc_subnets=network.public_subnets,
            internet_facing=True,
            idle_timeout=ALB_IDLE_TIMEOUT,
            drop_invalid_header_fields=True,
        )
        self.load_balancer.log_access_logs(data.logs_bucket, prefix="alb/gateway")

        self.target_group = elbv2.ApplicationTargetGroup(
            self,
            "TargetGroup",
            vpc=network.vpc,
            port=GATEWAY_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.IP,
            deregistration_delay=DEREGISTRATION_DELAY,
            health_check=elbv2.HealthCheck(
                path="/healthz",
                healthy_http_codes="200",
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
            # Every WebSocket is pinned to its task by the connection itself; API-style
            # stickiness would only skew the spread of new calls.
            targets=[
                self.service.load_balancer_target(
                    container_name=self.container.container_name, container_port=GATEWAY_PORT
                )
            ],
        )
        # HTTPS only. No port 80 listener: Twilio connects with wss:// and plain HTTP is not
        # redirected, it is not served.
        self.listener = self.load_balancer.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[
                elbv2.ListenerCertificate.from_certificate_manager(
                    acm.Certificate.from_certificate_arn(
                        self, "Certificate", config.certificate_arn
                    )
                )
            ],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            default_target_groups=[self.target_group],
            open=True,
        )

        scaling = self.service.auto_scale_task_count(
            min_capacity=config.gateway_min_count, max_capacity=config.gateway_max_count
        )
        # New streams (a WebSocket upgrade is one request) per task per minute…
        scaling.scale_on_request_count(
            "RequestScaling",
            requests_per_target=config.gateway_requests_per_target,
            target_group=self.target_group,
            scale_out_cooldown=Duration.minutes(1),
            scale_in_cooldown=Duration.minutes(10),
        )
        # …and the work of the calls already open (μ-law decoding, resampling, VAD).
        scaling.scale_on_cpu_utilization(
            "CpuScaling",
            target_utilization_percent=config.gateway_cpu_target_percent,
            scale_out_cooldown=Duration.minutes(1),
            scale_in_cooldown=Duration.minutes(10),
        )

        acknowledge(
            self.load_balancer,
            "AwsSolutions-EC23",
            "The media gateway is a public endpoint: Twilio's media servers "
            "connect from addresses Twilio does not publish as a fixed list; only "
            "443 (TLS) is open and every stream presents a signed, short-lived token.",
        )
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment holds names, ARNs, ports and URLs only; the secrets "
            "themselves are read from Secrets Manager at run time by ARN.",
        )

    def allow_control_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(CONTROL_PORT), "start/stop control from the API Lambda"
        )
