"""`python app.py` as the CDK CLI runs it: context in, templates out, a clear error on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra_support import REGION, REPO_ROOT, context

pytestmark = pytest.mark.slow


def run_app(ctx: dict, outdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # The CDK CLI hands cdk.json's context (plus -c values) to the app in CDK_CONTEXT_JSON.
    environment = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps(ctx),
        "CDK_OUTDIR": str(outdir),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        **env,
    }
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_app_synthesises_the_stack_into_cdk_out(tmp_path):
    result = run_app(context(), tmp_path / "cdk.out", CDK_DEFAULT_REGION=REGION)
    assert result.returncode == 0, result.stderr[-4000:]
    template = json.loads((tmp_path / "cdk.out" / "CallScribe-prod.template.json").read_text())
    types = {resource["Type"] for resource in template["Resources"].values()}
    assert {
        "AWS::DynamoDB::Table",
        "AWS::Events::EventBus",
        "AWS::SQS::Queue",
        "AWS::Lambda::EventSourceMapping",
        "AWS::ApiGatewayV2::Api",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "AWS::ECS::CapacityProvider",
    } <= types
    assert "AWS::Pipes::Pipe" not in types  # transcripts go to the delivery queue directly
    # cdk-nag ran as a validation plugin and reported nothing.
    report = json.loads((tmp_path / "cdk.out" / "validation-report.json").read_text())
    violations = [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])]
    assert violations == []
    assets = json.loads((tmp_path / "cdk.out" / "CallScribe-prod.assets.json").read_text())
    dockerfiles = {image["source"]["dockerFile"] for image in assets["dockerImages"].values()}
    # The Twilio gateway and the KVS reader share the ingest image.
    assert dockerfiles == {
        "containers/lambda/Dockerfile",
        "containers/ingest/Dockerfile",
        "containers/asr_worker/Dockerfile",
    }


def test_app_refuses_incomplete_settings_with_a_readable_message(tmp_path):
    ctx = context()
    del ctx["webhookUrl"]
    ctx["gpuInstanceType"] = "c5.xlarge"
    result = run_app(ctx, tmp_path / "cdk.out", CDK_DEFAULT_REGION=REGION)
    assert result.returncode == 1
    assert "invalid CallScribe deployment settings" in result.stderr
    assert "webhookUrl: required (cdk deploy -c webhookUrl=…)" in result.stderr
    assert "gpuInstanceType: 'c5.xlarge' is not an NVIDIA GPU instance type" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cdk.out" / "CallScribe-prod.template.json").exists()


def test_app_refuses_a_certificate_from_another_region(tmp_path):
    result = run_app(context(), tmp_path / "cdk.out", CDK_DEFAULT_REGION="eu-west-1")
    assert result.returncode == 1
    assert "the certificate is in us-east-1, the deployment in eu-west-1" in result.stderr
