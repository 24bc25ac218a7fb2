"""The container images the stacks deploy, built by `cdk deploy` from this repository.

Every image is built from the repository root (the Dockerfiles copy `callscribe/`, `functions/`,
`containers/`, `pyproject.toml`); the root `.dockerignore` keeps everything else (the virtual
environment, tests, `cdk.out`) out of the build context and out of the staged CDK assets.
Synthesis only fingerprints the files; it never runs Docker.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parent.parent

LAMBDA_DOCKERFILE = "containers/lambda/Dockerfile"
# The Twilio gateway, the KVS reader and the SIPREC recorder: one image (same dependencies, ports
# and health check), each service picking its entrypoint through the command its task definition
# sets.
INGEST_DOCKERFILE = "containers/ingest/Dockerfile"
ASR_WORKER_DOCKERFILE = "containers/asr_worker/Dockerfile"

TWILIO_GATEWAY_COMMAND = ("python", "-m", "containers.twilio_gateway.entrypoint")
KVS_READER_COMMAND = ("python", "-m", "containers.kvs_reader.entrypoint")
SIPREC_RECORDER_COMMAND = ("python", "-m", "containers.siprec_recorder.entrypoint")

# Handlers (module path as Lambda's Python runtime interface client reads it: "dir/module.func").
API_HANDLER = "functions/api.handler"
WEBHOOK_HANDLER = "functions/webhook.handler"
EXPORTER_HANDLER = "functions/exporter.handler"
LIVE_HANDLER = "functions/live.handler"

# The images are built for x86_64: the Lambda functions and Fargate tasks say so explicitly, and
# the GPU instances are x86_64.
PLATFORM = ecr_assets.Platform.LINUX_AMD64


def lambda_code(handler: str) -> lambda_.DockerImageCode:
    """One image for every function (same Dockerfile, same hash: built and pushed once); each
    function picks its handler through the image's CMD."""
    return lambda_.DockerImageCode.from_image_asset(
        str(REPO_ROOT), file=LAMBDA_DOCKERFILE, cmd=[handler], platform=PLATFORM
    )


def ingest_image() -> ecs.ContainerImage:
    """The Twilio gateway's, the KVS reader's and the SIPREC recorder's image (same Dockerfile,
    same hash: built and pushed once); run it with TWILIO_GATEWAY_COMMAND, KVS_READER_COMMAND or
    SIPREC_RECORDER_COMMAND."""
    return ecs.ContainerImage.from_asset(str(REPO_ROOT), file=INGEST_DOCKERFILE, platform=PLATFORM)


def asr_worker_image(whisper_model: str) -> ecs.ContainerImage:
    # The model is baked into the image at build time: workers start without downloading
    # gigabytes from the Hugging Face hub, and every task runs exactly the same weights.
    return ecs.ContainerImage.from_asset(
        str(REPO_ROOT),
        file=ASR_WORKER_DOCKERFILE,
        platform=PLATFORM,
        build_args={"WHISPER_MODEL": whisper_model},
    )
