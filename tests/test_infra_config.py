"""Deployment settings from CDK context: what is accepted, and how a mistake is reported."""

from __future__ import annotations

import pytest

from infra.config import ConfigError, deployment_target, load_config
from tests.infra_support import REQUIRED, cdk_json_context, context


def error_of(ctx: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(ctx)
    return str(caught.value)


def test_cdk_json_defaults_plus_the_required_values_are_a_deployable_config():
    config = load_config(context())
    assert config.stage == "prod"
    assert config.public_gateway_url == "wss://gw.callscribe.example.com"
    assert config.gpu_instance_type == "g5.xlarge"
    assert config.asr_model_dir == "/models/large-v3-turbo"
    assert config.event_bus_name == "callscribe-prod"
    assert (config.retention_days, config.log_retention_days) == (7, 30)
    assert config.api_domain_name is None and config.vpc_id is None
    assert config.api_gateway_logging_role is True


def test_values_given_with_dash_c_arrive_as_strings_and_are_coerced():
    config = load_config(
        context(
            gatewayMaxCount="20",
            webhookViaNat="true",
            webhookTimeoutS="2.5",
            maxAzs="3",
            apiGatewayLoggingRole="false",
        )
    )
    assert config.gateway_max_count == 20
    assert config.webhook_via_nat is True
    assert config.api_gateway_logging_role is False
    assert config.webhook_timeout_s == 2.5
    assert config.max_azs == 3


def test_cdk_json_alone_names_each_missing_required_value():
    message = error_of(cdk_json_context())
    for key in REQUIRED:
        assert f"{key}: required (cdk deploy -c {key}=…)" in message


def test_a_misspelt_key_is_reported_not_ignored():
    assert "gpuInstanceTyp: not a CallScribe setting" in error_of(
        context(gpuInstanceTyp="g5.xlarge")
    )


def test_cdk_feature_flags_and_lookups_in_the_context_are_not_settings():
    load_config(context(**{"@aws-cdk/aws-s3:foo": True, "vpc-provider:account=1:x": {}}))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"gpuInstanceType": "m5.large"}, "gpuInstanceType: 'm5.large' is not an NVIDIA GPU"),
        (
            {"certificateArn": "arn:aws:iam::123:cert"},
            "certificateArn: 'arn:aws:iam::123:cert' is not an ACM",
        ),
        ({"webhookUrl": "http://hooks.example.com/x"}, "webhookUrl: the webhook must be https://"),
        ({"webhookUrl": "not a url"}, "webhookUrl:"),
        ({"gatewayDomainName": "Not_A_Host"}, "gatewayDomainName: 'Not_A_Host' is not a DNS name"),
        ({"logRetentionDays": 31}, "logRetentionDays: CloudWatch Logs accepts only 1, 3, 5"),
        ({"gatewayCpu": 1000}, "gatewayCpu: Fargate CPU is one of"),
        ({"asrModel": "../etc"}, "asrModel: '../etc' is not a faster-whisper model name"),
        ({"stage": "Prod_1"}, "stage:"),
        ({"vpcId": "my-vpc"}, "vpcId:"),
        ({"maxAzs": 1}, "maxAzs:"),
        ({"natGateways": 0}, "natGateways:"),
        ({"natGateways": 3}, "natGateways (3) is more than maxAzs (2)"),
        ({"webhookTimeoutS": 0}, "webhookTimeoutS:"),
        ({"gatewayMinCount": 5}, "gatewayMinCount <= gatewayDesiredCount <= gatewayMaxCount"),
        ({"asrDesiredCount": 9}, "asrMinCount <= asrDesiredCount <= asrMaxCount"),
        ({"hostedZoneId": "Z123"}, "hostedZoneId and hostedZoneName go together"),
        (
            {"hostedZoneId": "Z123", "hostedZoneName": "other.example.org"},
            "gw.callscribe.example.com is not inside the hosted zone other.example.org",
        ),
        (
            {"apiDomainName": "gw.callscribe.example.com"},
            "apiDomainName and gatewayDomainName must differ",
        ),
        (
            {"apiThrottleBurstLimit": 10},
            "apiThrottleBurstLimit must be at least apiThrottleRateLimit",
        ),
        (
            {"siprecSourceCidrs": "10.20.1.0/16"},
            "siprecSourceCidrs: '10.20.1.0/16' has host bits set: the network is 10.20.0.0/16",
        ),
        (
            {"siprecSourceCidrs": ["sbc.example.com"]},
            "siprecSourceCidrs: 'sbc.example.com' is not an IPv4 network",
        ),
        (
            {"siprecSourceCidrs": "10.20.0.0/16,0.0.0.0/0"},
            "siprecSourceCidrs: '0.0.0.0/0' is every address",
        ),
        (
            {"siprecSourceCidrs": [f"10.{n}.0.0/16" for n in range(17)]},
            "siprecSourceCidrs: at most 16 networks",
        ),
        (
            {"siprecRtpPorts": "20000-20999", "siprecMaxCount": 4},
            "siprecMaxCount, siprecRtpPorts: no SIPREC service without siprecSourceCidrs",
        ),
        *(
            ({"siprecSourceCidrs": "10.20.0.0/16", **override}, expected)
            for override, expected in (
                ({"siprecRtpPorts": "20000"}, "siprecRtpPorts: '20000' is not a port range"),
                ({"siprecRtpPorts": "20001-20999"}, "the first port must be even"),
                ({"siprecRtpPorts": "20998-20000"}, "must be ordered and within 1024-65535"),
                ({"siprecRtpPorts": "1000-1999"}, "must be ordered and within 1024-65535"),
                ({"siprecRtpPorts": "65000-65536"}, "must be ordered and within 1024-65535"),
                ({"siprecRtpPorts": "20000-20002"}, "'20000-20002' holds no call"),
                ({"siprecRtpPorts": "8000-8999"}, "'8000-8999' includes 8080, 8081"),
                (
                    {"siprecRtpPorts": "20000-20039"},
                    "siprecMaxCallsPerTask (25) is more than siprecRtpPorts 20000-20039 holds "
                    "(10 calls",
                ),
                ({"siprecMaxCallsPerTask": 0}, "siprecMaxCallsPerTask:"),
                ({"siprecCpu": 1000}, "siprecCpu: Fargate CPU is one of"),
                ({"siprecMemoryMib": 256}, "siprecMemoryMib:"),
                ({"siprecCpuTargetPercent": 99}, "siprecCpuTargetPercent:"),
                (
                    {"siprecMinCount": 3},
                    "siprecMinCount <= siprecDesiredCount <= siprecMaxCount does not hold",
                ),
                (
                    {"siprecAdvertisedAddress": "sbc.example.com"},
                    "siprecAdvertisedAddress: 'sbc.example.com' is not an IPv4 address",
                ),
                (
                    {"siprecAdvertisedAddress": "100.64.10.5"},
                    "siprecAdvertisedAddress needs siprecMaxCount 1",
                ),
            )
        ),
    ],
)
def test_invalid_settings_fail_with_a_message_naming_the_key(override, expected):
    message = error_of(context(**override))
    assert message.startswith("invalid CallScribe deployment settings:")
    assert expected in message


