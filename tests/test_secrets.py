"""Both ``Secrets`` adapters pass the same contract: a file in the data dir (local mode) and
Secrets Manager (the AWS deployment, under moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from callscribe.aws.adapters.secrets_manager import SecretsManagerSecrets
from callscribe.secrets import TOKEN_SIGNING_KEY, FileSecrets
from tests.secrets_contract import SecretsContract


class TestFileSecrets(SecretsContract):
    @pytest.fixture
    def secrets(self, tmp_path: Path) -> FileSecrets:
        return FileSecrets(tmp_path / "secrets.json")


@pytest.fixture
def secretsmanager(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("secretsmanager")


class TestSecretsManagerSecrets(SecretsContract):
    @pytest.fixture
    def secrets(self, secretsmanager: object) -> SecretsManagerSecrets:
        return SecretsManagerSecrets({}, client=secretsmanager, name_prefix="callscribe/test/")


def test_stack_created_secrets_are_read_by_arn(secretsmanager) -> None:  # type: ignore[no-untyped-def]
    arn = secretsmanager.create_secret(Name="CallScribeTokenKey-abc", SecretString="from-cdk")[
        "ARN"
    ]
    secrets = SecretsManagerSecrets({TOKEN_SIGNING_KEY: arn}, client=secretsmanager)
    assert secrets.get(TOKEN_SIGNING_KEY) == "from-cdk"
    assert secrets.get_or_create(TOKEN_SIGNING_KEY, lambda: "never used") == "from-cdk"


def test_per_tenant_names_live_under_the_prefix(secretsmanager) -> None:  # type: ignore[no-untyped-def]
    secrets = SecretsManagerSecrets({}, client=secretsmanager, name_prefix="callscribe/prod/")
    secrets.put("webhook/acme/token", "t0ken")
    stored = secretsmanager.get_secret_value(SecretId="callscribe/prod/webhook/acme/token")
    assert stored["SecretString"] == "t0ken"


def test_cached_values_expire(secretsmanager) -> None:  # type: ignore[no-untyped-def]
    writer = SecretsManagerSecrets({}, client=secretsmanager, name_prefix="p/")
    reader = SecretsManagerSecrets({}, client=secretsmanager, name_prefix="p/", cache_ttl_s=0)
    writer.put("webhook/acme/token", "old")
    assert reader.get("webhook/acme/token") == "old"
    writer.put("webhook/acme/token", "rotated")
    assert reader.get("webhook/acme/token") == "rotated"
