"""What the AWS deployment's tasks that hold calls share: the Twilio gateway, the KVS reader and
the SIPREC recorder.

Each is one process, one uvicorn server on two ports: ``CALLSCRIBE_PORT`` (8080: its ingest's
own routes, ``/healthz`` for ECS's container health check and ``/readyz``) and
``CALLSCRIBE_CONTROL_PORT`` (8081: the signed private control endpoint). Each composes the
ingest core on the AWS adapters with the one ingest it serves and records its control URL
(``http://<task's private IP>:8081``) as the owner of its calls.

Beside serving, in ECS, each task:
- protects itself from scale-in while it holds calls (``ScaleInGuard``, through the ECS agent);
- looks every 30 s whether its service has rolled out a new deployment; once its own is
  replaced it stops taking calls (``DeploymentCheck``), so its calls end or move, its
  protection goes and the deployment can stop it;
- on SIGTERM drains before it shuts down (``DrainingServer``): no new calls, then up to its
  drain timeout for the live ones to end (Amazon Connect calls are handed to other readers).
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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from callscribe import adapters
from callscribe.asr.base import AsrEngine
from callscribe.aws.adapters.ecs_tasks import (
    AbandonedCallSweep,
    DeploymentCheck,
    drain_when_superseded,
)
from callscribe.aws.adapters.task_metrics import EmfPublisher, publish_periodically
from callscribe.aws.adapters.task_protection import ScaleInGuard, TaskProtection
from callscribe.aws.services.task_load import load_sampler
from callscribe.aws.settings import CONTROL_SECRET, AwsSettings
from callscribe.config import Settings
from callscribe.ingest import Ingest, IngestRuntime
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

    def __init__(self, control_port: int, control_app: ASGIApp, service_app: ASGIApp) -> None:
        self.control_port = control_port
        self.control_app = control_app
        self.service_app = service_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.service_app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        app = self.control_app if server[1] == self.control_port else self.service_app
        await app(scope, receive, send)


def build_runtime(
    aws: AwsSettings, settings: Settings, ingest: Ingest, asr: AsrEngine | None = None
) -> tuple[IngestRuntime, str]:
    """An AWS task's runtime, serving the one ``ingest`` it exists for, on the AWS adapters;
    and the control secret its private endpoint checks."""
    ports = adapters.aws(settings, aws)
    control_secret = ports.secrets.get(CONTROL_SECRET)
    if not control_secret:
        raise RuntimeError("the control secret is missing from Secrets Manager")
    owner = aws.control_url or f"http://{task_private_ip()}:{aws.control_port}"
    runtime = IngestRuntime.compose(settings, ports, ingests=[ingest], owner=owner, asr=asr)
    return runtime, control_secret


def ecs_cluster(aws: AwsSettings) -> str | None:
    """The cluster this task runs in: as configured, else from the task metadata (None
    outside ECS)."""
    if aws.ecs_cluster is not None:
        return aws.ecs_cluster
    try:
        return (task_metadata() or {}).get("Cluster")
    except (OSError, ValueError) as exc:
        log.warning("ECS task metadata unavailable (%s)", exc)
        return None


def abandoned_call_sweep(
    aws: AwsSettings, settings: Settings, runtime: IngestRuntime
) -> AbandonedCallSweep | None:
    """The sweep this task runs as it starts (None outside ECS, where no cluster is known).
    Made before the task serves, so its start time precedes every call it will own."""
    cluster = ecs_cluster(aws)
    if not cluster:
        return None
    return AbandonedCallSweep(
        store=runtime.store,
        cluster=cluster,
        own_owner=runtime.owner,
        started_at=time.time(),
        retention_s=settings.message_retention_days * adapters.DAY_S,
    )


async def run_sweep(sweep: AbandonedCallSweep) -> None:
    try:
        await asyncio.to_thread(sweep.run)
    except Exception:  # a failed sweep leaves calls for the next task's; it never stops this one
        log.exception("abandoned-call sweep failed")


def scale_in_guard(runtime: IngestRuntime) -> ScaleInGuard | None:
    """Protection from scale-in while calls are live; None outside ECS (no agent endpoint)."""
    agent_uri = os.environ.get("ECS_AGENT_URI")  # set by ECS in every task
    if not agent_uri:
        return None
    return ScaleInGuard(TaskProtection(agent_uri), lambda: len(runtime.registry))


def deployment_check(aws: AwsSettings) -> DeploymentCheck | None:
    """This task's deployment, to drain when the service replaces it; None outside ECS."""
    try:
        task = task_metadata() or {}
    except (OSError, ValueError) as exc:
        log.warning("ECS task metadata unavailable (%s): no deployment check", exc)
        return None
    cluster = aws.ecs_cluster or task.get("Cluster")
    task_arn = task.get("TaskARN")
    if not cluster or not task_arn:
        return None
    return DeploymentCheck(cluster, task_arn)


