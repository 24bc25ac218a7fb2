"""CallScribeStack: the whole deployment of one stage, composed of its logical units."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from infra.api import ApiConstruct
from infra.asr import AsrConstruct
from infra.config import DeploymentConfig
from infra.data import DataConstruct
from infra.events import EventsConstruct
from infra.export_schedule import DailyExportSchedule
from infra.exports import ExportsConstruct
from infra.gateway import GatewayConstruct
from infra.kvs_reader import KvsReaderConstruct
from infra.live import LiveConstruct
from infra.monitoring import (
    KVS_READER_METRICS,
    SIPREC_RECORDER_METRICS,
    TWILIO_GATEWAY_METRICS,
    IngestMetrics,
    MonitoringConstruct,
)
from infra.network import NetworkConstruct
from infra.siprec import SIP_PORT, SiprecRecorderConstruct


class CallScribeStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        daily_export: bool = True,
        **kwargs: object,
    ) -> None:
        """``daily_export``: build the exporter Lambda and schedule it (02:00 UTC); False
        leaves ``add_daily_export`` to the caller (another exporter, or none)."""
        super().__init__(
            scope, id, description=f"CallScribe real-time transcription ({config.stage})", **kwargs
        )
        self.config = config

        self.network = NetworkConstruct(self, "Network", config=config)
        self.data = DataConstruct(self, "Data", config=config)

        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.network.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        # Private DNS inside the VPC: how the gateway tasks find the ASR workers.
        self.namespace = servicediscovery.PrivateDnsNamespace(
            self,
            "Namespace",
            name=f"{config.stage}.callscribe.internal",
            vpc=self.network.vpc,
            description="CallScribe internal services",
        )

        self.asr = AsrConstruct(
            self,
            "Asr",
            config=config,
            network=self.network,
            cluster=self.cluster,
            namespace=self.namespace,
        )
        self.events = EventsConstruct(
            self, "Events", config=config, data=self.data, network=self.network
        )
        self.gateway = GatewayConstruct(
            self,
            "Gateway",
            config=config,
            network=self.network,
            cluster=self.cluster,
            data=self.data,
            transcripts=self.events.destinations,
            asr_url=self.asr.url,
        )
        self.api = ApiConstruct(self, "Api", config=config, data=self.data, network=self.network)
        self.kvs_reader = KvsReaderConstruct(
            self,
            "KvsReader",
            config=config,
            network=self.network,
            cluster=self.cluster,
            namespace=self.namespace,
            data=self.data,
            transcripts=self.events.destinations,
            asr_url=self.asr.url,
        )

        # Only with the SBCs' networks: without siprecSourceCidrs there is no SIPREC service.
        self.siprec: SiprecRecorderConstruct | None = None
        if config.siprec_enabled:
            self.siprec = SiprecRecorderConstruct(
                self,
                "Siprec",
                config=config,
                network=self.network,
                cluster=self.cluster,
                data=self.data,
                transcripts=self.events.destinations,
                asr_url=self.asr.url,
            )

        self.asr.allow_from(self.gateway.service)
        self.asr.allow_from(self.kvs_reader.service)
        self.gateway.allow_control_from(self.api.security_group)
        self.kvs_reader.allow_control_from(self.api.security_group)
        if self.siprec is not None:
            self.asr.allow_from(self.siprec.service)
            self.siprec.allow_control_from(self.api.security_group)
        # start-streaming for namespace amazonconnect opens the call on a reader task.
        self.api.function.add_environment("CALLSCRIBE_KVS_READER_URL", self.kvs_reader.control_url)

        # The live event stream: viewers connect to the WebSocket API with a live token from
        # the API; every task that holds calls posts its tenants' events to their connections.
        self.live = LiveConstruct(self, "Live", config=config, data=self.data)
        self.api.function.add_environment("CALLSCRIBE_LIVE_WEBSOCKET_URL", self.live.websocket_url)
        # The live page is the API's: the only page whose handshake the $connect Lambda takes.
        self.live.function.add_environment("CALLSCRIBE_LIVE_PAGE_ORIGIN", self.api.url)
        holders = [
            (self.gateway.container, self.gateway.container_service.task_definition.task_role),
            (self.kvs_reader.container, self.kvs_reader.task_role),
        ]
        if self.siprec is not None:
            holders.append(
                (self.siprec.container, self.siprec.container_service.task_definition.task_role)
            )
        for container, task_role in holders:
            container.add_environment("CALLSCRIBE_LIVE_CALLBACK_URL", self.live.callback_url)
            self.live.allow_posting_from(task_role)

        ingests = [
            IngestMetrics("Twilio gateway", TWILIO_GATEWAY_METRICS),
            IngestMetrics("KVS reader", KVS_READER_METRICS),
        ]
        if self.siprec is not None:
            ingests.append(IngestMetrics("SIPREC recorder", SIPREC_RECORDER_METRICS))
        self.monitoring = MonitoringConstruct(
            self,
            "Monitoring",
            config=config,
            dead_letter_queues=self.events.dead_letter_queues,
            ingests=ingests,
        )

        # Set by add_daily_export, which schedules the exporter built here by default.
        self.export_schedule: DailyExportSchedule | None = None
        self.exports: ExportsConstruct | None = None
        if daily_export:
            self.exports = ExportsConstruct(self, "Exports", config=config, data=self.data)
            self.add_daily_export(self.exports.function)

        self._dns_records(config)
        CfnOutput(self, "ApiUrl", value=self.api.url, description="Base URL of the CallScribe API")
        CfnOutput(
            self,
            "GatewayUrl",
            value=config.public_gateway_url,
            description="WebSocket base that stream URLs carry (Twilio connects here)",
        )
        CfnOutput(
            self,
            "GatewayLoadBalancerDns",
            value=self.gateway.load_balancer.load_balancer_dns_name,
            description=f"Point {config.gateway_domain_name} here (CNAME or alias)",
        )
        if self.api.domain_name is not None:
            CfnOutput(
                self,
                "ApiDomainTarget",
                value=self.api.domain_name.regional_domain_name,
                description=f"Point {config.api_domain_name} here (CNAME or alias)",
            )
        if self.siprec is not None:
            CfnOutput(
                self,
                "SiprecLoadBalancerDns",
                value=self.siprec.load_balancer.load_balancer_dns_name,
                description=f"The SBCs' recording server: SIP on {SIP_PORT}, TCP or UDP",
            )
        CfnOutput(
            self,
            "ConnectReaderRoleArn",
            value=self.kvs_reader.task_role.role_arn,
            description="Tenants' Connect roles trust this role (customer_account_app.py)",
        )
        CfnOutput(
            self,
            "LiveWebSocketUrl",
            value=self.live.websocket_url,
            description="The live event stream: connect with ?token= from POST "
            "/callscribe/v1/live/token",
        )
        CfnOutput(self, "TableName", value=self.data.table.table_name)
        CfnOutput(self, "ExportsBucketName", value=self.data.exports_bucket.bucket_name)
        CfnOutput(
            self,
            "WebhookSecretArn",
            value=self.data.webhook_secret.secret_arn,
            description="Webhook credentials {name, value, in}: set them after deploying",
        )
        CfnOutput(self, "EventBusName", value=self.events.bus.event_bus_name)
        if self.exports is not None:
            CfnOutput(
                self,
                "ExporterFunctionName",
                value=self.exports.function.function_name,
                description='The daily export; invoke with {"date": "YYYY-MM-DD"} to re-run a day',
            )
        CfnOutput(
            self,
            "DeliveryDeadLetterQueueUrl",
            value=self.events.delivery_dlq.queue_url,
            description="Transcript events the webhook Lambda could not process",
        )

    def add_daily_export(self, exporter: lambda_.IFunction) -> DailyExportSchedule:
        """Invoke `exporter` every day at 02:00 UTC (EventBridge Scheduler)."""
        if self.export_schedule is not None:
            raise ValueError("the daily export is already scheduled")
        self.export_schedule = DailyExportSchedule(
            self, "DailyExport", config=self.config, exporter=exporter
        )
        return self.export_schedule

    def _dns_records(self, config: DeploymentConfig) -> None:
        if config.hosted_zone_id is None or config.hosted_zone_name is None:
            return
        zone = route53.HostedZone.from_hosted_zone_attributes(
            self, "Zone", hosted_zone_id=config.hosted_zone_id, zone_name=config.hosted_zone_name
        )
        route53.ARecord(
            self,
            "GatewayAlias",
            zone=zone,
            record_name=config.gateway_domain_name,
            target=route53.RecordTarget.from_alias(
                route53_targets.LoadBalancerTarget(self.gateway.load_balancer)
            ),
        )
        if self.api.domain_name is not None:
            route53.ARecord(
                self,
                "ApiAlias",
                zone=zone,
                record_name=config.api_domain_name,
                target=route53.RecordTarget.from_alias(
                    route53_targets.ApiGatewayv2DomainProperties(
                        self.api.domain_name.regional_domain_name,
                        self.api.domain_name.regional_hosted_zone_id,
                    )
                ),
            )
