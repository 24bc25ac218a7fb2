"""The Twilio media gateway: Fargate tasks behind an internet-facing ALB (TLS, WebSockets).

Twilio connects to wss://<gatewayDomainName>/twilio-media on 443; the ALB forwards to the tasks'
port 8080 (WebSocket, /healthz, /readyz). Each task also listens on 8081, its private control
API, which only the API Lambda's security group can reach: the API calls the task that holds a
call's media to start or stop its transcription.

A Twilio media stream lives on its WebSocket, so a call cannot move between tasks: it ends on
the task that has it. Hence a task holding calls protects itself from scale-in, the ALB checks
readiness (/readyz: 503 once the task drains, so new streams go to other tasks) while ECS's
container health check probes liveness (/healthz), and the ALB's connection draining waits up
to an hour for a stopping task's streams.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from constructs import Construct

from infra.config import DeploymentConfig
from infra.container_service import (
    SCALE_IN_COOLDOWN,
    ContainerService,
    ContainerServiceProps,
    CpuScaling,
    FargateCompute,
)
from infra.data import DataConstruct
from infra.events import TranscriptDestinations
from infra.images import TWILIO_GATEWAY_COMMAND, ingest_image
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

# The media WebSockets, /healthz and /readyz: the ALB forwards 443 here.
GATEWAY_PORT = INGEST_PORT
# The ALB's maximum: a WebSocket on which nothing arrives for this long is closed. Twilio sends a
# media frame every 20 ms, so only a dead stream gets near it; calls themselves last hours.
ALB_IDLE_TIMEOUT = Duration.seconds(4000)
# On scale-in or deployment ECS first deregisters a task and waits this long (or until its
# connections close) before stopping it: the ALB maximum, so calls up to an hour finish on the
# task that has them instead of being cut (a Twilio stream cannot move to another task).
DEREGISTRATION_DELAY = Duration.seconds(3600)
# The target group's check is readiness: /readyz answers 503 once a task drains, and after
# three failed checks 15 s apart the ALB sends it no new stream.
READINESS_PATH = "/readyz"
READINESS_INTERVAL = Duration.seconds(15)
READINESS_UNHEALTHY_THRESHOLD = 3
# A task whose deployment was replaced is unready at once but takes the streams the ALB sends
# until it has noticed (three failed checks, and one interval to spare): refusing them would
# leave calls without transcription.
UNREADY_GRACE_S = READINESS_INTERVAL.to_seconds() * (READINESS_UNHEALTHY_THRESHOLD + 1)


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
        transcripts: TranscriptDestinations,
        asr_url: str,
    ) -> None:
        super().__init__(scope, id)

        self.container_service = ContainerService(
            self,
            "Default",
            config=config,
            props=ContainerServiceProps(
                cluster=cluster,
                subnets=network.private_subnets,
                compute=FargateCompute(
                    cpu=config.gateway_cpu, memory_mib=config.gateway_memory_mib
                ),
                container_name="gateway",
                image=ingest_image(),
                command=TWILIO_GATEWAY_COMMAND,
                port_mappings=(
                    ecs.PortMapping(container_port=GATEWAY_PORT, name="media"),
                    ecs.PortMapping(container_port=CONTROL_PORT, name="control"),
                ),
                environment=ingest_environment(
                    config,
                    data,
                    transcripts,
                    asr_url,
                    CALLSCRIBE_ECS_CLUSTER=cluster.cluster_arn,
                    # After SIGTERM (the ALB's draining is over by then) live streams get this
                    # long to end before the task completes them.
                    CALLSCRIBE_TWILIO_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
                    CALLSCRIBE_TWILIO_UNREADY_GRACE_S=str(int(UNREADY_GRACE_S)),
                ),
                environment_holds=ENVIRONMENT_HOLDS,
                health_port=GATEWAY_PORT,
                health_start_period=HEALTH_START_PERIOD,
                stop_timeout=STOP_TIMEOUT,
                log_stream_prefix="gateway",
                # The work of the calls already open (μ-law decoding, resampling, VAD); new
                # streams are tracked by the request scaling below.
                scaling=CpuScaling(
                    counts=config.gateway_counts,
                    cpu_target_percent=config.gateway_cpu_target_percent,
                    scale_out_cooldown=SCALE_OUT_COOLDOWN,
                ),
                health_check_grace_period=Duration.seconds(60),
            ),
        )
        self.container = self.container_service.container
        self.service = self.container_service.service
        task_role = self.container_service.task_definition.task_role
        grant_ingest_task_access(task_role, data, transcripts, cluster)

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
            # Readiness, not liveness: a draining task fails it and gets no new streams, and
            # keeps the ones it has (the ALB does not end a target's connections for failing
            # its checks; when ECS replaces it, connection draining waits for them).
            health_check=elbv2.HealthCheck(
                path=READINESS_PATH,
                healthy_http_codes="200",
                interval=READINESS_INTERVAL,
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=READINESS_UNHEALTHY_THRESHOLD,
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

        # New streams (a WebSocket upgrade is one request) per task per minute, beside the CPU.
        self.container_service.scaling.scale_on_request_count(
            "RequestScaling",
            requests_per_target=config.gateway_requests_per_target,
            target_group=self.target_group,
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
            scale_in_cooldown=SCALE_IN_COOLDOWN,
        )

        acknowledge(
            self.load_balancer,
            "AwsSolutions-EC23",
            "The media gateway is a public endpoint: Twilio's media servers "
            "connect from addresses Twilio does not publish as a fixed list; only "
            "443 (TLS) is open and every stream presents a signed, short-lived token.",
        )

    def allow_control_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(CONTROL_PORT), "start/stop control from the API Lambda"
        )
