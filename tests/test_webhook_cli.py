"""``callscribe webhook …`` as an operator runs it, and the OpenAPI description of the
outputs endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from callscribe.config import Settings
from callscribe.secrets import FileSecrets
from callscribe.store.base import DeliveryFailure, WebhookAuth
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import running_receiver, running_server
from callscribe.webhooks.signing import sign
from tests.conftest import RunningServer
from tests.serve_support import TwilioCall, agent_lines, api_client, wait_until


def callscribe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callscribe", *args], capture_output=True, text=True, timeout=300
    )


def test_webhook_set_show_clear(tmp_path: Path) -> None:
    data = str(tmp_path)
    ca = trustme.CA()
    client = ca.issue_cert("callscribe.example.com")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "client.pem").write_bytes(client.cert_chain_pems[0].bytes())
    (tmp_path / "client.key").write_bytes(client.private_key_pem.bytes())
    (tmp_path / "client-secret").write_text("oauth-s3cret\n")

    result = callscribe(
        "webhook",
        "set",
        "--tenant",
        "acme",
        "--url",
        "https://hooks.acme.example/cs",
        "--oauth-token-url",
        "https://auth.acme.example/token",
        "--oauth-client-id",
        "cs",
        "--oauth-client-secret",
        f"@{tmp_path / 'client-secret'}",
        "--oauth-scope",
        "hooks",
        "--ca-bundle",
        str(tmp_path / "ca.pem"),
        "--client-cert",
        str(tmp_path / "client.pem"),
        "--client-key",
        str(tmp_path / "client.key"),
        "--retry-attempts",
        "2",
        "--data-dir",
        data,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["auth"] == "oauth2-client-credentials" and shown["source"] == "tenant"
    assert shown["credentials"] == {"oauth-client-secret": "set", "client-key": "set"}
    assert shown["caBundle"] == "1 certificate" and shown["retryAttempts"] == 2
    for output in (
        result.stdout,
        callscribe("webhook", "show", "--tenant", "acme", "--data-dir", data).stdout,
    ):
        assert "oauth-s3cret" not in output and "PRIVATE KEY" not in output

    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    config = store.get_webhook_config("acme")
    assert config is not None and config.auth is WebhookAuth.OAUTH2
    secrets = FileSecrets(tmp_path / "secrets.json")
    assert secrets.get("webhook/acme/oauth-client-secret") == "oauth-s3cret"
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600

    # Switching mode replaces the credentials as a whole.
    switched = callscribe(
        "webhook",
        "set",
        "--tenant",
        "acme",
        "--url",
        "https://hooks.acme.example/cs",
        "--token-name",
        "X-Hook",
        "--token",
        "tok",
        "--token-in",
        "query",
        "--data-dir",
        data,
    )
    assert switched.returncode == 0, switched.stderr
    assert json.loads(switched.stdout)["credentials"] == {"token": "set"}
    assert secrets.get("webhook/acme/oauth-client-secret") is None
    assert secrets.get("webhook/acme/client-key") is None

    signing = callscribe("webhook", "signing-secret", "--tenant", "acme", "--data-dir", data)
    secret = signing.stdout.strip()
    assert secret.startswith("whsec_") and sign(secret, "m", 1, b"{}").startswith("v1,")
    assert (
        callscribe(
            "webhook", "signing-secret", "--tenant", "acme", "--data-dir", data
        ).stdout.strip()
        == secret
    )
    rotated = callscribe(
        "webhook", "signing-secret", "--tenant", "acme", "--rotate", "--data-dir", data
    )
    assert rotated.stdout.strip() not in ("", secret)

    bad = callscribe(
        "webhook",
        "set",
        "--tenant",
        "acme",
        "--url",
        "https://x.example",
        "--client-cert",
        str(tmp_path / "client.pem"),
        "--data-dir",
        data,
    )
    assert bad.returncode == 2 and "client certificate" in bad.stderr
    assert (
        SqliteStore(tmp_path / "callscribe.sqlite3").get_webhook_config("acme").token_name
        == "X-Hook"
    )  # type: ignore[union-attr]

    assert callscribe("webhook", "clear", "--tenant", "acme", "--data-dir", data).returncode == 0
    again = callscribe("webhook", "clear", "--tenant", "acme", "--data-dir", data)
    assert again.returncode == 1
    assert json.loads(callscribe("webhook", "show", "--tenant", "acme", "--data-dir", data).stdout)[
        "source"
    ].startswith("deployment default")
    assert FileSecrets(tmp_path / "secrets.json").get("webhook/acme/token") is None
    # The signing secret stays, so receivers keep verifying after a target change.
    assert (
        FileSecrets(tmp_path / "secrets.json").get("webhook/acme/signing-secret")
        == rotated.stdout.strip()
    )


def test_webhook_failures_command(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    for n, (conversation, at) in enumerate(
        (("CA1", 1_700_000_000), ("CA2", 1_700_000_100), ("CA1", 1_700_000_200))
    ):
        store.put_delivery_failure(
            DeliveryFailure("acme", conversation, f"m{n}", "http 503", 503, at)
        )
    store.put_delivery_failure(
        DeliveryFailure("globex", "CA1", "g0", "timeout after 5 s", None, 1_700_000_000)
    )

    def rows(*args: str) -> list[dict[str, Any]]:
        result = callscribe("webhook", "failures", *args, "--data-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert [r["messageId"] for r in rows("--tenant", "acme")] == ["m0", "m1", "m2"]
    assert [r["messageId"] for r in rows("--tenant", "acme", "--conversation", "CA1")] == [
        "m0",
        "m2",
    ]
    assert [
        r["messageId"] for r in rows("--tenant", "acme", "--since", "2023-11-14T22:15:00Z")
    ] == ["m1", "m2"]
    assert [r["messageId"] for r in rows("--tenant", "acme", "--since", "2023-11-14T22:15:01")] == [
        "m2"
    ]
    (only,) = rows("--tenant", "globex")
    assert only == {
        "messageId": "g0",
        "externalConversationId": "CA1",
        "reason": "timeout after 5 s",
        "statusCode": None,
        "at": "2023-11-14T22:13:20.000Z",
    }


async def test_openapi_documents_the_outputs(server: RunningServer) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        spec = (await http.get(f"{server.base_url}/openapi.json")).json()
    paths = spec["paths"]
    failures = paths["/callscribe/v1/webhook-failures"]["get"]
    assert {p["name"] for p in failures["parameters"]} >= {
        "externalConversationId",
        "since",
        "limit",
    }
    feed = paths["/fileexporter/v1/feeds/{feed}/files"]["get"]
    assert {p["name"] for p in feed["parameters"]} >= {"feed", "start", "end"}
    assert "transcribedAt" in feed["description"]
    recording = paths["/conversation/v1/conversation/recording"]["get"]
    assert "audioRecordingAllowed" in recording["description"]
    schemas = spec["components"]["schemas"]
    assert {"url", "expiresAt", "hourStart"} <= set(schemas["FeedFileEntry"]["properties"])
    assert {"url", "offsetMs", "durationMs", "channels"} <= set(
        schemas["RecordingEntry"]["properties"]
    )
    assert {"messageId", "reason", "statusCode", "at"} <= set(
        schemas["DeliveryFailureEntry"]["properties"]
    )
    hook = spec["webhooks"]["transcript"]["post"]
    assert {p["name"] for p in hook["parameters"]} >= {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    assert "HMAC-SHA256" in hook["description"]
    interim = spec["webhooks"]["interim"]["post"]
    assert "--interim-results" in interim["description"]
    assert "never retried" in interim["description"]
    assert {"utteranceId", "text", "stablePrefix", "sender"} <= set(
        schemas["InterimMessage"]["properties"]
    )
    assert "/callscribe/v1/files/{token}" in paths


def test_readme_verification_helper_verifies_our_signatures() -> None:
    """The helper customers copy from the README accepts what CallScribe sends and nothing
    else."""
    import re
    import time

    from callscribe.webhooks.signing import new_signing_secret, signature_headers

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (code,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "def verify_callscribe_webhook" in block
    ]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    helper = namespace["verify_callscribe_webhook"]

    secret = new_signing_secret()
    body = json.dumps({"type": "transcript", "text": "héllo"}, ensure_ascii=False).encode()
    headers = signature_headers(secret, "msg-1", body)
    assert helper(secret, headers, body) == "msg-1"
    for bad_secret, bad_headers, bad_body in (
        (new_signing_secret(), headers, body),
        (secret, headers, body + b" "),
        (secret, {**headers, "webhook-id": "msg-2"}, body),
        (secret, signature_headers(secret, "msg-1", body, now=time.time() - 600), body),
    ):
        try:
            helper(bad_secret, bad_headers, bad_body)
        except ValueError:
            continue
        raise AssertionError("the helper accepted a message it must refuse")


def test_core_does_not_import_boto3() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, callscribe.server, callscribe.cli, callscribe.api.outputs; "
            "print('boto3' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "False", result.stderr


# --------------------------------------------------------------------------- serve's secret


async def test_serve_reads_the_webhook_secret_from_a_file(tmp_path: Path) -> None:
    """`--webhook-secret-file`: the deployment-wide target's secret never shows in the process
    list (ps reads /proc/<pid>/cmdline), and the server sends it with every POST."""
    secret = "file-s3cret-" + "9" * 20
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with (
        running_receiver() as receiver,
        running_server(
            data_dir,
            receiver.url,
            ["--webhook-secret-name", "X-Hook-Token", "--webhook-secret-file", str(secret_file)],
        ) as server,
    ):
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        api = api_client(data_dir, server.base_url)
        call = TwilioCall(api)
        await call.open()
        await call.send_line(agent_lines(call.call)[0])

        async def delivered() -> bool:
            return bool(receiver.messages)

        await wait_until(delivered, 120, "a transcript delivered")
        await call.close()
        await api.close()
    assert receiver.messages[0].headers["x-hook-token"] == secret


def serve_settings(*args: str) -> Settings:
    from callscribe.cli import _settings, build_parser

    return _settings(build_parser().parse_args(["serve", *args]))


def test_serve_takes_the_webhook_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALLSCRIBE_WEBHOOK_SECRET", "env-s3cret")
    settings = serve_settings(
        "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret-name", "X-Hook-Token"
    )
    assert (settings.webhook.secret_name, settings.webhook.secret) == ("X-Hook-Token", "env-s3cret")
    # A file given on the command line wins over the environment.
    (tmp_path / "secret").write_text("from-file\n")
    settings = serve_settings(
        "--webhook-secret-name", "X", "--webhook-secret-file", str(tmp_path / "secret")
    )
    assert settings.webhook.secret == "from-file"


def test_serve_refuses_both_secret_forms_and_a_missing_file(tmp_path: Path) -> None:
    both = callscribe(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--webhook-secret-name",
        "X",
        "--webhook-secret",
        "a",
        "--webhook-secret-file",
        str(tmp_path / "f"),
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = callscribe(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--webhook-secret-name",
        "X",
        "--webhook-secret-file",
        str(tmp_path / "absent"),
    )
    assert missing.returncode == 2
    assert "--webhook-secret-file" in missing.stderr and "absent" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = callscribe(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--webhook-secret-name",
        "X",
        "--webhook-secret-file",
        str(empty),
    )
    assert blank.returncode == 2 and "empty" in blank.stderr


def test_webhook_set_interim_results_is_off_unless_asked(tmp_path: Path) -> None:
    data = str(tmp_path)
    base = ("webhook", "set", "--tenant", "acme", "--url", "https://hooks.acme.example/cs")
    result = callscribe(*base, "--data-dir", data)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["interimResults"] is False

    result = callscribe(*base, "--interim-results", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["interimResults"] is True
    config = SqliteStore(tmp_path / "callscribe.sqlite3").get_webhook_config("acme")
    assert config is not None and config.interim_results is True
