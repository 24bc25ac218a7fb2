"""The ``callscribe`` command: serve, keys, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from callscribe.config import Settings, SiprecSettings, WebhookSettings, default_data_dir


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "public_gateway_url"):
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


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where the SQLite store and secrets live (default {default_data_dir()})",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from callscribe.server import serve

    settings = _settings(args)
    if (settings.webhook.secret_name is None) != (settings.webhook.secret is None):
        print("--webhook-secret-name and --webhook-secret go together", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: let that
    # end the process with status 0, as a requested stop is not a failure.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from callscribe.store.sqlite import SqliteStore

    return SqliteStore(_settings(args).store_path)


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
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callscribe", description="Real-time contact-centre call transcription."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API, the Twilio gateway and ASR locally")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any)")
    _data_dir_arg(serve)
    serve.add_argument("--public-gateway-url", help="WebSocket base Twilio reaches, wss://…")
    serve.add_argument("--webhook-url", help="where each transcript is POSTed")
    serve.add_argument("--webhook-secret-name", help="name of the secret header/parameter")
    serve.add_argument("--webhook-secret", help="the secret's value")
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
    _data_dir_arg(create)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys (never secrets)")
    listing.add_argument("--tenant")
    _data_dir_arg(listing)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("api_id")
    _data_dir_arg(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)

    demo = commands.add_parser("demo", help="stream a sample two-party call and show transcripts")
    demo.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    demo.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser("bench", help="simultaneous real-time calls: latency and RTF")
    bench.add_argument("--calls", default="1,2,4", help="comma-separated numbers of calls")
    bench.add_argument("--p95-bound-ms", type=float, default=1500.0)
    bench.add_argument("--seconds", type=float, default=None, help="play only this much")
    bench.add_argument("--end-silence-ms", type=int, default=None)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
