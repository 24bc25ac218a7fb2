"""The VPC every private component lives in: a new one, or an existing one looked up by id."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from infra.config import DeploymentConfig
from infra.logs import log_group


class NetworkConstruct(Construct):
    """Public subnets hold the load balancer and the NAT gateways; private subnets (with NAT
    egress) hold the gateway tasks, the GPU workers and the API Lambda."""

    def __init__(self, scope: Construct, id: str, *, config: DeploymentConfig) -> None:
        super().__init__(scope, id)
        if config.vpc_id is not None:
            # The operator's VPC keeps its own flow logs and endpoints; we only need private
            # subnets with egress (ECR pulls, Secrets Manager, SQS, EventBridge, the webhook).
            self.vpc: ec2.IVpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=config.vpc_id)
            self.created_vpc = False
            return

        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=config.max_azs,
            nat_gateways=config.nat_gateway_count,
            # Nothing is ever placed in the default security group (every ENI here gets its
            # own group), so locking it down would protect nothing and cost a custom-resource
            # Lambda whose log group CDK cannot give a retention period.
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
        )
        # DynamoDB and S3 traffic (every transcript write, every API read) stays on gateway
        # endpoints: free, and off the NAT gateways' per-GB charge.
        vpc.add_gateway_endpoint("DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        # Rejected flows only: enough to debug a security-group rule, without paying to log
        # every audio packet.
        flow_log_group = log_group(self, "FlowLogs", config)
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.vpc = vpc
        self.created_vpc = True

    @property
    def private_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    @property
    def public_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