def test_siprec_is_off_until_the_sbc_networks_are_given():
    config = load_config(context())
    assert not config.siprec_enabled and config.siprec_source_cidrs == ()


def test_siprec_defaults_and_the_sbc_networks_as_dash_c_gives_them():
    config = load_config(context(siprecSourceCidrs="10.20.0.0/16, 192.0.2.7"))
    assert config.siprec_enabled
    # A bare address is one SBC.
    assert config.siprec_source_cidrs == ("10.20.0.0/16", "192.0.2.7/32")
    assert config.siprec_rtp_ports == "20000-20999"
    assert config.siprec_rtp_port_range == (20000, 20999)
    # Two streams a call, each an even RTP port and its odd RTCP neighbour.
    assert config.siprec_calls_per_rtp_range == 250
    assert config.siprec_max_calls_per_task == 25
    assert (config.siprec_cpu, config.siprec_memory_mib, config.siprec_cpu_target_percent) == (
        1024,
        2048,
        60,
    )
    assert config.siprec_counts.model_dump() == {"desired": 2, "min": 2, "max": 10}
    assert config.siprec_advertised_address is None
    listed = load_config(context(siprecSourceCidrs=["10.20.0.0/16"], siprecMaxCallsPerTask="250"))
    assert listed.siprec_source_cidrs == ("10.20.0.0/16",)
    assert listed.siprec_max_calls_per_task == 250


def test_one_recorder_may_advertise_an_address():
    config = load_config(
        context(
            siprecSourceCidrs="10.20.0.0/16",
            siprecAdvertisedAddress="100.64.10.5",
            siprecDesiredCount=1,
            siprecMinCount=1,
            siprecMaxCount=1,
        )
    )
    assert config.siprec_advertised_address == "100.64.10.5"


def test_every_problem_is_reported_at_once():
    message = error_of(context(gpuInstanceType="t3.micro", logRetentionDays=2, stage="X"))
    assert "gpuInstanceType" in message and "logRetentionDays" in message and "stage" in message


def test_target_region_comes_from_the_cdk_cli_and_must_match_the_certificate():
    config = load_config(context())
    assert deployment_target(config, {"CDK_DEFAULT_REGION": "us-east-1"}) == (None, "us-east-1")
    assert deployment_target(
        config, {"CDK_DEFAULT_REGION": "us-east-1", "CDK_DEFAULT_ACCOUNT": "123456789012"}
    ) == ("123456789012", "us-east-1")
    with pytest.raises(ConfigError, match="no AWS region"):
        deployment_target(config, {})
    with pytest.raises(
        ConfigError, match="the certificate is in us-east-1, the deployment in eu-west-1"
    ):
        deployment_target(config, {"CDK_DEFAULT_REGION": "eu-west-1"})


def test_looking_up_an_existing_vpc_needs_the_account():
    config = load_config(context(vpcId="vpc-0a1b2c3d4e5f60718"))
    with pytest.raises(ConfigError, match="vpcId: looking up an existing VPC needs the account"):
        deployment_target(config, {"CDK_DEFAULT_REGION": "us-east-1"})
