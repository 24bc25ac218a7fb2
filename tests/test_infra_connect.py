"""Amazon Connect in CDK: the KVS reader service of the main stack (its role is what tenants
trust) and the stack tenants deploy in their Connect account (the role that trusts it, with an
external id and least privilege; the contact-flow Lambdas). Template assertions, cdk-nag, and
`customer_account_app.py` run as the CDK CLI runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from infra.config import ConfigError, load_config
from infra.customer_account import (
    FLOW_LAMBDA_FILES,
    ConnectMediaAccessStack,
    load_customer_config,
)
from infra.images import KVS_READER_COMMAND
from infra.kvs_reader import CONTROL_PORT, HEALTH_PORT
from tests.infra_support import (
    ACCOUNT,
    REGION,
    REPO_ROOT,
    assert_protects_itself_and_drains,
    cdk_json_context,
    container_environment,
    context,
    default_stack,
    default_template,
    logical_id,
    policy_statements,
    synth,
)
from tests.test_infra_nag import findings

pytestmark = pytest.mark.slow

READER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/callscribe-prod-kvs-reader"
TENANT_ACCOUNT = "111122223333"
KMS_KEY = f"arn:aws:kms:{REGION}:{TENANT_ACCOUNT}:key/0b9e1c3a-5d4f-4e2b-9a7c-1f2e3d4c5b6a"
INSTANCE = (
    f"arn:aws:connect:{REGION}:{TENANT_ACCOUNT}:instance/d5b716a2-10bb-45cb-bf7f-01a9864be591"
)
MINIMAL = {
    "callscribeReaderRoleArn": READER_ROLE,
    "externalId": "acme-7Hq2-callscribe",
    "connectStreamPrefix": "acme",
}
FULL = {
    **MINIMAL,
    "kmsKeyArn": KMS_KEY,
    "callscribeApiUrl": "https://api.callscribe.example.com",
    "connectInstanceArn": INSTANCE,
    "contactIdField": "InitialContactId",
    "customerIdAttribute": "crmId",
    "language": "en-GB",
}


def ref(construct: Any) -> dict:
    return {"Ref": logical_id(construct)}


# The main stack: KVS readers -------------------------------------------------------------------


def reader_task_definition(template: Template) -> dict:
    (task,) = [
        t
        for t in template.find_resources("AWS::ECS::TaskDefinition").values()
        if t["Properties"]["ContainerDefinitions"][0]["Name"] == "reader"
    ]
    return task


def test_reader_task_role_is_named_and_may_only_assume_tenant_connect_roles() -> None:
    stack = default_stack()
    template = default_template()
    role = template.find_resources("AWS::IAM::Role")[logical_id(stack.kvs_reader.task_role)]
    assert role["Properties"]["RoleName"] == "callscribe-prod-kvs-reader"
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
        }
    ]
    statements = policy_statements(template, stack.kvs_reader.task_role)
    assume = [s for s in statements if "sts:AssumeRole" in json.dumps(s["Action"])]
    assert assume == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Sid": "AssumeTenantsConnectMediaRoles",
            "Resource": "arn:aws:iam::*:role/CallScribeConnectMediaReader*",
        }
    ]
    actions = {
        a
        for s in statements
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    # It never reads a stream itself: only through a tenant's role.
    assert not [a for a in actions if a.startswith(("kinesisvideo:", "kms:"))]
    assert "events:PutEvents" in actions
    # Scale-in protection while it holds calls; its deployment, to hand its calls over once
    # replaced: this cluster's tasks and services only.
    assert_protects_itself_and_drains(statements, stack.cluster)
    assert task_role_arn_output(template) == {
        "Fn::GetAtt": [logical_id(stack.kvs_reader.task_role), "Arn"]
    }


def task_role_arn_output(template: Template) -> Any:
    return template.find_outputs("ConnectReaderRoleArn")["ConnectReaderRoleArn"]["Value"]


def test_listed_accounts_narrow_the_roles_the_readers_may_assume() -> None:
    stack = synth(context(connectAccountIds="111122223333,444455556666"))
    template = Template.from_stack(stack)
    statements = policy_statements(template, stack.kvs_reader.task_role)
    (assume,) = [s for s in statements if s.get("Sid") == "AssumeTenantsConnectMediaRoles"]
    assert assume["Resource"] == [
        "arn:aws:iam::111122223333:role/CallScribeConnectMediaReader*",
        "arn:aws:iam::444455556666:role/CallScribeConnectMediaReader*",
    ]
    assert findings(stack) == []


def test_reader_task_environment_ports_and_health_check() -> None:
    stack = default_stack()
    task = reader_task_definition(default_template())
    environment = container_environment(task)
    assert environment["CALLSCRIBE_TABLE_NAME"] == ref(stack.data.table)
    assert environment["CALLSCRIBE_TOKEN_SECRET_ARN"] == ref(stack.data.token_secret)
    assert environment["CALLSCRIBE_CONTROL_SECRET_ARN"] == ref(stack.data.control_secret)
    assert environment["CALLSCRIBE_PORT"] == str(HEALTH_PORT)
    assert environment["CALLSCRIBE_CONTROL_PORT"] == str(CONTROL_PORT)
    assert environment["CALLSCRIBE_ASR_URL"] == stack.asr.url
    assert environment["CALLSCRIBE_BLOB_S3_BUCKET"] == ref(stack.data.exports_bucket)
    assert environment["CALLSCRIBE_DELIVERY_QUEUE_URL"] == ref(stack.events.delivery_queue)
    assert environment["CALLSCRIBE_EVENT_BUS_NAME"] == ref(stack.events.bus)
    # Its cluster (its own deployment), the other readers (to hand calls over), and what the
    # calls none took get after SIGTERM: 100 s of the 120 s stop timeout.
    assert environment["CALLSCRIBE_ECS_CLUSTER"] == {
        "Fn::GetAtt": [logical_id(stack.cluster), "Arn"]
    }
    assert environment["CALLSCRIBE_KVS_READER_URL"] == stack.kvs_reader.control_url
    assert stack.kvs_reader.control_url == (
        f"http://kvs-reader.prod.callscribe.internal:{CONTROL_PORT}"
    )
    assert environment["CALLSCRIBE_CONNECT_DRAIN_TIMEOUT_S"] == "100"
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [HEALTH_PORT, CONTROL_PORT]
    assert f"localhost:{HEALTH_PORT}/healthz" in " ".join(container["HealthCheck"]["Command"])
    assert container["StopTimeout"] == 120
    assert container["Command"] == list(KVS_READER_COMMAND)
    # No secret values in the environment: names and ARNs only.
    assert not [k for k in environment if "SECRET" in k and not k.endswith("_ARN")]


def test_the_api_and_the_readers_find_the_readers_and_only_they_reach_the_control_port() -> None:
    stack = default_stack()
    template = default_template()
    services = template.find_resources(
        "AWS::ServiceDiscovery::Service", {"Properties": {"Name": "kvs-reader"}}
    )
    (service,) = services.values()
    assert service["Properties"]["DnsConfig"]["DnsRecords"] == [{"TTL": 10, "Type": "A"}]
    api = [
        f
        for f in template.find_resources("AWS::Lambda::Function").values()
        if "CALLSCRIBE_KVS_READER_URL"
        in f["Properties"].get("Environment", {}).get("Variables", {})
    ]
    assert len(api) == 1
    assert api[0]["Properties"]["Environment"]["Variables"]["CALLSCRIBE_KVS_READER_URL"] == (
        f"http://kvs-reader.prod.callscribe.internal:{CONTROL_PORT}"
    )
    reader_group = {"Fn::GetAtt": [logical_id(stack.kvs_reader.security_group), "GroupId"]}
    rules = [
        r["Properties"]
        for r in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == reader_group
    ]
    # The API Lambda opens calls; a stopping reader hands its calls to the others.
    assert sorted(
        ((r["FromPort"], r["ToPort"]), r["SourceSecurityGroupId"]["Fn::GetAtt"][0]) for r in rules
    ) == sorted(
        [
            ((CONTROL_PORT, CONTROL_PORT), logical_id(stack.api.security_group)),
            ((CONTROL_PORT, CONTROL_PORT), logical_id(stack.kvs_reader.security_group)),
        ]
    )
    ecs_service = template.find_resources("AWS::ECS::Service")[
        logical_id(stack.kvs_reader.service)
    ]["Properties"]
    assert (
        ecs_service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    )
    assert ecs_service["DesiredCount"] == 1


def test_reader_counts_and_accounts_are_validated() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(context(kvsReaderMinCount=3, kvsReaderDesiredCount=1))
    assert "kvsReaderMinCount <= kvsReaderDesiredCount <= kvsReaderMaxCount" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(context(connectAccountIds="12345"))
    assert "'12345' is not a 12-digit AWS account id" in str(error.value)
    assert load_config(context(connectAccountIds=["111122223333"])).connect_account_ids == (
        "111122223333",
    )


# The tenant's stack ------------------------------------------------------------------------------


def customer_stack(values: dict[str, Any]) -> tuple[ConnectMediaAccessStack, Template]:
    ctx = {**cdk_json_context(), **values}
    app = cdk.App(context=ctx)
    stack = ConnectMediaAccessStack(
        app,
        "CallScribe-ConnectAccess",
        config=load_customer_config(ctx),
        env=cdk.Environment(account=TENANT_ACCOUNT, region=REGION),
    )
    return stack, Template.from_stack(stack)


def test_tenant_role_trusts_only_the_reader_role_with_the_external_id() -> None:
    stack, template = customer_stack(MINIMAL)
    role = template.find_resources("AWS::IAM::Role")[logical_id(stack.role)]["Properties"]
    assert role["RoleName"] == "CallScribeConnectMediaReader"
    assert role["MaxSessionDuration"] == 3600
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "acme-7Hq2-callscribe"}},
            "Effect": "Allow",
            "Principal": {"AWS": READER_ROLE},
        }
    ]
    assert "ManagedPolicyArns" not in role


def test_tenant_role_may_only_read_the_connect_streams() -> None:
    stack, template = customer_stack(MINIMAL)
    role = template.find_resources("AWS::IAM::Role")[logical_id(stack.role)]["Properties"]
    (policy,) = role["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert set(statements) == {"ReadConnectMediaStreams", "ListStreams"}
    read = statements["ReadConnectMediaStreams"]
    assert sorted(read["Action"]) == [
        "kinesisvideo:DescribeStream",
        "kinesisvideo:GetDataEndpoint",
        "kinesisvideo:GetMedia",
    ]
    resource = json.dumps(read["Resource"])
    assert f":kinesisvideo:{REGION}:{TENANT_ACCOUNT}:stream/acme-connect-*/*" in resource
    assert statements["ListStreams"]["Action"] == "kinesisvideo:ListStreams"
    assert statements["ListStreams"]["Resource"] == "*"
    # Nothing else in the account: no other role, policy, or function without the API URL.
    assert len(template.find_resources("AWS::IAM::Role")) == 1
    assert template.find_resources("AWS::IAM::Policy") == {}
    assert template.find_resources("AWS::Lambda::Function") == {}
    assert findings(stack) == []


def test_a_customer_kms_key_adds_decrypt_through_kinesis_video_only() -> None:
    stack, template = customer_stack({**MINIMAL, "kmsKeyArn": KMS_KEY})
    role = template.find_resources("AWS::IAM::Role")[logical_id(stack.role)]["Properties"]
    (decrypt,) = [
        s
        for s in role["Policies"][0]["PolicyDocument"]["Statement"]
        if s["Sid"] == "DecryptConnectMedia"
    ]
    assert decrypt == {
        "Action": "kms:Decrypt",
        "Condition": {"StringEquals": {"kms:ViaService": f"kinesisvideo.{REGION}.amazonaws.com"}},
        "Effect": "Allow",
        "Resource": KMS_KEY,
        "Sid": "DecryptConnectMedia",
    }


def test_contact_flow_lambdas_with_their_secret_and_connect_permission() -> None:
    stack, template = customer_stack(FULL)
    functions = template.find_resources("AWS::Lambda::Function")
    assert {f["Properties"]["Handler"] for f in functions.values()} == {
        "functions.connect_start.handler",
        "functions.connect_stop.handler",
    }
    assert stack.credentials_secret is not None
    for function in functions.values():
        properties = function["Properties"]
        assert properties["Runtime"].startswith("python3.")
        assert properties["Timeout"] <= 8  # Connect waits 8 s at most
        assert properties["Environment"]["Variables"] == {
            "CALLSCRIBE_API_URL": "https://api.callscribe.example.com",
            "CALLSCRIBE_CREDENTIALS_SECRET_ARN": ref(stack.credentials_secret),
            "CALLSCRIBE_CONTACT_ID_FIELD": "InitialContactId",
            "CALLSCRIBE_CUSTOMER_ID_ATTRIBUTE": "crmId",
            "CALLSCRIBE_AGENT_ID_ATTRIBUTE": "agentId",
            "CALLSCRIBE_REDACTION_OUTPUT": "redacted",
            "CALLSCRIBE_LANGUAGE": "en-GB",
        }
    permissions = template.find_resources("AWS::Lambda::Permission")
    assert len(permissions) == 2
    for permission in permissions.values():
        assert permission["Properties"]["Principal"] == "connect.amazonaws.com"
        assert permission["Properties"]["SourceArn"] == INSTANCE
        assert permission["Properties"]["SourceAccount"] == TENANT_ACCOUNT
    associations = template.find_resources("AWS::Connect::IntegrationAssociation")
    assert {a["Properties"]["IntegrationType"] for a in associations.values()} == {
        "LAMBDA_FUNCTION"
    }
    assert len(associations) == 2
    # Each function reads the one secret and nothing else beyond its logs.
    for function in (stack.start_function, stack.stop_function):
        assert function is not None
        statements = policy_statements(template, function.role)
        assert {json.dumps(s["Resource"]) for s in statements} == {
            json.dumps(ref(stack.credentials_secret))
        }
    assert findings(stack) == []


def test_the_lambda_zip_holds_only_the_flow_code(tmp_path: Path) -> None:
    ctx = {**cdk_json_context(), **FULL}
    app = cdk.App(context=ctx, outdir=str(tmp_path))
    ConnectMediaAccessStack(
        app,
        "C",
        config=load_customer_config(ctx),
        env=cdk.Environment(account=TENANT_ACCOUNT, region=REGION),
    )
    assembly = app.synth()
    assets = [
        p for p in Path(assembly.directory).iterdir() if p.name.startswith("asset.") and p.is_dir()
    ]
    assert len(assets) == 1  # one zip for both functions
    files = sorted(str(p.relative_to(assets[0])) for p in assets[0].rglob("*") if p.is_file())
    assert files == sorted(FLOW_LAMBDA_FILES)


@pytest.mark.parametrize(
    "values,message",
    [
        ({}, "callscribeReaderRoleArn: required"),
        ({**MINIMAL, "externalId": "x"}, "externalId: 2 to 1224"),
        (
            {**MINIMAL, "callscribeReaderRoleArn": "arn:aws:iam::123:user/x"},
            "is not an IAM role ARN",
        ),
        ({**MINIMAL, "roleName": "Other"}, "must start with CallScribeConnectMediaReader"),
        ({**MINIMAL, "callscribeApiUrl": "http://api.example.com"}, "https://"),
        ({**MINIMAL, "kmsKeyArn": "alias/aws/kinesisvideo"}, "is not a KMS key ARN"),
        (
            {**MINIMAL, "connectStreamPrefx": "acme"},
            "connectStreamPrefx: not a setting of this stack",
        ),
        (
            {**MINIMAL, "logRetentionDays": 31},
            "logRetentionDays: CloudWatch Logs accepts only 1, 3, 5",
        ),
    ],
)
def test_tenant_settings_are_validated(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_customer_config({**cdk_json_context(), **values})
    assert message in str(error.value)


def run_customer_app(values: dict[str, Any], outdir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({**cdk_json_context(), **values}),
        "CDK_OUTDIR": str(outdir),
        "CDK_DEFAULT_REGION": REGION,
        "CDK_DEFAULT_ACCOUNT": TENANT_ACCOUNT,
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    return subprocess.run(
        [sys.executable, "customer_account_app.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_customer_app_synthesises_with_cdk_nag_and_refuses_bad_settings(tmp_path: Path) -> None:
    result = run_customer_app(FULL, tmp_path / "ok")
    assert result.returncode == 0, result.stderr[-4000:]
    template = json.loads((tmp_path / "ok" / "CallScribe-ConnectAccess.template.json").read_text())
    types = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::IAM::Role", "AWS::Lambda::Function", "AWS::SecretsManager::Secret"} <= types
    report = json.loads((tmp_path / "ok" / "validation-report.json").read_text())
    assert [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])] == []
    bad = run_customer_app({"connectStreamPrefix": "acme"}, tmp_path / "bad")
    assert bad.returncode == 1
    assert (
        "callscribeReaderRoleArn: required (cdk deploy -c callscribeReaderRoleArn=…)" in bad.stderr
    )
    assert "Traceback" not in bad.stderr
