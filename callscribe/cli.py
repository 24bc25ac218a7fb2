"""The ``callscribe`` command: serve, keys, webhook, export, connect-access, siprec-sources,
vocabulary, demo, bench, asr-worker, bench-asr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from callscribe.config import Settings, SiprecSettings, WebhookSettings, default_data_dir


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the flag and the file."""


def _secret_file(flag: str, path: Path) -> str:
    """A credential kept in a file rather than on the command line, where every user of the
    machine could read it in the process list. Surrounding whitespace (the final newline an
    editor adds) is not part of it."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"{flag} {path}: {exc.strerror or exc}") from None
    if not value:
        raise SecretFileError(f"{flag} {path}: the file is empty")
    if path.stat().st_mode & 0o077:
        print(
            f"warning: {flag} {path} is readable by other users (chmod 600 it)",
            file=sys.stderr,
        )
    return value


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "public_gateway_url", "public_url"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    webhook: dict[str, Any] = {}
    for flag, field in (
        ("webhook_url", "url"),
        ("webhook_secret_name", "secret_name"),
        ("webhook_secret", "secret"),
        ("webhook_secret_in", "secret_in"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            webhook[field] = value
    secret_file = getattr(args, "webhook_secret_file", None)
    if secret_file is not None:
        webhook["secret"] = _secret_file("--webhook-secret-file", secret_file)
    settings = Settings(**overrides)
    if webhook:
        settings.webhook = WebhookSettings(**{**settings.webhook.model_dump(), **webhook})
    sip_port = getattr(args, "sip_port", None)
    if sip_port is not None:
        siprec = {"enabled": False} if sip_port == "off" else {"enabled": True, "port": sip_port}
        settings.siprec = SiprecSettings(**{**settings.siprec.model_dump(), **siprec})
    return settings


def _sip_port(value: str) -> int | str:
    if value == "off":
        return value
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port number, 0 (any free port) or off")
    return port


# Settings that serve takes as flags; every other one is set in the environment only.
SERVE_FLAG_SETTINGS = {
    "host",
    "port",
    "data_dir",
    "public_gateway_url",
    "public_url",
    "webhook.url",
    "webhook.secret_name",
    "webhook.secret",
    "webhook.secret_in",
    "siprec.port",
    "siprec.enabled",
}


def _environment_only_settings() -> str:
    """serve --help's epilog: each setting without a flag, by its environment variable, with
    its default, read from the settings classes so that it cannot go stale."""
    from pydantic_settings import BaseSettings

    lines = ["settings from the environment only (default in brackets):"]

    def walk(model: type[BaseSettings], path: str) -> None:
        prefix = model.model_config.get("env_prefix", "")
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseSettings):
                walk(kind, f"{path}{name}.")
            elif f"{path}{name}" not in SERVE_FLAG_SETTINGS:
                default = field.get_default(call_default_factory=True)
                shown = (
                    "unset"
                    if default is None
                    else json.dumps(list(default))
                    if isinstance(default, tuple | list)
                    else default
                )
                lines.append(f"  {prefix}{name.upper()} [{shown}]")

    walk(Settings, "")
    return "\n".join(lines)


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where the SQLite store and secrets live (default {default_data_dir()}); "
        "made readable by its owner only",
    )


def _store_args(parser: argparse.ArgumentParser) -> None:
    _data_dir_arg(parser)
    parser.add_argument(
        "--store",
        choices=["sqlite", "dynamodb"],
        default="sqlite",
        help="sqlite: local mode's data dir; dynamodb: a deployment's table (AWS credentials "
        "from the environment)",
    )
    parser.add_argument("--table", help="the deployment's DynamoDB table (with --store dynamodb)")


def _secrets_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets-prefix",
        help="a deployment's Secrets Manager name prefix (callscribe/<stage>/); default: the "
        "data dir's secrets file",
    )


def _bucket_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        help="a deployment's recordings/exports S3 bucket (the stack's ExportsBucketName); "
        "default: the data dir's blobs/",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from callscribe.server import serve
    from callscribe.serving import exit_cleanly_on_sigterm

    try:
        settings = _settings(args)
    except SecretFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (settings.webhook.secret_name is None) != (settings.webhook.secret is None):
        print(
            "--webhook-secret-name and the secret (--webhook-secret-file, "
            "CALLSCRIBE_WEBHOOK_SECRET or --webhook-secret) go together",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "webhook_secret", None) is not None:
        print(
            "warning: --webhook-secret shows in the process list to every user of this "
            "machine; prefer --webhook-secret-file or CALLSCRIBE_WEBHOOK_SECRET",
            file=sys.stderr,
        )
    exit_cleanly_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from callscribe import adapters

    if getattr(args, "store", "sqlite") == "dynamodb":
        import os

        table = args.table or os.environ.get("CALLSCRIBE_TABLE_NAME")
        if not table:
            raise SystemExit("--store dynamodb needs --table (or CALLSCRIBE_TABLE_NAME)")
        return adapters.dynamodb_store(table)
    return adapters.local_store(_settings(args))


def cmd_keys_create(args: argparse.Namespace) -> int:
    from callscribe.auth import create_api_key

    try:
        issued = create_api_key(_store(args), args.tenant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"apiId": issued.api_id, "apiSecret": issued.api_secret}))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    for key in _store(args).list_api_keys(args.tenant):
        print(
            json.dumps(
                {
                    "apiId": key.api_id,
                    "tenant": key.tenant,
                    "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at)),
                    "revoked": not key.active,
                }
            )
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if _store(args).revoke_api_key(args.api_id, time.time()):
        print(f"revoked {args.api_id}")
        return 0
    print(f"error: no active key {args.api_id}", file=sys.stderr)
    return 1


def _secrets(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from callscribe import adapters

    prefix = getattr(args, "secrets_prefix", None)
    if prefix:
        return adapters.secrets_manager({}, prefix)
    return adapters.local_secrets(_settings(args))


def _blobs(args: argparse.Namespace, settings: Settings):  # type: ignore[no-untyped-def]
    """The deployment's bucket with --bucket; otherwise local mode's blob store."""
    from callscribe import adapters

    if getattr(args, "bucket", None):
        return adapters.s3_blobs(settings, bucket=args.bucket)
    if getattr(args, "store", "sqlite") == "dynamodb":
        raise SystemExit("--store dynamodb needs --bucket (the deployment's exports bucket)")
    return adapters.local_blobs(settings, _secrets(args))


def _value(argument: str | None) -> str | None:
    """A credential flag's value; ``@PATH`` reads it from a file, keeping it out of the shell
    history and the process list."""
    if argument is None or not argument.startswith("@"):
        return argument
    return Path(argument[1:]).read_text().strip()


def _pem(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


def cmd_webhook_set(args: argparse.Namespace) -> int:
    from callscribe.store.base import WebhookAuth
    from callscribe.webhooks.management import WebhookConfigError, set_webhook

    try:
        auth = WebhookAuth(args.auth) if args.auth else None
        config = set_webhook(
            _store(args),
            _secrets(args),
            tenant=args.tenant,
            url=args.url,
            auth=auth,
            token_name=args.token_name,
            token=_value(args.token),
            token_in=args.token_in,
            oauth_token_url=args.oauth_token_url,
            oauth_client_id=args.oauth_client_id,
            oauth_client_secret=_value(args.oauth_client_secret),
            oauth_scope=args.oauth_scope,
            oauth_client_auth=args.oauth_client_auth,
            ca_bundle_pem=_pem(args.ca_bundle),
            client_cert_pem=_pem(args.client_cert),
            client_key_pem=_pem(args.client_key),
            timeout_s=args.timeout_s,
            retry_attempts=args.retry_attempts,
            retry_backoff_s=args.retry_backoff_s,
            interim_results=args.interim_results,
        )
    except (WebhookConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from callscribe.webhooks.management import describe_webhook

    print(json.dumps(describe_webhook(_store(args), _secrets(args), config.tenant), indent=2))
    return 0


def cmd_webhook_show(args: argparse.Namespace) -> int:
    from callscribe.webhooks.management import describe_webhook

    print(json.dumps(describe_webhook(_store(args), _secrets(args), args.tenant), indent=2))
    return 0


def cmd_webhook_clear(args: argparse.Namespace) -> int:
    from callscribe.webhooks.management import clear_webhook

    if clear_webhook(_store(args), _secrets(args), args.tenant):
        print(f"cleared the webhook configuration of {args.tenant}")
        return 0
    print(f"error: {args.tenant} has no webhook configuration", file=sys.stderr)
    return 1


def cmd_webhook_signing_secret(args: argparse.Namespace) -> int:
    from callscribe.webhooks.management import signing_secret

    print(signing_secret(_secrets(args), args.tenant, rotate=args.rotate))
    return 0


def cmd_webhook_failures(args: argparse.Namespace) -> int:
    from callscribe.export import iso

    since = _timestamp(args.since) if args.since else None
    for failure in _store(args).list_delivery_failures(
        args.tenant, args.conversation, args.limit, since
    ):
        print(
            json.dumps(
                {
                    "messageId": failure.message_id,
                    "externalConversationId": failure.conversation_id,
                    "reason": failure.reason,
                    "statusCode": failure.status_code,
                    "at": iso(failure.at),
                }
            )
        )
    return 0


def _timestamp(text: str) -> float:
    from datetime import UTC, datetime

    value = datetime.fromisoformat(text)
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).timestamp()


def cmd_export_run(args: argparse.Namespace) -> int:
    from datetime import date

    from callscribe.export import UtteranceExporter, day_due

    settings = _settings(args)
    day = date.fromisoformat(args.date) if args.date else day_due(time.time(), 0)
    exporter = UtteranceExporter(_store(args), _blobs(args, settings), settings.spool_dir)
    summary = exporter.export_day(day, args.tenant or None)
    print(json.dumps(summary.as_dict()))
    return 0


def cmd_export_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from callscribe.adapters import DAY_S
    from callscribe.export import FEEDS, MAX_INTERVAL, feed_files, iso

    settings = _settings(args)
    if args.feed not in FEEDS:
        print(f"error: unknown feed {args.feed!r}", file=sys.stderr)
        return 2
    start = datetime.fromtimestamp(_timestamp(args.start), UTC)
    end = datetime.fromtimestamp(_timestamp(args.end), UTC)
    if not start < end <= start + MAX_INTERVAL:
        print("error: end must be after start, at most 31 days later", file=sys.stderr)
        return 2
    found = feed_files(
        _blobs(args, settings),
        args.feed,
        args.tenant,
        start,
        end,
        retention_s=settings.export_retention_days * DAY_S,
        link_ttl_s=args.link_ttl_s or settings.link_ttl_s,
        now=time.time(),
    )
    base = args.public_url or settings.public_url or f"http://{settings.host}:{settings.port}"
    for f in found.files:
        url = base.rstrip("/") + f.url if f.url.startswith("/") else f.url
        print(
            json.dumps(
                {
                    "hourStart": iso(f.hour_start.timestamp()),
                    "bytes": f.bytes,
                    "url": url,
                    "expiresAt": iso(f.expires_at),
                }
            )
        )
    if not found.complete:
        print(
            "note: some hours of the interval have no file (not exported yet, or expired)",
            file=sys.stderr,
        )
    return 0


def cmd_connect_access_set(args: argparse.Namespace) -> int:
    from callscribe.connect.kvs import role_account
    from callscribe.store.base import ConnectAccess

    if args.own_credentials == bool(args.role_arn):
        print("error: give --role-arn (with --external-id) or --own-credentials", file=sys.stderr)
        return 2
    if args.role_arn and (role_account(args.role_arn) is None or ":role/" not in args.role_arn):
        print(f"error: {args.role_arn!r} is not an IAM role ARN", file=sys.stderr)
        return 2
    if args.role_arn and not args.external_id:
        print(
            "error: --role-arn needs the --external-id that the role's trust demands",
            file=sys.stderr,
        )
        return 2
    access = ConnectAccess(args.tenant, args.role_arn, args.external_id, time.time())
    _store(args).put_connect_access(access)
    print(json.dumps(_connect_access_json(access)))
    return 0


def _connect_access_json(access: Any) -> dict[str, Any]:
    return {
        "tenant": access.tenant,
        "roleArn": access.role_arn,
        "externalId": access.external_id,
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(access.updated_at)),
    }


def cmd_connect_access_show(args: argparse.Namespace) -> int:
    access = _store(args).get_connect_access(args.tenant)
    if access is None:
        print(f"error: no Amazon Connect access for tenant {args.tenant}", file=sys.stderr)
        return 1
    print(json.dumps(_connect_access_json(access)))
    return 0


def cmd_connect_access_clear(args: argparse.Namespace) -> int:
    if _store(args).delete_connect_access(args.tenant):
        print(f"cleared Amazon Connect access of tenant {args.tenant}")
        return 0
    print(f"error: no Amazon Connect access for tenant {args.tenant}", file=sys.stderr)
    return 1


def cmd_siprec_sources_set(args: argparse.Namespace) -> int:
    from callscribe.store.base import siprec_source

    try:
        network, tenant = siprec_source(args.network, args.tenant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _store(args).put_siprec_source(network, tenant)
    print(json.dumps({"network": network, "tenant": tenant}))
    return 0


def cmd_siprec_sources_remove(args: argparse.Namespace) -> int:
    from callscribe.store.base import siprec_source_network

    try:
        network = siprec_source_network(args.network)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if _store(args).delete_siprec_source(network):
        print(f"removed the SIPREC source mapping of {network}")
        return 0
    print(f"error: no SIPREC source mapping for {network}", file=sys.stderr)
    return 1


def cmd_siprec_sources_list(args: argparse.Namespace) -> int:
    import ipaddress

    sources = _store(args).siprec_sources()

    def address_order(network: str) -> tuple[int, int, int]:
        parsed = ipaddress.ip_network(network)
        return parsed.version, int(parsed.network_address), parsed.prefixlen

    for network in sorted(sources, key=address_order):
        print(json.dumps({"network": network, "tenant": sources[network]}))
    return 0


def _vocabulary_file(path: Path) -> list[str]:
    """The terms of a vocabulary file: one a line, UTF-8; blank lines and lines starting with
    '#' skipped. ``-``: standard input. ValueError names the file and line of a bad term."""
    from callscribe.vocabulary import vocabulary_term

    name = "standard input" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    terms = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            terms.append(vocabulary_term(line, f"{name} line {number}"))
    return terms


def _vocabulary_json(vocabulary: Any) -> dict[str, Any]:
    from callscribe.vocabulary import total_chars

    return {
        "tenant": vocabulary.tenant,
        "terms": list(vocabulary.terms),
        # Counted against the bound of 500, terms joined with ", ".
        "characters": total_chars(vocabulary.terms),
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(vocabulary.updated_at)),
    }


def cmd_vocabulary_set(args: argparse.Namespace) -> int:
    from callscribe.store.base import TenantVocabulary, tenant_vocabulary

    if bool(args.terms) == (args.file is not None):
        print("error: give the terms, or --file with one term a line (not both)", file=sys.stderr)
        return 2
    try:
        terms = args.terms or _vocabulary_file(args.file)
        vocabulary = tenant_vocabulary(TenantVocabulary(args.tenant, tuple(terms), time.time()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _store(args).put_tenant_vocabulary(vocabulary)
    print(json.dumps(_vocabulary_json(vocabulary), ensure_ascii=False))
    return 0


def cmd_vocabulary_show(args: argparse.Namespace) -> int:
    vocabulary = _store(args).get_tenant_vocabulary(args.tenant)
    if vocabulary is None:
        print(f"error: no vocabulary for tenant {args.tenant}", file=sys.stderr)
        return 1
    print(json.dumps(_vocabulary_json(vocabulary), ensure_ascii=False))
    return 0


def cmd_vocabulary_clear(args: argparse.Namespace) -> int:
    if _store(args).delete_tenant_vocabulary(args.tenant):
        print(f"cleared the vocabulary of tenant {args.tenant}")
        return 0
    print(f"error: no vocabulary for tenant {args.tenant}", file=sys.stderr)
    return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from callscribe.demo import run_demo

    return asyncio.run(run_demo(speed=args.speed, keep_data=args.keep_data))


def cmd_bench(args: argparse.Namespace) -> int:
    from callscribe.bench import run_bench

    calls = [int(n) for n in args.calls.split(",")]
    return asyncio.run(
        run_bench(
            calls,
            p95_bound_ms=args.p95_bound_ms,
            seconds=args.seconds,
            end_silence_ms=args.end_silence_ms,
            interim=args.interim,
        )
    )


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from callscribe.quality_bench import run_quality_bench

    if args.at_once is not None and args.at_once < 1:
        print("--at-once must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(
        run_quality_bench(args.split, at_once=args.at_once, speed=args.speed, json_path=args.json)
    )


def cmd_bench_vocabulary(args: argparse.Namespace) -> int:
    from callscribe.vocabulary_bench import run_vocabulary_bench

    return asyncio.run(
        run_vocabulary_bench(
            args.split, paths=args.paths.split(","), style=args.style, json_path=args.json
        )
    )


def cmd_asr_worker(args: argparse.Namespace) -> int:
    from callscribe.asr.worker import run_worker
    from callscribe.config import AsrWorkerSettings

    overrides = {name: getattr(args, name) for name in ("host", "port")}
    settings = AsrWorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
    return run_worker(settings)


def cmd_bench_asr(args: argparse.Namespace) -> int:
    from callscribe.asr.bench import run_asr_bench

    try:
        batch_sizes = [int(n) for n in args.batch_sizes.split(",")]
    except ValueError:
        print("--batch-sizes takes comma-separated whole numbers", file=sys.stderr)
        return 2
    if any(n < 1 for n in batch_sizes) or args.utterances < 1:
        print("batch sizes and --utterances must be at least 1", file=sys.stderr)
        return 2
    vocabularies = tuple(args.vocabularies.split(","))
    if not set(vocabularies) <= {"none", "shared", "mixed"}:
        print("--vocabularies takes none, shared and mixed, comma-separated", file=sys.stderr)
        return 2
    return run_asr_bench(
        batch_sizes,
        args.utterances,
        encoder_context=args.encoder_context,
        vocabularies=vocabularies,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callscribe", description="Real-time contact-centre call transcription."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the API, the Twilio gateway and ASR locally",
        epilog=_environment_only_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any)")
    _data_dir_arg(serve)
    serve.add_argument("--public-gateway-url", help="WebSocket base Twilio reaches, wss://…")
    serve.add_argument(
        "--public-url", help="this server's base URL as clients reach it, for download links"
    )
    serve.add_argument("--webhook-url", help="where each transcript is POSTed")
    serve.add_argument("--webhook-secret-name", help="name of the secret header/parameter")
    secret = serve.add_mutually_exclusive_group()
    secret.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="PATH",
        help="read the secret's value from this file (keep it mode 600); or set "
        "CALLSCRIBE_WEBHOOK_SECRET. Either keeps it out of the process list",
    )
    secret.add_argument(
        "--webhook-secret",
        metavar="VALUE",
        help="the secret's value on the command line (visible to other users in ps)",
    )
    serve.add_argument("--webhook-secret-in", choices=["header", "query"])
    serve.add_argument(
        "--sip-port",
        type=_sip_port,
        help="SIPREC recorder port, UDP and TCP (default 5070; 0 = any free port; off)",
    )
    serve.set_defaults(func=cmd_serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="issue a key; the secret is printed once")
    create.add_argument("--tenant", required=True)
    _store_args(create)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys (never secrets)")
    listing.add_argument("--tenant")
    _store_args(listing)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("api_id")
    _store_args(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)

    _webhook_commands(commands)
    _export_commands(commands)
    access = commands.add_parser(
        "connect-access", help="a tenant's Amazon Connect role (KVS media in its account)"
    ).add_subparsers(dest="connect_access_command", required=True)
    set_access = access.add_parser(
        "set", help="the role the KVS readers assume in the tenant's account, and its external id"
    )
    set_access.add_argument("--tenant", required=True)
    set_access.add_argument("--role-arn", help="arn:aws:iam::<account>:role/<name>")
    set_access.add_argument("--external-id", help="the sts:ExternalId the role's trust demands")
    set_access.add_argument(
        "--own-credentials",
        action="store_true",
        help="read with CallScribe's own AWS credentials (Connect in the same account)",
    )
    _store_args(set_access)
    set_access.set_defaults(func=cmd_connect_access_set)
    _tenant_commands(
        access,
        ("show", cmd_connect_access_show, "show a tenant's Amazon Connect access"),
        ("clear", cmd_connect_access_clear, "remove a tenant's Amazon Connect access"),
    )
    _siprec_sources_commands(commands)
    _vocabulary_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="stream a sample two-party call and show transcripts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--speed", type=_positive, default=1.0, help="playback speed (1 = real time)")
    demo.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="simultaneous real-time calls: latency and RTF",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--calls", default="1,2,4", help="comma-separated numbers of calls")
    bench.add_argument(
        "--p95-bound-ms",
        type=float,
        default=1500.0,
        help="end of utterance to webhook, p95, that a number of calls must hold",
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="play only this much of the sample call (default: all of it)",
    )
    bench.add_argument(
        "--end-silence-ms",
        type=int,
        default=None,
        help="the VAD's end silence (default: the setting, 600)",
    )
    bench.add_argument(
        "--interim",
        action="store_true",
        help="play each number of calls twice, without and then with interim results (every "
        "call asks for them, a live viewer times them)",
    )
    bench.set_defaults(func=cmd_bench)
    bench_kinds = bench.add_subparsers(dest="bench_kind", required=False)
    quality = bench_kinds.add_parser(
        "quality",
        help="the quality corpus streamed in real time: streaming vs offline WER, loops, latency",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    quality.add_argument(
        "--split",
        choices=("all", "tuning", "held-back"),
        default="all",
        help="which calls of the corpus (the held-back split is never used to tune)",
    )
    quality.add_argument("--at-once", type=int, default=None, help="calls played at once (all)")
    quality.add_argument("--speed", type=_positive, default=1.0, help="times real time")
    quality.add_argument("--json", type=Path, default=None, help="also write the figures here")
    quality.set_defaults(func=cmd_bench_quality)
    vocabulary = bench_kinds.add_parser(
        "vocabulary",
        help="the quality corpus without and with call vocabularies: term recall, WER and "
        "false insertions, offline and cut as streamed",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    vocabulary.add_argument(
        "--split",
        choices=("tuning", "held-back"),
        default="tuning",
        help="which calls (choose settings on tuning; measure held-back once)",
    )
    vocabulary.add_argument(
        "--paths",
        choices=("offline", "streamed", "offline,streamed", "streamed,offline"),
        default="offline,streamed",
        help="offline: each turn cut from the script, 30 s window; streamed: cut by the "
        "endpointer, decoded as the server does",
    )
    vocabulary.add_argument(
        "--style",
        choices=("glossary", "terms", "sentence"),
        default=None,
        help="how the vocabulary is worded for the decoder (default: the engine's)",
    )
    vocabulary.add_argument("--json", type=Path, default=None, help="also write the figures here")
    vocabulary.set_defaults(func=cmd_bench_vocabulary)

    worker = commands.add_parser(
        "asr-worker", help="serve Whisper over HTTP, batching utterances from many calls"
    )
    worker.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    worker.add_argument("--port", type=int, help="port to listen on (default 8000; 0 = any)")
    worker.set_defaults(func=cmd_asr_worker)

    bench_asr = commands.add_parser(
        "bench-asr",
        help="ASR latency and throughput per batch size on this device",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench_asr.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated sizes")
    bench_asr.add_argument("--utterances", type=int, default=16, help="utterances per size")
    bench_asr.add_argument(
        "--encoder-context", choices=["trimmed", "full"], help="override the setting"
    )
    bench_asr.add_argument(
        "--vocabularies",
        default="none",
        help="comma-separated: none (no call vocabulary), shared (every utterance one "
        "tenant's), mixed (the corpus's domain vocabularies and none, in turn)",
    )
    bench_asr.set_defaults(func=cmd_bench_asr)
    return parser


def _siprec_sources_commands(commands: Any) -> None:
    sources = commands.add_parser(
        "siprec-sources",
        help="which tenant a SIPREC SBC's calls belong to, by its source address",
        description="Mappings held in the store, read by every running recorder within "
        "CALLSCRIBE_SIPREC_SOURCES_REFRESH_S (30 s); consulted before "
        "CALLSCRIBE_SIPREC_TENANT_BY_SOURCE, then CALLSCRIBE_SIPREC_TENANT. The most "
        "specific network that holds an SBC's address wins.",
    ).add_subparsers(dest="siprec_sources_command", required=True)
    setting = sources.add_parser("set", help="map an SBC address or network to a tenant")
    setting.add_argument(
        "--network", required=True, help="an address (198.51.100.7) or CIDR (192.0.2.0/24)"
    )
    setting.add_argument("--tenant", required=True)
    _store_args(setting)
    setting.set_defaults(func=cmd_siprec_sources_set)
    removing = sources.add_parser("remove", help="remove a network's mapping")
    removing.add_argument(
        "--network", required=True, help="the address or network whose mapping goes"
    )
    _store_args(removing)
    removing.set_defaults(func=cmd_siprec_sources_remove)
    listing = sources.add_parser("list", help="every mapping (JSON lines)")
    _store_args(listing)
    listing.set_defaults(func=cmd_siprec_sources_list)


def _vocabulary_commands(commands: Any) -> None:
    from callscribe.vocabulary import BOUNDS

    vocabulary = commands.add_parser(
        "vocabulary",
        help="a tenant's custom vocabulary (words its calls' speakers may say)",
        description="Product, plan and agent names the speech recogniser should spell as "
        "given, for every call of the tenant. Each start-streaming reads it (a call in "
        "progress keeps the one its start read) and merges it with the call's own "
        "autotranscribeParams.vocabulary: the call's terms first, then each of the tenant's "
        f"that still fits. {BOUNDS[0].upper()}{BOUNDS[1:]} (joined with ', '), printable "
        "characters only; repeats differing only in case are dropped.",
    ).add_subparsers(dest="vocabulary_command", required=True)
    setting = vocabulary.add_parser(
        "set", help="replace the tenant's vocabulary with these terms, in this order"
    )
    setting.add_argument("--tenant", required=True)
    setting.add_argument("terms", nargs="*", metavar="TERM", help="a term (quote one with spaces)")
    setting.add_argument(
        "--file",
        type=Path,
        help="the terms, one a line (UTF-8; blank lines and lines starting with # skipped; "
        "- reads standard input)",
    )
    _store_args(setting)
    setting.set_defaults(func=cmd_vocabulary_set)
    _tenant_commands(
        vocabulary,
        ("show", cmd_vocabulary_show, "the tenant's vocabulary (JSON)"),
        ("clear", cmd_vocabulary_clear, "remove the tenant's vocabulary"),
    )


def _tenant_commands(parser: Any, *commands: tuple[str, Any, str]) -> None:
    """Subcommands (name, function, help) that take only ``--tenant`` and the store's
    arguments: a tenant setting's ``show`` and ``clear``."""
    for name, func, text in commands:
        command = parser.add_parser(name, help=text)
        command.add_argument("--tenant", required=True)
        _store_args(command)
        command.set_defaults(func=func)


