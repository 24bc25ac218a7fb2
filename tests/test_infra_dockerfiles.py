"""The Dockerfiles `cdk deploy` builds: parsed here (no Docker runs in tests) and held to the
runtime contract — multi-stage, non-root, health checks, and the entrypoints it names."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.asr import ASR_PORT
from infra.config import DeploymentConfig
from infra.images import (
    API_HANDLER,
    ASR_WORKER_DOCKERFILE,
    INGEST_DOCKERFILE,
    KVS_READER_COMMAND,
    LAMBDA_DOCKERFILE,
    SIPREC_RECORDER_COMMAND,
    TWILIO_GATEWAY_COMMAND,
    WEBHOOK_HANDLER,
)
from infra.ingest import CONTROL_PORT, INGEST_PORT
from infra.siprec import SIP_PORT
from tests.infra_support import REPO_ROOT


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (with defaults) and the stages, comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages and keyword == "ARG":
            arg, _, default = args.partition("=")
            global_args[arg] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


def copied_sources(stage: Stage) -> list[str]:
    sources = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


def docker_context_includes(path: str) -> bool:
    """Whether the root .dockerignore (an allowlist) lets `path` into the build context."""
    included = True
    for pattern in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        top = path.rstrip("/").split("/")[0]
        if fnmatch.fnmatch(path.rstrip("/"), pattern) or fnmatch.fnmatch(top, pattern):
            included = negate
    return included


def json_command(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list), "exec form, so that the process gets SIGTERM directly"
    return command


ALL = [LAMBDA_DOCKERFILE, INGEST_DOCKERFILE, ASR_WORKER_DOCKERFILE]
ASR_WORKER_COMMAND = ("python", "-m", "containers.asr_worker.entrypoint")


def entrypoint_file(command: tuple[str, ...]) -> Path:
    """The module a `python -m <module>` command runs, as a path under the repository."""
    python, flag, module = command
    assert (python, flag) == ("python", "-m")
    return Path(*module.split(".")).with_suffix(".py")


@pytest.mark.parametrize("dockerfile", ALL)
def test_multi_stage_build_installs_the_project_in_a_build_stage(dockerfile):
    _, stages = parse(REPO_ROOT / dockerfile)
    assert len(stages) >= 2
    build = stages[0]
    assert build.name == "build"
    # The services with the aws extra; the Lambda functions with the lambda extra alone.
    extra = "['lambda']" if "lambda" in dockerfile else '".[aws'
    assert any(extra in run for run in build.all("RUN")), f"installs CallScribe with {extra}"
    final = stages[-1]
    assert final.name is None
    assert any("--from=build" in copy for copy in final.all("COPY"))
    assert not final.all("RUN") or all("pip install" not in run for run in final.all("RUN"))


@pytest.mark.parametrize("dockerfile", ALL)
def test_everything_copied_exists_and_is_in_the_build_context(dockerfile):
    _, stages = parse(REPO_ROOT / dockerfile)
    sources = [source for stage in stages for source in copied_sources(stage)]
    assert {"pyproject.toml", "callscribe/"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert docker_context_includes(source), f"{source} is excluded by .dockerignore"
    # The project's metadata names README.md as its readme: building the wheel needs it.
    assert "README.md" in sources


def test_build_context_leaves_out_the_virtualenv_tests_and_cdk_out():
    for path in (".venv", "tests", "cdk.out", "infra", ".git", "callscribe/__pycache__"):
        assert not docker_context_includes(path), path
    for path in ("callscribe", "containers", "functions", "pyproject.toml", "README.md"):
        assert docker_context_includes(path), path


@pytest.mark.parametrize(
    ("dockerfile", "commands", "port"),
    [
        # The image's own CMD runs the first; the stack sets each service's command.
        (
            INGEST_DOCKERFILE,
            [TWILIO_GATEWAY_COMMAND, KVS_READER_COMMAND, SIPREC_RECORDER_COMMAND],
            INGEST_PORT,
        ),
        (ASR_WORKER_DOCKERFILE, [ASR_WORKER_COMMAND], ASR_PORT),
    ],
)
def test_service_images_run_their_entrypoints_as_non_root_with_a_health_check(
    dockerfile, commands, port
):
    _, stages = parse(REPO_ROOT / dockerfile)
    final = stages[-1]
    (cmd,) = final.all("CMD")
    assert json_command(cmd) == list(commands[0])
    # Every entrypoint the image may run is in the containers/ tree it copies.
    assert "containers/" in copied_sources(final)
    for command in commands:
        entrypoint = entrypoint_file(command)
        assert entrypoint.parts[0] == "containers"
        assert (REPO_ROOT / entrypoint).is_file(), entrypoint
    if len(commands) == 1:
        # An image of one service keeps its entrypoint beside its Dockerfile.
        assert entrypoint_file(commands[0]).parent == Path(dockerfile).parent
    (user,) = final.all("USER")
    assert user not in ("root", "0")
    assert any("useradd --system --uid 10001" in run and user in run for run in final.all("RUN"))
    (healthcheck,) = final.all("HEALTHCHECK")
    assert f"http://localhost:{port}/healthz" in healthcheck
    assert str(port) in final.all("EXPOSE")[0].split()


def test_ingest_image_exposes_the_media_health_control_and_sip_ports():
    _, stages = parse(REPO_ROOT / INGEST_DOCKERFILE)
    (expose,) = stages[-1].all("EXPOSE")
    assert expose.split() == [
        str(INGEST_PORT),
        str(CONTROL_PORT),
        f"{SIP_PORT}/tcp",
        f"{SIP_PORT}/udp",
    ]
    env = " ".join(stages[-1].all("ENV"))
    assert f"CALLSCRIBE_PORT={INGEST_PORT}" in env
    assert f"CALLSCRIBE_CONTROL_PORT={CONTROL_PORT}" in env


def test_ingest_image_header_names_the_command_of_every_service_it_runs():
    header = re.findall(r"^#\s+(python -m \S+)", (REPO_ROOT / INGEST_DOCKERFILE).read_text(), re.M)
    assert header == [
        " ".join(command)
        for command in (TWILIO_GATEWAY_COMMAND, KVS_READER_COMMAND, SIPREC_RECORDER_COMMAND)
    ]


def test_asr_image_is_cuda_with_the_model_baked_in_where_the_task_looks():
    global_args, stages = parse(REPO_ROOT / ASR_WORKER_DOCKERFILE)
    base = resolve(stages[-1].base, global_args)
    assert re.fullmatch(r"nvidia/cuda:12\.[0-9.]+-cudnn-runtime-ubuntu2[24]\.04", base), base
    assert all(resolve(stage.base, global_args) in (base, "build") for stage in stages)
    model = next(stage for stage in stages if stage.name == "model")
    default_model = DeploymentConfig.model_fields["asr_model"].default
    assert f"WHISPER_MODEL={default_model}" in model.all("ARG")
    assert any(
        "download_model" in run and "/models/${WHISPER_MODEL}" in run for run in model.all("RUN")
    )
    final = stages[-1]
    assert any(copy.split()[-2:] == ["/models", "/models"] for copy in final.all("COPY"))
    env = " ".join(final.all("ENV"))
    # The same path the task definition sets (DeploymentConfig.asr_model_dir).
    assert "CALLSCRIBE_ASR_MODEL=/models/${WHISPER_MODEL}" in env
    assert "CALLSCRIBE_ASR_DEVICE=cuda" in env and "CALLSCRIBE_ASR_COMPUTE_TYPE=float16" in env
    assert f"CALLSCRIBE_ASR_PORT={ASR_PORT}" in env


def test_lambda_image_holds_the_package_and_the_functions_under_the_task_root():
    global_args, stages = parse(REPO_ROOT / LAMBDA_DOCKERFILE)
    assert all(
        resolve(stage.base, global_args).startswith("public.ecr.aws/lambda/python:3.1")
        for stage in stages
    )
    build, final = stages
    assert any("pip install --target /asset" in run for run in build.all("RUN"))
    copies = final.all("COPY")
    assert "--from=build /asset ${LAMBDA_TASK_ROOT}" in copies
    assert "functions/ ${LAMBDA_TASK_ROOT}/functions/" in copies
    (cmd,) = final.all("CMD")
    assert json_command(cmd) == [API_HANDLER]


def test_lambda_handlers_are_the_contract_strings():
    # "<dir>/<module>.<function>": the runtime imports functions/api.py and calls handler().
    assert API_HANDLER == "functions/api.handler"
    assert WEBHOOK_HANDLER == "functions/webhook.handler"
    for handler in (API_HANDLER, WEBHOOK_HANDLER):
        module, function = handler.rsplit(".", 1)
        assert module.startswith("functions/") and function == "handler"
