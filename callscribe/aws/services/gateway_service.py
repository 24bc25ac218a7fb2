"""The Twilio gateway task of the AWS deployment (a Fargate service behind the ALB).

One process, one uvicorn server listening on two ports:
- ``CALLSCRIBE_PORT`` (8080): Twilio's WebSockets and ``/healthz``, behind the ALB;
- ``CALLSCRIBE_CONTROL_PORT`` (8081): the signed private control endpoint the API Lambda calls
  (the security group admits only the Lambda).
Calls are recorded in DynamoDB with this task's control URL as owner; transcripts go to the SQS
FIFO delivery queue (a copy to EventBridge); recordings (``audioRecordingAllowed``) go to the S3
bucket; ASR runs wherever ``CALLSCRIBE_ASR_URL`` points (the GPU workers) or in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from callscribe import adapters
from callscribe.asr.base import AsrEngine
from callscribe.aws.adapters.ecs_tasks import AbandonedCallSweep
from callscribe.aws.settings import CONTROL_SECRET, AwsSettings
from callscribe.config import Settings
from callscribe.control_http import create_control_app
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.server import add_gateway_routes
from callscribe.serving import (
    exit_cleanly_on_sigterm,
    lifespan,
    serve_until_stopped,
    uvicorn_config,
)

log = logging.getLogger(__name__)


def task_metadata() -> dict[str, Any] | None:
    """This task's ECS task metadata (v4 endpoint); None outside ECS."""
    metadata_uri = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not metadata_uri:
        return None
    with urllib.request.urlopen(f"{metadata_uri}/task", timeout=5) as response:
        return json.load(response)


def task_private_ip() -> str:
    """This task's VPC address, from the ECS task metadata endpoint (awsvpc networking)."""
    task = task_metadata()
    if task is not None:
        for container in task.get("Containers", []):
            for network in container.get("Networks", []):
                addresses = network.get("IPv4Addresses") or []
                if addresses:
                    return addresses[0]
    return socket.gethostbyname(socket.gethostname())


class RouteByPort:
    """One server, two listeners: requests to the control port reach only the control app."""

    def __init__(self, control_port: int, control_app: ASGIApp, gateway_app: ASGIApp) -> None:
        self.control_port = control_port
        self.control_app = control_app
        self.gateway_app = gateway_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.gateway_app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        app = self.control_app if server[1] == self.control_port else self.gateway_app
        await app(scope, receive, send)


def build_runtime(
    aws: AwsSettings, settings: Settings, ingest: Ingest, asr: AsrEngine | None = None
) -> tuple[IngestRuntime, str]:
    """An AWS task's runtime, serving the one ``ingest`` it exists for (SIPREC has a service
    and load balancer of its own), on the AWS adapters; and the control secret its private
    endpoint checks."""
    ports = adapters.aws(settings, aws)
    control_secret = ports.secrets.get(CONTROL_SECRET)
    if not control_secret:
        raise RuntimeError("the control secret is missing from Secrets Manager")
    owner = aws.control_url or f"http://{task_private_ip()}:{aws.control_port}"
    runtime = IngestRuntime.compose(settings, ports, ingests=[ingest], owner=owner, asr=asr)
    return runtime, control_secret


def abandoned_call_sweep(
    aws: AwsSettings, settings: Settings, runtime: IngestRuntime
) -> AbandonedCallSweep | None:
    """The sweep this task runs as it starts (None outside ECS, where no cluster is known).
    Made before the task serves, so its start time precedes every call it will own."""
    cluster = aws.ecs_cluster
    if cluster is None:
        try:
            cluster = (task_metadata() or {}).get("Cluster")
        except (OSError, ValueError) as exc:
            log.warning("ECS task metadata unavailable (%s): no abandoned-call sweep", exc)
    if not cluster:
        return None
    return AbandonedCallSweep(
        store=runtime.store,
        cluster=cluster,
        own_owner=runtime.owner,
        started_at=time.time(),
        retention_s=settings.message_retention_days * adapters.DAY_S,
    )


def create_gateway_app(
    runtime: IngestRuntime,
    control_secret: str,
    control_port: int,
    sweep: AbandonedCallSweep | None = None,
) -> ASGIApp:
    async def start() -> None:
        try:
            await runtime.start()
        except Exception:  # a worker still starting must not keep the gateway down
            log.exception("ASR warm-up failed; continuing")

    def background() -> list[Any]:
        # In the background: the gateway serves at once; the sweep only completes calls that
        # no live task holds.
        return [run_sweep(sweep)] if sweep is not None else []

    gateway_app = Starlette(lifespan=lifespan(start, runtime.shutdown, background=background))
    add_gateway_routes(gateway_app, runtime)
    return RouteByPort(
        control_port, create_control_app(runtime.registry, control_secret), gateway_app
    )


async def run_sweep(sweep: AbandonedCallSweep) -> None:
    try:
        await asyncio.to_thread(sweep.run)
    except Exception:  # a failed sweep leaves calls for the next task's; it never stops this one
        log.exception("abandoned-call sweep failed")


async def serve_on_two_ports(
    app: ASGIApp,
    aws: AwsSettings,
    settings: Settings,
    banner: str,
    ready: asyncio.Event | None = None,
    drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One uvicorn server listening on the service port and the control port; with
    ``drain``, a stop signal runs it before the server shuts down."""
    sockets = []
    for port in (aws.port, aws.control_port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, port))
        sockets.append(sock)

    def announce(_: object) -> None:
        print(banner, flush=True)
        if ready is not None:
            ready.set()

    await serve_until_stopped(
        uvicorn_config(app, settings), sockets, on_started=announce, drain=drain
    )


def task_settings() -> Settings:
    """The task's settings, from its environment; a container listens on every interface
    unless CALLSCRIBE_HOST says otherwise."""
    settings = Settings()
    if "host" not in settings.model_fields_set:
        settings = settings.model_copy(update={"host": "0.0.0.0"})
    return settings


def run_task_service(serve: Callable[[AwsSettings, Settings], Coroutine[Any, Any, None]]) -> int:
    """A container entrypoint's main: settings from the task's environment, clean SIGTERM."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = task_settings()
    aws = AwsSettings()
    exit_cleanly_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(aws, settings))
    return 0


async def serve(
    aws: AwsSettings,
    settings: Settings,
    asr: AsrEngine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    runtime, control_secret = build_runtime(aws, settings, Ingest.TWILIO, asr)
    sweep = abandoned_call_sweep(aws, settings, runtime)
    app = create_gateway_app(runtime, control_secret, aws.control_port, sweep)
    banner = (
        f"CallScribe gateway on :{aws.port} (Twilio media, /healthz), control on "
        f":{aws.control_port}, owner {runtime.owner}"
    )
    await serve_on_two_ports(app, aws, settings, banner, ready)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
