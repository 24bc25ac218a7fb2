"""SIPREC recorders: Fargate tasks that SBCs fork calls to (SIP and RTP), behind an internal NLB.

The SBCs reach the VPC over a private path (site-to-site VPN, Transit Gateway, Direct Connect).
An internal Network Load Balancer in the private subnets listens on 5070, TCP and UDP, and hands
each new flow to a task that answers its readiness check. Only the requests that create a dialog
(INVITE, and the SBCs' OPTIONS pings) go through it: the recorder writes its task's own private
IP into its Contact header and its SDP answer, so ACK, re-INVITE, BYE and the RTP go straight to
the task that answered. Hence the tasks' security group admits SIP and the RTP range from the
SBCs' networks themselves, and a draining task keeps its live calls while the NLB sends new
INVITEs elsewhere.

For UDP and TCP_UDP target groups the NLB always preserves the client's address: a task sees the
SBC's own IP on every request, through the NLB or not, which the recorder's tenant mapping (SBC
networks mapped in the Store) and its RTP source check rely on.

Fargate rather than ECS on EC2 with host networking: in awsvpc mode every task has an ENI and IP
of its own, so every task has 5070 and the whole RTP range to itself and no host ports are
planned between tasks that share an instance. A range of N ports holds N / 4 calls (two streams a
call, each an even RTP port and its odd RTCP neighbour), capped lower by
``siprecMaxCallsPerTask``, what a task's CPU can carry.

Scale-in never cuts a call: a task protects itself from scale-in (through the ECS agent's
task-protection endpoint) while it holds calls, so service scaling and deployments stop only
tasks without calls; a deployment waits for each old task to be without calls.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import SIPREC_SIP_PORT, DeploymentConfig
from infra.container_service import (
    ContainerService,
    ContainerServiceProps,
    CpuScaling,
    FargateCompute,
)
from infra.data import DataConstruct
from infra.events import TranscriptDestinations
from infra.images import SIPREC_RECORDER_COMMAND, ingest_image
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

# SIP over TCP and UDP, on the NLB and on every task.
SIP_PORT = SIPREC_SIP_PORT
# The NLB probes /healthz, liveness, like ECS: never /readyz. ECS stops and replaces a task its
# load balancer finds unhealthy, scale-in protection or not, so a check that failed while a task
# is full or draining would cut that task's live calls. A full task refuses INVITEs itself (503
# with Retry-After; OPTIONS pings too); a task whose deployment was replaced leaves the target
# group itself (CALLSCRIBE_SIPREC_TARGET_GROUP_ARN) and finishes its calls.
HEALTH_PORT = INGEST_PORT
HEALTH_PATH = "/healthz"
HEALTH_INTERVAL = Duration.seconds(10)
HEALTH_TIMEOUT = Duration.seconds(5)
HEALTH_THRESHOLD = 2
# What the NLB waits, once ECS deregisters a task, before it ends the flows still pinned to it
# (connection termination). Those flows carry only INVITEs and OPTIONS (a call's own requests and
# RTP never pass the NLB), and the recorder answers an INVITE at once: 15 s covers a transaction
# under way and its retransmissions, and every second more is a second in which an SBC's pinned
# flow can bring a new call to a task that is about to stop.
DEREGISTRATION_DELAY = Duration.seconds(15)
SERVICE_NAME = "siprec-recorder"


def siprec_environment(
    config: DeploymentConfig,
    data: DataConstruct,
    transcripts: TranscriptDestinations,
    asr_url: str,
    cluster: ecs.ICluster,
) -> dict[str, str]:
    """What the recorder reads besides what every ingest task reads."""
    advertised = (
        {"CALLSCRIBE_SIPREC_ADVERTISED_ADDRESS": config.siprec_advertised_address}
        if config.siprec_advertised_address is not None
        # Unset: each task advertises its own private IP, from the ECS task metadata.
        else {}
    )
    return ingest_environment(
        config,
        data,
        transcripts,
        asr_url,
        CALLSCRIBE_ECS_CLUSTER=cluster.cluster_arn,
        CALLSCRIBE_SIPREC_PORT=str(SIP_PORT),
        CALLSCRIBE_SIPREC_RTP_PORTS=config.siprec_rtp_ports,
        # No default tenant: only SBCs whose network is mapped in the Store (`callscribe
        # siprec-sources set --network CIDR --tenant T --store dynamodb`) are recorded.
        CALLSCRIBE_SIPREC_TENANT="",
        CALLSCRIBE_SIPREC_MAX_CALLS=str(config.siprec_max_calls_per_task),
        # After SIGTERM, live calls get this long to end by their BYEs before the task
        # completes them: inside the 120 s ECS allows, leaving time to deliver.
        CALLSCRIBE_SIPREC_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
        **advertised,
    )


class SiprecRecorderConstruct(Construct):
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
        first_rtp_port, last_rtp_port = config.siprec_rtp_port_range
        sbc_networks = [ec2.Peer.ipv4(cidr) for cidr in config.siprec_source_cidrs]

        # SIP and RTP from the SBCs' networks only (SIP has no credentials), whether a request
        # came through the NLB (the SBC's address is preserved) or straight from the SBC.
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description=(
                "CallScribe SIPREC recorders: SIP and RTP from the SBC networks, health checks "
                "from the NLB, control from the API Lambda"
            ),
            allow_all_outbound=True,
        )
        for sbc in sbc_networks:
            self.security_group.add_ingress_rule(
                sbc, ec2.Port.tcp(SIP_PORT), "SIP over TCP from an SBC network"
            )
            self.security_group.add_ingress_rule(
                sbc, ec2.Port.udp(SIP_PORT), "SIP over UDP from an SBC network"
            )
            self.security_group.add_ingress_rule(
                sbc,
                ec2.Port.udp_range(first_rtp_port, last_rtp_port),
                "RTP from an SBC network, straight to the task that answered",
            )

        self.container_service = ContainerService(
            self,
            "Default",
            config=config,
            props=ContainerServiceProps(
                cluster=cluster,
                subnets=network.private_subnets,
                compute=FargateCompute(cpu=config.siprec_cpu, memory_mib=config.siprec_memory_mib),
                security_groups=(self.security_group,),
                container_name="recorder",
                image=ingest_image(),
                command=SIPREC_RECORDER_COMMAND,
                port_mappings=(
                    ecs.PortMapping(container_port=HEALTH_PORT, name="health"),
                    ecs.PortMapping(container_port=CONTROL_PORT, name="control"),
                    ecs.PortMapping(
                        container_port=SIP_PORT, protocol=ecs.Protocol.TCP, name="sip-tcp"
                    ),
                    ecs.PortMapping(
                        container_port=SIP_PORT, protocol=ecs.Protocol.UDP, name="sip-udp"
                    ),
                    # awsvpc maps a container port range onto the same ports of the task's own
                    # ENI: the whole range is this task's.
                    ecs.PortMapping(
                        container_port=ecs.ContainerDefinition.CONTAINER_PORT_USE_RANGE,
                        container_port_range=config.siprec_rtp_ports,
                        protocol=ecs.Protocol.UDP,
                        name="rtp",
                    ),
                ),
                environment=siprec_environment(config, data, transcripts, asr_url, cluster),
                environment_holds=ENVIRONMENT_HOLDS,
                health_port=HEALTH_PORT,
                health_start_period=HEALTH_START_PERIOD,
                stop_timeout=STOP_TIMEOUT,
                log_stream_prefix=SERVICE_NAME,
                # The work of the calls already held (decoding, resampling, VAD on two streams
                # each); the call cap and /readyz keep a task from taking more than it carries
                # while new tasks start.
                scaling=CpuScaling(
                    counts=config.siprec_counts,
                    cpu_target_percent=config.siprec_cpu_target_percent,
                    scale_out_cooldown=SCALE_OUT_COOLDOWN,
                ),
                health_check_grace_period=Duration.seconds(60),
            ),
        )
        self.container = self.container_service.container
        self.service = self.container_service.service

        task_role = self.container_service.task_definition.task_role
        grant_ingest_task_access(task_role, data, transcripts, cluster)

        # The NLB admits SIP from the SBCs' networks and sends only to the recorders: the
        # forwarded flows and its health checks (which its outbound rules govern).
        self.load_balancer_security_group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=network.vpc,
            description="CallScribe SIPREC NLB: SIP from the SBC networks, to the recorders only",
            allow_all_outbound=False,
        )
        for sbc in sbc_networks:
            self.load_balancer_security_group.add_ingress_rule(
                sbc, ec2.Port.tcp(SIP_PORT), "SIP over TCP from an SBC network"
            )
            self.load_balancer_security_group.add_ingress_rule(
                sbc, ec2.Port.udp(SIP_PORT), "SIP over UDP from an SBC network"
            )
        # The forwarded SIP reaches the tasks with the SBC's own address, admitted by their
        # rules for the SBC networks above.
        self.load_balancer_security_group.add_egress_rule(
            self.security_group, ec2.Port.tcp(SIP_PORT), "SIP over TCP to the recorders"
        )
        self.load_balancer_security_group.add_egress_rule(
            self.security_group, ec2.Port.udp(SIP_PORT), "SIP over UDP to the recorders"
        )
        # Health checks come from the NLB's own nodes: both sides of the rule name the groups.
        self.security_group.connections.allow_from(
            self.load_balancer_security_group,
            ec2.Port.tcp(HEALTH_PORT),
            "NLB health checks (/readyz)",
        )

        self.load_balancer = elbv2.NetworkLoadBalancer(
            self,
            "LoadBalancer",
            vpc=network.vpc,
            vpc_subnets=network.private_subnets,
            internet_facing=False,
            security_groups=[self.load_balancer_security_group],
            # An SBC usually sends to one of the NLB's addresses; across zones, that address
            # reaches every task, not only those in its own zone. Only signalling crosses zones
            # (RTP never passes the NLB).
            cross_zone_enabled=True,
        )
        self.target_group = elbv2.NetworkTargetGroup(
            self,
            "TargetGroup",
            vpc=network.vpc,
            port=SIP_PORT,
            protocol=elbv2.Protocol.TCP_UDP,
            target_type=elbv2.TargetType.IP,
            deregistration_delay=DEREGISTRATION_DELAY,
            # At the end of the delay the flows still pinned to a deregistered task (by ECS
            # stopping it, or by itself when replaced) end, and the SBC's next packet is a new
            # flow to a registered one.
            connection_termination=True,
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.HTTP,
                port=str(HEALTH_PORT),
                path=HEALTH_PATH,
                healthy_http_codes="200",
                interval=HEALTH_INTERVAL,
                timeout=HEALTH_TIMEOUT,
                healthy_threshold_count=HEALTH_THRESHOLD,
                unhealthy_threshold_count=HEALTH_THRESHOLD,
            ),
            targets=[
                self.service.load_balancer_target(
                    container_name=self.container.container_name, container_port=SIP_PORT
                )
            ],
        )
        # A task whose deployment was replaced deregisters itself (and only from this group):
        # its pinned flows move to the new tasks while its calls, which never pass the NLB, go
        # on until they end and it gives up its protection.
        self.container.add_environment(
            "CALLSCRIBE_SIPREC_TARGET_GROUP_ARN", self.target_group.target_group_arn
        )
        self.container_service.task_definition.task_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="LeaveTheLoadBalancerWhenReplaced",
                actions=["elasticloadbalancing:DeregisterTargets"],
                resources=[self.target_group.target_group_arn],
            )
        )
        self.listener = self.load_balancer.add_listener(
            "Sip",
            port=SIP_PORT,
            protocol=elbv2.Protocol.TCP_UDP,
            default_target_groups=[self.target_group],
        )
        acknowledge(
            self.load_balancer,
            "AwsSolutions-ELB2",
            "NLB access logs cover TLS listeners only; this one has a TCP_UDP listener, so "
            "there is nothing to log. The recorders log the SIP requests themselves.",
        )

    def allow_control_from(self, peer: ec2.IConnectable) -> None:
        self.service.connections.allow_from(
            peer, ec2.Port.tcp(CONTROL_PORT), "start/stop SIPREC calls from the API Lambda"
        )
