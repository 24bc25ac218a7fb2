"""The SIPREC recorder task of the AWS deployment (a Fargate service behind an internal NLB).

SBCs reach it over the customer's private path (VPN, Transit Gateway): new INVITEs and OPTIONS
pings come through the Network Load Balancer on 5070 (UDP and TCP); the SIP answer's Contact and
SDP carry this task's own private address, so ACK, re-INVITE, BYE and the RTP of a call go
straight to the task that answered it. One process:
- SIP on ``CALLSCRIBE_SIPREC_PORT`` (5070), RTP on ``CALLSCRIBE_SIPREC_RTP_PORTS``;
- ``CALLSCRIBE_PORT`` (8080): ``/healthz`` (liveness: the ECS container health check and the
  NLB's, since ECS replaces a task its load balancer finds unhealthy) and ``/readyz`` (503
  while draining or full: for operators; a full task refuses INVITEs itself);
- ``CALLSCRIBE_CONTROL_PORT`` (8081): the signed control endpoint the API Lambda calls to start
  and stop a call's transcription (the call's owner in DynamoDB is this task's control URL).

While it holds calls the task is protected from scale-in. Once its service rolls out a new
deployment it takes no new calls and leaves the NLB's target group (so SBCs' flows pinned to it
move on); on SIGTERM it takes no new calls either, and waits up to
``CALLSCRIBE_SIPREC_DRAIN_TIMEOUT_S`` for its calls to end before it completes the rest and
delivers their last utterances.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from starlette.types import ASGIApp

from callscribe.asr.base import AsrEngine
from callscribe.aws.adapters.target_group import leave_target_group
from callscribe.aws.services.ingest_task import (
    TaskJobs,
    abandoned_call_sweep,
    build_runtime,
    ingest_task_app,
    run_task_service,
    serve_on_two_ports,
    task_metadata,
    task_private_ip,
)
from callscribe.aws.services.task_load import SIPREC_RECORDER_METRICS
from callscribe.aws.settings import AwsSettings
from callscribe.config import Settings
from callscribe.control_http import create_control_app
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.server import healthz_route, readyz_route

log = logging.getLogger(__name__)


def with_advertised_address(settings: Settings) -> Settings:
    """The address SBCs must send to: as configured, else (in ECS) this task's private IP,
    the one the customer's private path routes to. Outside ECS the recorder chooses per SBC
    (the local address that routes to it)."""
    if settings.siprec.advertised_address:
        return settings
    if task_metadata() is None:
        return settings
    siprec = settings.siprec.model_copy(update={"advertised_address": task_private_ip()})
    return settings.model_copy(update={"siprec": siprec})


def create_recorder_app(
    runtime: IngestRuntime,
    control_secret: str,
    control_port: int,
    jobs: TaskJobs | None = None,
) -> ASGIApp:
    return ingest_task_app(
        runtime,
        control_port,
        create_control_app(runtime.registry, control_secret),
        [healthz_route(runtime), readyz_route(runtime)],
        jobs,
    )


async def serve(
    aws: AwsSettings,
    settings: Settings,
    asr: AsrEngine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    settings = with_advertised_address(settings)
    runtime, control_secret = build_runtime(aws, settings, Ingest.SIPREC, asr)
    jobs = TaskJobs.in_ecs(
        aws,
        runtime,
        sweep=abandoned_call_sweep(aws, settings, runtime),
        metrics_service=SIPREC_RECORDER_METRICS,
    )
    if aws.siprec_target_group_arn and jobs.deployment is not None:
        target_group, address = aws.siprec_target_group_arn, task_private_ip()

        async def leave_the_load_balancer() -> bool:
            return await leave_target_group(target_group, address, settings.siprec.port)

        jobs = replace(jobs, when_replaced=leave_the_load_balancer)
    app = create_recorder_app(runtime, control_secret, aws.control_port, jobs)
    siprec = settings.siprec
    banner = (
        f"CallScribe SIPREC recorder: SIP on :{siprec.port} (UDP and TCP), RTP "
        f"{siprec.rtp_ports}, advertising {siprec.advertised_address or 'the routed address'}; "
        f"/healthz and /readyz on :{aws.port}, control on :{aws.control_port}, "
        f"owner {runtime.owner}"
    )

    async def drain() -> None:
        await runtime.drain(siprec.drain_timeout_s)

    await serve_on_two_ports(app, aws, settings, banner, ready, drain)


def main(argv: list[str] | None = None) -> int:
    return run_task_service(serve)
