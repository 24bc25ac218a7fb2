"""The deployment's settings, read from CDK context (`cdk.json`, `cdk deploy -c key=value`).

Context keys are camelCase (`gpuInstanceType`); values given with `-c` arrive as strings and are
coerced (`-c gatewayMaxCount=20`). Anything wrong — a missing required value, a typo in a key,
an impossible combination — fails synthesis with one message that names every problem.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
)  # fmt: skip

# Instance families that carry an NVIDIA GPU supported by the ECS GPU-optimised AMI.
GPU_INSTANCE_TYPE = re.compile(r"^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e)\.[0-9a-z]+$")
ACM_CERTIFICATE_ARN = re.compile(
    r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-fA-F-]{36}$"
)
DOMAIN_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# A faster-whisper model name ("large-v3-turbo") or a Hugging Face repository ("org/model"); it
# becomes a directory under /models in the ASR image, so no "..", no leading slash.
WHISPER_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# The ports the SIPREC recorder's container listens on besides its RTP range: SIP, then the
# health and control ports every ingest task has (infra/ingest.py). The range may not include
# them: ECS maps each port of a container once.
SIPREC_SIP_PORT = 5070
SIPREC_FIXED_PORTS = (SIPREC_SIP_PORT, 8080, 8081)
# Each network a SIPREC source CIDR names opens three rules in the recorders' security group (SIP
# over TCP and UDP, the RTP range); a security group holds 60 inbound rules unless the quota is
# raised, and the recorders' group also has its health and control rules.
SIPREC_MAX_SOURCE_CIDRS = 16
# A call records two streams; each stream takes an even RTP port and its odd RTCP neighbour.
RTP_PORTS_PER_CALL = 4

DEPLOYMENT_SETTINGS = "deployment settings"


class ConfigError(ValueError):
    """The CDK context does not describe a deployable CallScribe."""


def _log_retention(value: int) -> int:
    if value not in LOG_RETENTION_DAYS:
        raise ValueError(f"CloudWatch Logs accepts only {', '.join(map(str, LOG_RETENTION_DAYS))}")
    return value


LogRetentionDays = Annotated[int, AfterValidator(_log_retention)]


def _ipv4_network(text: str) -> ipaddress.IPv4Network:
    """`text` as an IPv4 network ("10.20.0.0/16"; a bare address is a /32)."""
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        pass
    try:
        network = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IPv4 network in CIDR notation (e.g. 10.20.0.0/16)"
        ) from None
    raise ValueError(f"{text!r} has host bits set: the network is {network}")


# How both CDK apps' settings read CDK context: camelCase keys, and an unknown key is an error.
CONTEXT_SETTINGS = ConfigDict(
    alias_generator=AliasGenerator(validation_alias=to_camel),
    extra="forbid",
    frozen=True,
    populate_by_name=True,
)


class ServiceCounts(BaseModel):
    desired: int
    min: int
    max: int


class DeploymentConfig(BaseModel):
    model_config = CONTEXT_SETTINGS

    # Names every resource and the event bus (`callscribe-<stage>`); several stages can live in
    # one account and region.
    stage: str = Field("prod", pattern=r"^[a-z][a-z0-9-]{0,19}$")

    # TLS. Twilio opens media streams only to wss:// URLs, and an ALB terminates TLS only with a
    # certificate for a name you control: the gateway's host name and an ACM certificate that
    # covers it (in the deployment's region) are required. The API gets a custom domain only
    # when apiDomainName is given (the same certificate must cover it); otherwise it is served
    # at its execute-api URL, which has TLS of its own.
    gateway_domain_name: str
    certificate_arn: str
    api_domain_name: str | None = None
    # With a Route 53 public hosted zone, alias records are created for both names; without
    # one, point CNAMEs at the stack outputs yourself.
    hosted_zone_id: str | None = None
    hosted_zone_name: str | None = None

    # Network: an existing VPC (looked up; needs private subnets with internet egress) or a new
    # one with this many AZs and NAT gateways.
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    max_azs: int = Field(2, ge=2, le=6)
    # Unset: one per AZ. With one, a zone's outage takes every private subnet's egress (ECR
    # pulls, Secrets Manager, EventBridge, KVS, the webhook via NAT) with it.
    nat_gateways: int | None = Field(None, ge=1, le=6)

    # Webhook delivery.
    webhook_url: HttpUrl
    webhook_timeout_s: float = Field(5.0, gt=0, le=60)
    # False: the webhook Lambda runs outside the VPC (egress from AWS's shared addresses). True:
    # in private subnets behind the NAT gateways, so that the customer can allowlist the NAT
    # gateways' Elastic IPs on the webhook receiver.
    webhook_via_nat: bool = False
    # A transcript event that waited longer than this in the delivery queue (a slow or failing
    # target backed it up) is recorded as dropped instead of sent: oldest first, as locally.
    webhook_max_queue_age_s: int = Field(120, ge=1, le=86_400)

    # API Gateway writes the live event stream's access logs (a WebSocket stage's) with the
    # role set in the account's API Gateway settings, one per account and region. True: the
    # stack creates that role and sets it (retained on deletion, so other APIs' logging keeps
    # working). False: the account already has one (set by another stack or by hand), which
    # this stack then leaves alone; without one, the stage's logging fails to deploy.
    api_gateway_logging_role: bool = True

    # The API (HTTP API stage throttling: steady requests per second and burst).
    api_throttle_rate_limit: int = Field(100, ge=1, le=10_000)
    api_throttle_burst_limit: int = Field(200, ge=1, le=5_000)

    # Twilio gateway (Fargate).
    gateway_cpu: int = Field(1024, description="Fargate CPU units")
    gateway_memory_mib: int = Field(2048, ge=512, le=30_720)
    gateway_desired_count: int = Field(2, ge=0)
    gateway_min_count: int = Field(2, ge=0)
    gateway_max_count: int = Field(10, ge=1, le=1000)
    # Target tracking: new WebSocket streams + API requests per target per minute, and CPU.
    gateway_requests_per_target: int = Field(600, ge=1)
    gateway_cpu_target_percent: int = Field(60, ge=10, le=95)

    # GPU ASR workers (ECS on EC2, one GPU per task).
    gpu_instance_type: str = "g5.xlarge"
    asr_model: str = "large-v3-turbo"
    asr_desired_count: int = Field(1, ge=0)
    asr_min_count: int = Field(1, ge=0)
    asr_max_count: int = Field(4, ge=1, le=100)
    # Utterances waiting for a batch, on average per ASR worker, that the service scales to
    # keep: a GPU worker takes 16 in a batch, so 8 waiting is about half a batch (under
    # 100 ms) of wait; above it workers are added, below it removed.
    asr_queue_depth_target: float = Field(8.0, gt=0, le=1000)
    asr_root_volume_gib: int = Field(100, ge=50, le=1000)

    # Amazon Connect: the KVS reader tasks (Fargate), which read contacts' Kinesis Video Streams
    # in tenants' accounts through the roles those accounts create for CallScribe.
    kvs_reader_cpu: int = Field(1024, description="Fargate CPU units")
    kvs_reader_memory_mib: int = Field(2048, ge=512, le=30_720)
    kvs_reader_desired_count: int = Field(1, ge=0)
    kvs_reader_min_count: int = Field(1, ge=0)
    kvs_reader_max_count: int = Field(10, ge=1, le=1000)
    kvs_reader_cpu_target_percent: int = Field(60, ge=10, le=95)
    # Accounts whose Connect role (named CallScribeConnectMediaReader…) the readers may assume.
    # Empty: any account; each tenant's role still trusts only this deployment's reader role,
    # and only with that tenant's external id.
    connect_account_ids: tuple[str, ...] = ()

    # SIPREC recorders (Fargate) behind an internal NLB, for SBCs that reach the VPC over a
    # private path (VPN, Transit Gateway, Direct Connect). The SBCs' networks are the only
    # sources SIP and RTP are accepted from; none (the default): no SIPREC service at all.
    siprec_source_cidrs: tuple[str, ...] = ()
    # Where each task takes RTP: "first-last", an even first port (RTP on even ports, RTCP on
    # the odd one above). A range of N ports holds N / 4 calls.
    siprec_rtp_ports: str = "20000-20999"
    # Calls one task takes before it refuses INVITEs and fails /readyz, so that the NLB sends
    # new flows elsewhere. Each call is μ-law/A-law/G.729 decoding, resampling and Silero VAD
    # on two streams: 25 is the low end of the 25-35 calls a vCPU is estimated to carry (see
    # "What it costs"), to be measured.
    siprec_max_calls_per_task: int = Field(25, ge=1)
    siprec_desired_count: int = Field(2, ge=0)
    siprec_min_count: int = Field(2, ge=0)
    siprec_max_count: int = Field(10, ge=1, le=1000)
    siprec_cpu: int = Field(1024, description="Fargate CPU units")
    siprec_memory_mib: int = Field(2048, ge=512, le=30_720)
    siprec_cpu_target_percent: int = Field(60, ge=10, le=95)
    # The address the recorder writes into Contact and its SDP answer instead of the task's own
    # private IP: for an SBC that reaches the VPC through NAT. Every task would advertise it, so
    # it fits one task only.
    siprec_advertised_address: str | None = None

    # Retention: exported objects and recordings in S3, transcripts in DynamoDB (TTL), logs.
    # Recordings and feed files default to the transcripts' retention.
    retention_days: int = Field(7, ge=1, le=3650)
    recording_retention_days: int | None = Field(None, ge=1, le=3650)
    export_retention_days: int | None = Field(None, ge=1, le=3650)
    log_retention_days: LogRetentionDays = 30
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Alarms (infra/monitoring.py): who is told, and the thresholds.
    alarm_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    # Failed webhook POSTs in 5 minutes.
    alarm_webhook_failures: int = Field(10, ge=1)
    # End of utterance → webhook delivered, p95 over 3 minutes in a row. The promise is a
    # fraction of a second after the end-of-speech silence (600 ms) the endpointer waits.
    alarm_delivery_p95_ms: int = Field(2000, ge=100)
    # An ASR worker's p95 wait for a batch, 3 minutes in a row.
    alarm_asr_wait_p95_ms: int = Field(500, ge=10)
    # A KVS reader's lag behind live audio, 3 minutes in a row.
    alarm_kvs_behind_ms: int = Field(5000, ge=100)

    @field_validator("gateway_domain_name", "api_domain_name", "hosted_zone_name")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not DOMAIN_NAME.match(value):
            raise ValueError(f"{value!r} is not a DNS name (lower case, e.g. gw.example.com)")
        return value

    @field_validator("certificate_arn")
    @classmethod
    def _certificate(cls, value: str) -> str:
        if not ACM_CERTIFICATE_ARN.match(value):
            raise ValueError(
                f"{value!r} is not an ACM certificate ARN "
                "(arn:aws:acm:<region>:<account>:certificate/<id>)"
            )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _https_webhook(cls, value: HttpUrl) -> HttpUrl:
        if value.scheme != "https":
            raise ValueError("the webhook must be https:// (transcripts leave AWS over it)")
        return value

    @field_validator("gpu_instance_type")
    @classmethod
    def _gpu(cls, value: str) -> str:
        if not GPU_INSTANCE_TYPE.match(value):
            raise ValueError(
                f"{value!r} is not an NVIDIA GPU instance type (e.g. g5.xlarge, g6.xlarge, g4dn.xlarge)"
            )
        return value

    @field_validator("asr_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not WHISPER_MODEL.match(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a faster-whisper model name (e.g. large-v3-turbo) "
                "or a Hugging Face repository (org/model)"
            )
        return value

    @field_validator("connect_account_ids", mode="before")
    @classmethod
    def _accounts(cls, value: object) -> object:
        if isinstance(value, str):  # `-c connectAccountIds=111122223333,444455556666`
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            for account in value:
                if not re.fullmatch(r"\d{12}", str(account)):
                    raise ValueError(f"{account!r} is not a 12-digit AWS account id")
            return tuple(str(account) for account in value)
        return value

    @field_validator("siprec_source_cidrs", mode="before")
    @classmethod
    def _sbc_networks(cls, value: object) -> object:
        if isinstance(value, str):  # `-c siprecSourceCidrs=10.20.0.0/16,192.168.7.0/24`
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            return value
        if len(value) > SIPREC_MAX_SOURCE_CIDRS:
            raise ValueError(
                f"at most {SIPREC_MAX_SOURCE_CIDRS} networks (each opens three security-group "
                "rules); summarise them into wider ones"
            )
        networks = tuple(_ipv4_network(str(cidr)) for cidr in value)
        for network in networks:
            if network.prefixlen == 0:
                raise ValueError(
                    f"'{network}' is every address: SIP has no credentials, so name the SBCs' "
                    "own networks"
                )
        return tuple(str(network) for network in networks)

    @field_validator("siprec_rtp_ports")
    @classmethod
    def _rtp_ports(cls, value: str) -> str:
        match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
        if match is None:
            raise ValueError(f"{value!r} is not a port range first-last (e.g. 20000-20999)")
        first, last = int(match[1]), int(match[2])
        if not 1024 <= first < last <= 65535:
            raise ValueError(f"{value!r}: the ports must be ordered and within 1024-65535")
        if first % 2:
            raise ValueError(
                f"{value!r}: the first port must be even (RTP on even ports, RTCP on the odd "
                "one above)"
            )
        if last - first + 1 < RTP_PORTS_PER_CALL:
            raise ValueError(f"{value!r} holds no call (two streams, each an RTP and an RTCP port)")
        taken = [port for port in SIPREC_FIXED_PORTS if first <= port <= last]
        if taken:
            raise ValueError(
                f"{value!r} includes {', '.join(map(str, taken))}: the recorder's own ports are "
                "5070 (SIP), 8080 (health) and 8081 (control)"
            )
        return value

    @field_validator("siprec_advertised_address")
    @classmethod
    def _advertised_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IPv4 address (it goes into the SDP answer's c= line)"
                ) from None
        return value

    @field_validator("gateway_cpu", "kvs_reader_cpu", "siprec_cpu")
    @classmethod
    def _fargate_cpu(cls, value: int) -> int:
        if value not in (256, 512, 1024, 2048, 4096, 8192, 16384):
            raise ValueError("Fargate CPU is one of 256, 512, 1024, 2048, 4096, 8192, 16384")
        return value

    @property
    def nat_gateway_count(self) -> int:
        """NAT gateways of a new VPC: as configured, else one in each AZ."""
        return self.nat_gateways if self.nat_gateways is not None else self.max_azs

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentConfig:
        problems = []
        for name, counts in (
            ("gateway", self.gateway_counts),
            ("asr", self.asr_counts),
            ("kvsReader", self.kvs_reader_counts),
            ("siprec", self.siprec_counts),
        ):
            if not counts.min <= counts.desired <= counts.max:
                problems.append(
                    f"{name}MinCount <= {name}DesiredCount <= {name}MaxCount does not hold "
                    f"({counts.min}, {counts.desired}, {counts.max})"
                )
        if self.nat_gateways is not None and self.nat_gateways > self.max_azs:
            problems.append(
                f"natGateways ({self.nat_gateways}) is more than maxAzs ({self.max_azs}): at "
                "most one NAT gateway per AZ"
            )
        if (self.hosted_zone_id is None) != (self.hosted_zone_name is None):
            problems.append("hostedZoneId and hostedZoneName go together: give both or neither")
        if self.hosted_zone_name is not None:
            for name in filter(None, (self.gateway_domain_name, self.api_domain_name)):
                if not (
                    name == self.hosted_zone_name or name.endswith("." + self.hosted_zone_name)
                ):
                    problems.append(f"{name} is not inside the hosted zone {self.hosted_zone_name}")
        if self.api_domain_name is not None and self.api_domain_name == self.gateway_domain_name:
            problems.append(
                "apiDomainName and gatewayDomainName must differ: the API is served by API "
                "Gateway, the media WebSockets by the load balancer"
            )
        if self.api_throttle_burst_limit < self.api_throttle_rate_limit:
            problems.append("apiThrottleBurstLimit must be at least apiThrottleRateLimit")
        problems.extend(self._siprec_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _siprec_problems(self) -> list[str]:
        if not self.siprec_enabled:
            given = sorted(
                to_camel(name)
                for name in self.model_fields_set
                if name.startswith("siprec_") and name != "siprec_source_cidrs"
            )
            if given:
                return [
                    f"{', '.join(given)}: no SIPREC service without siprecSourceCidrs (the "
                    "SBCs' networks); give them or leave the SIPREC settings out"
                ]
            return []
        problems = []
        if self.siprec_max_calls_per_task > self.siprec_calls_per_rtp_range:
            problems.append(
                f"siprecMaxCallsPerTask ({self.siprec_max_calls_per_task}) is more than "
                f"siprecRtpPorts {self.siprec_rtp_ports} holds ({self.siprec_calls_per_rtp_range} "
                "calls: two streams each, each stream an RTP and an RTCP port)"
            )
        if self.siprec_advertised_address is not None and self.siprec_max_count != 1:
            problems.append(
                "siprecAdvertisedAddress needs siprecMaxCount 1 (and min and desired 1): every "
                "task would advertise that one address, and RTP must reach the task that "
                "answered"
            )
        return problems

    @property
    def gateway_counts(self) -> ServiceCounts:
        return ServiceCounts(
            desired=self.gateway_desired_count,
            min=self.gateway_min_count,
            max=self.gateway_max_count,
        )

    @property
    def asr_counts(self) -> ServiceCounts:
        return ServiceCounts(
            desired=self.asr_desired_count, min=self.asr_min_count, max=self.asr_max_count
        )

    @property
    def kvs_reader_counts(self) -> ServiceCounts:
        return ServiceCounts(
            desired=self.kvs_reader_desired_count,
            min=self.kvs_reader_min_count,
            max=self.kvs_reader_max_count,
        )

    @property
    def siprec_counts(self) -> ServiceCounts:
        return ServiceCounts(
            desired=self.siprec_desired_count,
            min=self.siprec_min_count,
            max=self.siprec_max_count,
        )

    @property
    def siprec_enabled(self) -> bool:
        return bool(self.siprec_source_cidrs)

    @property
    def siprec_rtp_port_range(self) -> tuple[int, int]:
        """(first, last) of `siprec_rtp_ports`, both included."""
        first, last = self.siprec_rtp_ports.split("-")
        return int(first), int(last)

    @property
    def siprec_calls_per_rtp_range(self) -> int:
        """The calls one task's RTP range holds: four ports a call (two streams, each an even
        RTP port and its odd RTCP neighbour)."""
        first, last = self.siprec_rtp_port_range
        return (last - first + 1) // RTP_PORTS_PER_CALL

    @property
    def public_gateway_url(self) -> str:
        return f"wss://{self.gateway_domain_name}"

    @property
    def asr_model_dir(self) -> str:
        """Where containers/asr_worker/Dockerfile puts the model (its WHISPER_MODEL build arg)."""
        return f"/models/{self.asr_model}"

    @property
    def event_bus_name(self) -> str:
        return f"callscribe-{self.stage}"

    @property
    def recordings_expire_after_days(self) -> int:
        return self.recording_retention_days or self.retention_days

    @property
    def exports_expire_after_days(self) -> int:
        return self.export_retention_days or self.retention_days

    @property
    def secrets_prefix(self) -> str:
        """Where `callscribe webhook set --secrets-prefix` puts tenants' webhook credentials
        (`<prefix>webhook/<tenant>/<credential>`) and the webhook Lambda reads them."""
        return f"callscribe/{self.stage}/"


def is_cdk_key(key: str) -> bool:
    """CDK's own context (feature flags "@aws-cdk/…", "aws:cdk:…", cached lookups
    "vpc-provider:…") lives beside the apps' settings, which are plain camelCase words."""
    return key.startswith("@") or ":" in key