def _webhook_commands(commands: Any) -> None:
    webhook = commands.add_parser(
        "webhook", help="a tenant's webhook target, credentials, signing secret, failures"
    ).add_subparsers(dest="webhook_command", required=True)

    setting = webhook.add_parser(
        "set",
        help="set (replace) a tenant's webhook target",
        description="Credential values may be given as @PATH to read them from a file. "
        "Credentials go to the secrets store, never to logs; show prints only whether they "
        "are set.",
    )
    setting.add_argument("--tenant", required=True)
    setting.add_argument("--url", required=True, help="https://… (http:// for loopback tests)")
    setting.add_argument(
        "--auth",
        choices=["none", "secret-token", "oauth2-client-credentials"],
        help="default: secret-token with --token-name, oauth2 with --oauth-token-url, else none",
    )
    setting.add_argument("--token-name", help="header or query parameter carrying the token")
    setting.add_argument("--token", help="the token's value (or @PATH)")
    setting.add_argument("--token-in", choices=["header", "query"], default="header")
    setting.add_argument("--oauth-token-url")
    setting.add_argument("--oauth-client-id")
    setting.add_argument("--oauth-client-secret", help="(or @PATH)")
    setting.add_argument("--oauth-scope")
    setting.add_argument(
        "--oauth-client-auth",
        choices=["basic", "post"],
        default="basic",
        help="client_secret_basic (default) or client_secret_post",
    )
    setting.add_argument("--ca-bundle", type=Path, help="PEM CA certificates to trust (only)")
    setting.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    setting.add_argument("--client-key", type=Path, help="its PEM private key (unencrypted)")
    setting.add_argument("--timeout-s", type=float, default=5.0)
    setting.add_argument(
        "--retry-attempts",
        type=int,
        default=0,
        help="extra attempts after a failed POST (default 0: record and drop, as the contract)",
    )
    setting.add_argument("--retry-backoff-s", type=float, default=1.0, help="doubled each time")
    setting.add_argument(
        "--interim-results",
        action="store_true",
        help='also POST the interim results of calls that ask for them ("type": "interim", '
        "best effort; local mode only, see README Live); default: finals only, as the contract",
    )
    _store_args(setting)
    _secrets_args(setting)
    setting.set_defaults(func=cmd_webhook_set)

    for name, func, help_text in (
        ("show", cmd_webhook_show, "a tenant's webhook target (never credential values)"),
        ("clear", cmd_webhook_clear, "remove a tenant's target and credentials"),
    ):
        sub = webhook.add_parser(name, help=help_text)
        sub.add_argument("--tenant", required=True)
        _store_args(sub)
        _secrets_args(sub)
        sub.set_defaults(func=func)

    signing = webhook.add_parser(
        "signing-secret", help="print the tenant's webhook signing secret (whsec_…)"
    )
    signing.add_argument("--tenant", required=True)
    signing.add_argument("--rotate", action="store_true", help="replace it with a new one")
    _data_dir_arg(signing)
    _secrets_args(signing)
    signing.set_defaults(func=cmd_webhook_signing_secret)

    failures = webhook.add_parser("failures", help="deliveries given up, oldest first (JSON lines)")
    failures.add_argument("--tenant", required=True)
    failures.add_argument("--conversation", help="one call's guid")
    failures.add_argument("--since", help="ISO 8601 time (UTC if no offset)")
    failures.add_argument("--limit", type=int, default=1000)
    _store_args(failures)
    failures.set_defaults(func=cmd_webhook_failures)


