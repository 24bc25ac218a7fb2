"""The Twilio gateway task of the AWS deployment (a Fargate service behind the ALB).

One process, one uvicorn server listening on two ports:
- ``CALLSCRIBE_PORT`` (8080): Twilio's WebSockets and ``/healthz``, behind the ALB;
- ``CALLSCRIBE_CONTROL_PORT`` (8081): the signed private control endpoint the API Lambda calls
  (the security group admits only the Lambda).
Calls are recorded in DynamoDB with this task's control URL as owner; transcripts go out on
EventBridge; recordings (``audioRecordingAllowed``) go to the S3 bucket; ASR runs wherever
``CALLSCRIBE_ASR_URL`` points (the GPU workers) or in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import urllib.request
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from callscribe.asr.base import AsrEngine
from callscribe.aws.dynamodb_store import DynamoStore
from callscribe.aws.ecs_tasks import AbandonedCallSweep
from callscribe.aws.eventbridge_bus import EventBridgeBus
from callscribe.aws.outputs import s3_blob_store, s3_recordings
from callscribe.aws.secrets_manager import SecretsManagerSecrets
from callscribe.aws.settings import CONTROL_SECRET, AwsSettings
from callscribe.config import Settings
from callscribe.control_http import create_control_app
from callscribe.secrets import TOKEN_SIGNING_KEY
from callscribe.server import (
    LocalRuntime,
    add_gateway_routes,
    exit_cleanly_on_sigterm,
    uvicorn_config,
)

log = logging.getLogger(__name__)

DAY_S = 86_400


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
    aws: AwsSettings, settings: Settings, asr: AsrEngine | None = None
) -> tuple[LocalRuntime, str]:
    """The ingest runtime of an AWS task (a Twilio gateway or a KVS reader) on the AWS
    adapters, and the control secret its private endpoint checks."""
    if not aws.event_bus_name:
        raise RuntimeError("CALLSCRIBE_EVENT_BUS_NAME must name the transcript event bus")
    secrets = SecretsManagerSecrets(
        {TOKEN_SIGNING_KEY: aws.token_secret_arn, CONTROL_SECRET: aws.control_secret_arn}
    )
    control_secret = secrets.get(CONTROL_SECRET)
    if not control_secret:
        raise RuntimeError("the control secret is missing from Secrets Manager")
    owner = aws.control_url or f"http://{task_private_ip()}:{aws.control_port}"
    # SIPREC has a service (and network load balancer) of its own, never these tasks.
    settings.siprec.enabled = False
    blobs = s3_blob_store(settings)
    runtime = LocalRuntime.assemble(
        settings,
        store=DynamoStore(aws.table_name),
        secrets=secrets,
        bus=EventBridgeBus(aws.event_bus_name),
        asr=asr,
        owner=owner,
        # Calls started with audioRecordingAllowed leave a WAV in the bucket when they end.
        recordings=s3_recordings(settings, blobs),
    )
    runtime.blobs = blobs
    return runtime, control_secret


def abandoned_call_sweep(
    aws: AwsSettings, settings: Settings, runtime: LocalRuntime
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
        own_owner=runtime.gateway.services.owner,
        started_at=time.time(),
        retention_s=settings.message_retention_days * DAY_S,
    )


def create_gateway_app(
    runtime: LocalRuntime,
    control_secret: str,
    control_port: int,
    sweep: AbandonedCallSweep | None = None,
) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await runtime.warm_up()
        except Exception:  # a worker still starting must not keep the gateway down
            log.exception("ASR warm-up failed; continuing")
        sweeping = None
        if sweep is not None:
            # In the background: the gateway serves at once; the sweep only completes calls
            # that no live task holds.
            sweeping = asyncio.get_running_loop().create_task(_sweep(sweep))
        yield
        if sweeping is not None:
            sweeping.cancel()
        await runtime.shutdown()

    gateway_app = Starlette(lifespan=lifespan)
    add_gateway_routes(gateway_app, runtime)
    return RouteByPort(control_port, create_control_app(runtime.registry, control_secret), gateway_app)


async def _sweep(sweep: AbandonedCallSweep) -> None:
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
) -> None:
    """One uvicorn server listening on the service port and the control port."""
    sockets = []
    for port in (aws.port, aws.control_port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, port))
        sockets.append(sock)
    server = uvicorn.Server(uvicorn_config(app, settings))  # type: ignore[arg-type]
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(banner, flush=True)
        if ready is not None:
            ready.set()
    await serving


def run_task_service(serve: Callable[[AwsSettings, Settings], Awaitable[None]]) -> int:
    """A container entrypoint's main: settings from the task's environment, clean SIGTERM."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings(host=os.environ.get("CALLSCRIBE_HOST", "0.0.0.0"))
    aws = AwsSettings()
    exit_cleanly_on_sigterm()
    try:
        asyncio.run(serve(aws, settings))
    except KeyboardInterrupt:
        pass
    return 0


async def serve(aws: AwsSettings, settings: Settings, asr: AsrEngine | None = None,
                ready: asyncio.Event | None = None) -> None:
    runtime, control_secret = build_runtime(aws, settings, asr)
    sweep = abandoned_call_sweep(aws, settings, runtime)
    app = create_gateway_app(runtime, control_secret, aws.control_port, sweep)
    banner = (
        f"CallScribe gateway on :{aws.port} (Twilio media, /healthz), control on "
        f":{aws.control_port}, owner {runtime.gateway.services.owner}"
    )
    await serve_on_two_ports(app, aws, settings, banner, ready)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
