"""The Twilio gateway task of the AWS deployment (a Fargate service behind the ALB).

One process, one uvicorn server listening on two ports (see ``ingest_task``):
- ``CALLSCRIBE_PORT`` (8080): Twilio's WebSockets, ``/healthz`` (liveness: ECS's container
  health check) and ``/readyz`` (the ALB target group's health check: 503 while draining, so
  new streams go to other tasks);
- ``CALLSCRIBE_CONTROL_PORT`` (8081): the signed private control endpoint the API Lambda calls
  (the security group admits only the Lambda).
Calls are recorded in DynamoDB with this task's control URL as owner; transcripts go to the SQS
FIFO delivery queue (a copy to EventBridge); recordings (``audioRecordingAllowed``) go to the S3
bucket; ASR runs wherever ``CALLSCRIBE_ASR_URL`` points (the GPU workers) or in-process.

A Twilio media stream lives on its one WebSocket, so a call cannot move to another task: a
draining gateway keeps its streams to their end. While it holds calls the task is protected
from scale-in. Once its deployment is replaced it reports itself unready, and refuses new
streams after ``CALLSCRIBE_TWILIO_UNREADY_GRACE_S`` (the ALB's health check takes that long to
stop sending them); ECS then replaces it through the ALB's connection draining, which waits
for its streams. On SIGTERM (ECS deregistered it from the ALB before) it refuses new streams at
once and gives its live ones up to ``CALLSCRIBE_TWILIO_DRAIN_TIMEOUT_S`` to end.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp

from callscribe.asr.base import AsrEngine
from callscribe.aws.services.ingest_task import (
    TaskJobs,
    abandoned_call_sweep,
    build_runtime,
    ingest_task_app,
    run_task_service,
    serve_on_two_ports,
)
from callscribe.aws.services.task_load import TWILIO_GATEWAY_METRICS
from callscribe.aws.settings import AwsSettings
from callscribe.config import Settings
from callscribe.control_http import create_control_app
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.server import gateway_routes

log = logging.getLogger(__name__)


def create_gateway_app(
    runtime: IngestRuntime,
    control_secret: str,
    control_port: int,
    jobs: TaskJobs | None = None,
) -> ASGIApp:
    async def start() -> None:
        try:
            await runtime.start()
        except Exception:  # a worker still starting must not keep the gateway down
            log.exception("ASR warm-up failed; continuing")

    return ingest_task_app(
        runtime,
        control_port,
        create_control_app(runtime.registry, control_secret),
        gateway_routes(runtime),
        jobs,
        start=start,
    )


async def serve(
    aws: AwsSettings,
    settings: Settings,
    asr: AsrEngine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    runtime, control_secret = build_runtime(aws, settings, Ingest.TWILIO, asr)
    jobs = TaskJobs.in_ecs(
        aws,
        runtime,
        sweep=abandoned_call_sweep(aws, settings, runtime),
        metrics_service=TWILIO_GATEWAY_METRICS,
    )
    app = create_gateway_app(runtime, control_secret, aws.control_port, jobs)
    banner = (
        f"CallScribe gateway on :{aws.port} (Twilio media, /healthz, /readyz), control on "
        f":{aws.control_port}, owner {runtime.owner}"
    )

    async def drain() -> None:
        await runtime.drain(settings.twilio.drain_timeout_s)

    await serve_on_two_ports(app, aws, settings, banner, ready, drain)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
