"""The operator's CLI against a deployment (`--store dynamodb --table`, `--secrets-prefix`,
`--bucket`), under moto: a tenant's webhook managed from a laptop, exports run and listed."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from callscribe.auth import hash_secret
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.aws.adapters.secrets_manager import SecretsManagerSecrets
from callscribe.cli import main
from callscribe.store.base import ApiKey, CallKey, DeliveryFailure, StoredMessage
from callscribe.webhooks.targets import WebhookTargets
from tests.aws_fixtures import REGION, AwsResources, create_resources

PREFIX = "callscribe/test/"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield create_resources()


def deployment(aws: AwsResources) -> list[str]:
    return ["--store", "dynamodb", "--table", aws.table_name, "--secrets-prefix", PREFIX]


def test_webhook_set_show_signing_secret_failures_clear(
    aws: AwsResources, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "webhook",
                "set",
                "--tenant",
                "acme",
                "--url",
                "https://hooks.acme.example/cs",
                "--token-name",
                "X-Acme-Token",
                "--token",
                "s3cret",
                *deployment(aws),
            ]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["url"] == "https://hooks.acme.example/cs"
    assert "s3cret" not in json.dumps(shown)

    # The credential is a Secrets Manager secret under the stage's webhook/ prefix (what the
    # webhook Lambda may read), and the target resolves as the Lambda would resolve it.
    names = [s["Name"] for s in boto3.client("secretsmanager").list_secrets()["SecretList"]]
    tenant_secrets = [n for n in names if n.startswith(f"{PREFIX}webhook/acme/")]
    assert tenant_secrets
    store = DynamoStore(aws.table_name)
    secrets = SecretsManagerSecrets({}, name_prefix=PREFIX)
    target = asyncio.run(WebhookTargets(store, secrets, default=None).resolve("acme"))
    assert target is not None and target.url == "https://hooks.acme.example/cs"
    assert target.credential_parts() == ({"X-Acme-Token": "s3cret"}, {})
    asyncio.run(target.client.aclose())

    assert main(["webhook", "show", "--tenant", "acme", *deployment(aws)]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == "https://hooks.acme.example/cs"

    assert main(["webhook", "signing-secret", "--tenant", "acme", "--secrets-prefix", PREFIX]) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("whsec_")
    assert main(["webhook", "signing-secret", "--tenant", "acme", "--secrets-prefix", PREFIX]) == 0
    assert capsys.readouterr().out.strip() == first

    store.put_delivery_failure(DeliveryFailure("acme", "CAx", "m1", "http 503", 503, time.time()))
    assert (
        main(
            [
                "webhook",
                "failures",
                "--tenant",
                "acme",
                "--store",
                "dynamodb",
                "--table",
                aws.table_name,
            ]
        )
        == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["reason"] == "http 503"

    assert main(["webhook", "clear", "--tenant", "acme", *deployment(aws)]) == 0
    capsys.readouterr()
    assert main(["webhook", "clear", "--tenant", "acme", *deployment(aws)]) == 1
    assert store.get_webhook_config("acme") is None


def test_export_run_and_list_against_the_bucket(
    aws: AwsResources, capsys: pytest.CaptureFixture[str]
) -> None:
    day = datetime.now(UTC).date() - timedelta(days=2)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    store = DynamoStore(aws.table_name)
    store.put_api_key(ApiKey("id-acme", "acme", hash_secret("x"), start.timestamp() - 86_400))
    key = CallKey("acme", "twilio", "CAexport")
    body = {
        "externalConversationId": "CAexport",
        "sender": {"role": "agent", "externalId": "A"},
        "autotranscribeResponse": {"start": 0, "end": 900, "utterance": [{"text": "hi"}]},
    }
    at = (start + timedelta(hours=5)).timestamp()
    store.put_message(StoredMessage(key, 0, "m0", body, at, time.time() + 86_400))

    table = ["--store", "dynamodb", "--table", aws.table_name]
    with pytest.raises(SystemExit, match="needs --bucket"):
        main(["export", "run", "--date", day.isoformat(), *table])
    assert (
        main(["export", "run", "--date", day.isoformat(), *table, "--bucket", aws.bucket_name]) == 0
    )
    assert json.loads(capsys.readouterr().out)["rows"] == {"acme": 1}
    s3 = boto3.client("s3")
    hour5 = f"exports/utterances/acme/{day.isoformat()}/05.jsonl.gz"
    rows = gzip.decompress(s3.get_object(Bucket=aws.bucket_name, Key=hour5)["Body"].read())
    assert json.loads(rows)["text"] == "hi"

    assert (
        main(
            [
                "export",
                "list",
                "--tenant",
                "acme",
                "--bucket",
                aws.bucket_name,
                "--start",
                f"{day}T04:00:00",
                "--end",
                f"{day}T07:00:00",
            ]
        )
        == 0
    )
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["hourStart"] for f in listed] == [
        f"{day}T04:00:00.000Z",
        f"{day}T05:00:00.000Z",
        f"{day}T06:00:00.000Z",
    ]
    assert all(aws.bucket_name in f["url"] and "X-Amz-Signature=" in f["url"] for f in listed)
