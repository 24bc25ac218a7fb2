"""cdk-nag (AWS Solutions rules): nothing unacknowledged, and the check itself is live."""

from __future__ import annotations

import pytest
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks

from tests.infra_support import context, default_stack, synth, variant_stack

pytestmark = pytest.mark.slow


def findings(stack) -> list[str]:
    report = AwsSolutionsChecks().validate_scope(stack)
    return [
        f"{violation.severity} {violation.rule_name}: "
        + ", ".join(resource.construct_path for resource in violation.violating_resources)
        for violation in report.violations
    ]


def test_default_deployment_has_no_unacknowledged_errors_or_warnings():
    assert findings(default_stack()) == []


def test_deployment_with_every_option_has_no_unacknowledged_errors_or_warnings():
    # SIPREC recorders included (VARIANT gives the SBCs' networks).
    assert variant_stack().siprec is not None
    assert findings(variant_stack()) == []


def test_acknowledgments_are_specific_a_new_wildcard_still_fails():
    stack = synth(context(siprecSourceCidrs="10.50.0.0/16"))
    assert stack.siprec is not None
    for service in (stack.gateway.service, stack.siprec.service, stack.kvs_reader.service):
        service.task_definition.task_role.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:*"], resources=["arn:aws:s3:::some-bucket/*"])
        )
    found = findings(stack)
    for role in (
        "Gateway/Default/TaskDefinition/TaskRole",
        "Siprec/Default/TaskDefinition/TaskRole",
        "KvsReader/TaskRole",
    ):
        assert any("AwsSolutions-IAM5" in line and role in line for line in found), role