def _export_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="the File Exporter's utterances feed"
    ).add_subparsers(dest="export_command", required=True)
    run = export.add_parser("run", help="write a day's feed files (serve does it daily, 02:00 UTC)")
    run.add_argument("--date", help="YYYY-MM-DD (UTC); default: yesterday")
    run.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    _store_args(run)
    _bucket_args(run)
    run.set_defaults(func=cmd_export_run)

    listing = export.add_parser(
        "list", help="expiring links to the feed files covering an interval"
    )
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--feed", default="utterances")
    listing.add_argument("--start", required=True, help="ISO 8601 (UTC if no offset)")
    listing.add_argument("--end", required=True, help="ISO 8601, exclusive")
    listing.add_argument("--public-url", help="the server's base URL, for local links")
    listing.add_argument("--link-ttl-s", type=int, help="link life (default 3600)")
    _data_dir_arg(listing)
    _bucket_args(listing)
    listing.set_defaults(func=cmd_export_list)


def _invalid_settings(exc: ValidationError) -> str:
    """pydantic's error as a user fixes it: which setting, the value given, what is wrong."""
    lines = []
    section = exc.title.removesuffix("Settings").lower()  # "WebhookSettings" -> "webhook"
    for error in exc.errors(include_url=False):
        where = ".".join([section] * bool(section) + [str(part) for part in error["loc"]])
        value = error.get("input")
        given = f" ({value!r})" if isinstance(value, str | int | float) else ""
        lines.append(f"{where}{given}: {error['msg']}")
    return "invalid setting: " + "; ".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValidationError, SettingsError, OSError) as exc:
        # A setting or a path the user gave is wrong: one line that says which, not a
        # traceback (kept with --verbose, for a bug report).
        if args.verbose:
            raise
        if isinstance(exc, ValidationError):
            message = _invalid_settings(exc)
        elif isinstance(exc, SettingsError):
            message = f"invalid setting: {exc} (lists and tables are JSON, e.g. [0.0, 0.4])"
        else:
            message = exc.strerror or str(exc)
            if exc.filename:
                message = f"{message}: {exc.filename}"
        print(f"callscribe {args.command}: {message}", file=sys.stderr)
        return 1 if isinstance(exc, OSError) else 2


if __name__ == "__main__":
    sys.exit(main())