@dataclass(frozen=True)
class TaskJobs:
    """What a task runs while it serves (each None outside ECS, or where not wanted)."""

    sweep: AbandonedCallSweep | None = None
    guard: ScaleInGuard | None = None
    deployment: DeploymentCheck | None = None
    # What else a task does once it stops taking calls because its deployment was replaced.
    when_replaced: Callable[[], Awaitable[object]] | None = None
    # The ``service`` dimension of its load metrics (task_load), published every
    # ``metrics_interval_s``; None: none.
    metrics_service: str | None = None
    metrics_interval_s: float = 60.0

    @classmethod
    def in_ecs(
        cls,
        aws: AwsSettings,
        runtime: IngestRuntime,
        sweep: AbandonedCallSweep | None = None,
        metrics_service: str | None = None,
    ) -> TaskJobs:
        """Scale-in protection and the deployment check, where ECS provides them; the load
        metrics unless ``CALLSCRIBE_METRICS_INTERVAL_S`` is 0."""
        return cls(
            sweep=sweep,
            guard=scale_in_guard(runtime),
            deployment=deployment_check(aws),
            metrics_service=metrics_service if aws.metrics_interval_s > 0 else None,
            metrics_interval_s=aws.metrics_interval_s,
        )

    def coroutines(self, runtime: IngestRuntime) -> list[Coroutine[Any, Any, None]]:
        jobs: list[Coroutine[Any, Any, None]] = []
        if self.sweep is not None:
            # In the background: the task serves at once; the sweep only completes calls that
            # no live task holds.
            jobs.append(run_sweep(self.sweep))
        if self.guard is not None:
            jobs.append(self.guard.run())
        if self.deployment is not None:
            jobs.append(self._drain_when_replaced(self.deployment, runtime))
        if self.metrics_service is not None:
            jobs.append(
                publish_periodically(
                    EmfPublisher(self.metrics_service),
                    load_sampler(runtime),
                    self.metrics_interval_s,
                )
            )
        return jobs

    async def _drain_when_replaced(self, check: DeploymentCheck, runtime: IngestRuntime) -> None:
        await drain_when_superseded(check, runtime.stop_taking_calls)
        if self.when_replaced is not None:
            await self.when_replaced()


def ingest_task_app(
    runtime: IngestRuntime,
    control_port: int,
    control_app: ASGIApp,
    routes: Sequence[BaseRoute],
    jobs: TaskJobs | None = None,
    start: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The task's app: ``routes`` on the service port with the runtime's lifespan (``start``,
    by default the runtime's own, then ``jobs`` while it serves), ``control_app`` on the
    control port."""
    jobs = jobs or TaskJobs()
    service_app = Starlette(
        routes=list(routes),
        lifespan=lifespan(
            start or runtime.start, runtime.shutdown, background=lambda: jobs.coroutines(runtime)
        ),
    )
    return RouteByPort(control_port, control_app, service_app)


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
