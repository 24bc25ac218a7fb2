"""The KVS reader task of the AWS deployment (a Fargate service without a load balancer).

It holds the deployment's Amazon Connect calls: the API Lambda opens each one here through the
signed control endpoint (``/control/open``, on one of the tasks behind the service's private
DNS name that takes new calls), the task that opens it records its own control URL as the
call's owner, and later stops and starts come to it directly. Its task role is the identity
that tenants' Connect roles trust (see ``infra/kvs_reader.py`` and
``infra/customer_account.py``); each GetMedia request signs with the assumed role of the call's
tenant.

One process, one uvicorn server on two ports: ``CALLSCRIBE_PORT`` (8080) serves ``/healthz``
for the ECS health check (liveness; with a tenant's API key also readers, millis-behind-now,
ASR and delivery counters, and that tenant's calls) and ``/readyz`` (503 while draining);
``CALLSCRIBE_CONTROL_PORT`` (8081) is the control endpoint, open to the API Lambda and to the
other readers.

A call's media waits in Kinesis Video Streams, so a stopping reader does not end its calls:
once its deployment is replaced, or on SIGTERM, it takes no new call (``open`` and ``resume``
answer 503, and the API asks another task) and hands each call to another reader at
``CALLSCRIBE_KVS_READER_URL`` (``ready``, then ``resume``: see ``connect/ingest.py``). Calls no
reader takes stay and end here; after SIGTERM they get ``CALLSCRIBE_CONNECT_DRAIN_TIMEOUT_S``.
While it holds calls the task is protected from scale-in.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp

from callscribe.asr.base import AsrEngine
from callscribe.aws.services.ingest_task import (
    TaskJobs,
    build_runtime,
    ingest_task_app,
    run_task_service,
    serve_on_two_ports,
)
from callscribe.aws.services.task_load import KVS_READER_METRICS
from callscribe.aws.settings import AwsSettings
from callscribe.config import Settings
from callscribe.control_http import HttpCallHandover, create_control_app
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.server import healthz_route, readyz_route

log = logging.getLogger(__name__)


def create_reader_app(
    runtime: IngestRuntime,
    control_secret: str,
    control_port: int,
    jobs: TaskJobs | None = None,
) -> ASGIApp:
    connect = runtime.connect
    control_app = create_control_app(
        runtime.registry, control_secret, opener=connect, receiver=connect
    )
    return ingest_task_app(
        runtime, control_port, control_app, [healthz_route(runtime), readyz_route(runtime)], jobs
    )


def hand_calls_to_peers(runtime: IngestRuntime, control_secret: str, readers_url: str) -> None:
    """A draining reader gives its calls to the other tasks behind ``readers_url``."""
    assert runtime.connect is not None
    runtime.connect.handover = HttpCallHandover(control_secret, readers_url, runtime.owner)


async def serve(
    aws: AwsSettings,
    settings: Settings,
    asr: AsrEngine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    runtime, control_secret = build_runtime(aws, settings, Ingest.AMAZON_CONNECT, asr)
    if aws.kvs_reader_url:
        hand_calls_to_peers(runtime, control_secret, aws.kvs_reader_url)
    else:
        log.warning("no CALLSCRIBE_KVS_READER_URL: a stopping reader completes its calls")
    app = create_reader_app(
        runtime,
        control_secret,
        aws.control_port,
        TaskJobs.in_ecs(aws, runtime, metrics_service=KVS_READER_METRICS),
    )
    banner = (
        f"CallScribe KVS reader: /healthz and /readyz on :{aws.port}, control on "
        f":{aws.control_port}, owner {runtime.owner}"
    )

    async def drain() -> None:
        await runtime.drain(settings.connect.drain_timeout_s)

    await serve_on_two_ports(app, aws, settings, banner, ready, drain)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
