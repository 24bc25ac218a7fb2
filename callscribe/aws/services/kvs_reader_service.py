"""The KVS reader task of the AWS deployment (a Fargate service without a load balancer).

It holds the deployment's Amazon Connect calls: the API Lambda opens each one here through the
signed control endpoint (``/control/open``, reached through the service's private DNS name), the
task that opens it records its own control URL as the call's owner, and later stops and starts
come to it directly. Its task role is the identity that tenants' Connect roles trust (see
``infra/kvs_reader.py`` and ``infra/customer_account.py``); each GetMedia request signs with
the assumed role of the call's tenant.

One process, one uvicorn server on two ports: ``CALLSCRIBE_PORT`` (8080) serves ``/healthz``
for the ECS health check (liveness; with a tenant's API key also readers, millis-behind-now,
ASR and delivery counters, and that tenant's calls);
``CALLSCRIBE_CONTROL_PORT`` (8081) is the control endpoint, open to the API Lambda only.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.types import ASGIApp

from callscribe.asr.base import AsrEngine
from callscribe.aws.services.gateway_service import (
    RouteByPort,
    build_runtime,
    run_task_service,
    serve_on_two_ports,
)
from callscribe.aws.settings import AwsSettings
from callscribe.config import Settings
from callscribe.control_http import create_control_app
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.server import healthz_route
from callscribe.serving import lifespan

log = logging.getLogger(__name__)


def create_reader_app(runtime: IngestRuntime, control_secret: str, control_port: int) -> ASGIApp:
    health_app = Starlette(
        routes=[healthz_route(runtime)], lifespan=lifespan(runtime.start, runtime.shutdown)
    )
    control_app = create_control_app(runtime.registry, control_secret, opener=runtime.connect)
    return RouteByPort(control_port, control_app, health_app)


async def serve(
    aws: AwsSettings,
    settings: Settings,
    asr: AsrEngine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    runtime, control_secret = build_runtime(aws, settings, Ingest.AMAZON_CONNECT, asr)
    app = create_reader_app(runtime, control_secret, aws.control_port)
    banner = (
        f"CallScribe KVS reader: /healthz on :{aws.port}, control on :{aws.control_port}, "
        f"owner {runtime.owner}"
    )
    await serve_on_two_ports(app, aws, settings, banner, ready)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