Settings = TypeVar("Settings", bound=BaseModel)


def validate_context(
    model: type[Settings], values: Mapping[str, Any], *, what: str, unknown_key: str
) -> Settings:
    """`values` (settings from a CDK context) validated into `model`, or ConfigError naming
    every problem under "invalid CallScribe <what>:", an unknown key as "<key>: <unknown_key>"."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "context"
            if error["type"] == "missing":
                lines.append(f"  {key}: required (cdk deploy -c {key}=…)")
            elif error["type"] == "extra_forbidden":
                lines.append(f"  {key}: {unknown_key}")
            else:
                lines.append(f"  {key}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid CallScribe {what}:\n" + "\n".join(lines)) from None


def load_config(context: Mapping[str, Any]) -> DeploymentConfig:
    """Validate the CallScribe keys of a CDK context; raise ConfigError naming every problem."""
    return validate_context(
        DeploymentConfig,
        {key: value for key, value in context.items() if not is_cdk_key(key)},
        what=DEPLOYMENT_SETTINGS,
        unknown_key="not a CallScribe setting (a typo?)",
    )


def certificate_region(arn: str) -> str:
    return arn.split(":")[3]


def deployment_target(
    config: DeploymentConfig, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """(account, region) to deploy to, from the variables the CDK CLI sets from the credentials
    in use. The region is required (the load balancer's access-log policy names the region's
    ELB service); the account only when an existing VPC has to be looked up."""
    region = environ.get("CDK_DEFAULT_REGION") or environ.get("AWS_REGION")
    account = environ.get("CDK_DEFAULT_ACCOUNT")
    problems = []
    if not region:
        problems.append(
            "  no AWS region: run through the CDK CLI with credentials for the target account "
            "(it sets CDK_DEFAULT_REGION), or set AWS_REGION"
        )
    elif certificate_region(config.certificate_arn) != region:
        problems.append(
            f"  certificateArn: the certificate is in {certificate_region(config.certificate_arn)}, "
            f"the deployment in {region}; ALB and API Gateway need it in the same region"
        )
    if config.vpc_id is not None and not account:
        problems.append(
            "  vpcId: looking up an existing VPC needs the account (CDK_DEFAULT_ACCOUNT, set by "
            "the CDK CLI)"
        )
    if problems:
        raise ConfigError(f"invalid CallScribe {DEPLOYMENT_SETTINGS}:\n" + "\n".join(problems))
    assert region is not None
    return account, region
