"""Shared by the Amazon Connect tests: the real KVS fixtures, the sample call as Connect PCM,
and Connect-shaped streams made from it."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from callscribe.audio import ulaw_to_pcm16
from callscribe.testing.connect_stream import (
    SimulatedFragment,
    SimulatedKvsStream,
    connect_fragments,
    two_party_pcm,
)
from callscribe.testing.simulate import load_sample_call

# Read-only real GetMedia output, beside the repository (../shared/fixtures/kvs).
KVS_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kvs"
KVS_FIXTURE_FILES = (
    "output_get_media.mkv",
    "output_get_media_sparse_fragments.mkv",
    "test_mixed_tags.mkv",
    "empty-mkv-with-tags.mkv",
    "test_tags_empty_cluster.mkv",
)
CONTACT_ID = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
OTHER_CONTACT_ID = "0c6a1d2e-9b8f-4d3c-a7e6-5f4e3d2c1b0a"


def kvs_fixture(name: str) -> bytes:
    path = KVS_FIXTURES / name
    if not path.is_file():
        pytest.fail(
            f"KVS fixture {path} is missing: the tests read the shared fixtures from "
            "../shared/fixtures/kvs beside the repository"
        )
    return path.read_bytes()


def ffprobe() -> str:
    path = shutil.which("ffprobe")
    if path is None:
        pytest.fail("ffprobe is missing: install Debian's ffmpeg (scripts/test.sh does)")
    return path


def ffprobe_output(data: bytes, tmp_path: Path, *args: str) -> str:
    source = tmp_path / "probe.mkv"
    source.write_bytes(data)
    result = subprocess.run(
        [ffprobe(), "-v", "error", *args, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


@functools.cache
def sample_call_pcm() -> tuple[np.ndarray, np.ndarray]:
    """(customer, agent) of the bundled sample call as 8 kHz int16, equal lengths."""
    call = load_sample_call()
    return two_party_pcm(
        ulaw_to_pcm16(call.tracks["inbound"]), ulaw_to_pcm16(call.tracks["outbound"])
    )


def sample_fragments(**kwargs: object) -> list[SimulatedFragment]:
    customer, agent = sample_call_pcm()
    kwargs.setdefault("contact_id", CONTACT_ID)
    return connect_fragments(customer, agent, **kwargs)  # type: ignore[arg-type]


def tone_fragments(
    seconds: float, *, contact_id: str | None = CONTACT_ID, seed: int = 1, **kwargs: object
) -> list[SimulatedFragment]:
    """Short fragments of distinct random audio per track (every sample identifiable)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    customer = rng.integers(-20000, 20000, n, dtype=np.int16)
    agent = rng.integers(-20000, 20000, n, dtype=np.int16)
    return connect_fragments(customer, agent, contact_id=contact_id, **kwargs)  # type: ignore[arg-type]


def get_media_bytes(fragments: list[SimulatedFragment]) -> bytes:
    """Fragments as one GetMedia response (each with its trailer)."""
    return b"".join(
        f.encode((1000 * (len(fragments) - i), f.number)) for i, f in enumerate(fragments)
    )


def fragment_pcm(fragments: list[SimulatedFragment], track: int) -> np.ndarray:
    blocks = [
        np.frombuffer(pcm, dtype="<i2")
        for f in fragments
        for _, pcm in (f.audio.customer if track == 0 else f.audio.agent)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)


# AWS: moto for STS and Kinesis Video Streams, botocore's Stubber for GetMedia -------------------

REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"
READER_ROLE_ARN = f"arn:aws:iam::{MOTO_ACCOUNT}:role/CallScribeConnectMediaReader"
EXTERNAL_ID = "acme-7Hq2-callscribe"


class StubbedKvs:
    """The media sources' client factory for tests: real (moto-backed) STS and Kinesis Video
    clients, and a Stubber on each Kinesis Video Media client that answers GetMedia with the
    simulated stream, as a streaming body. Records what the reader asked for."""

    def __init__(
        self,
        stream: SimulatedKvsStream,
        stream_arn: str,
        drops: list[int] | None = None,
        more: dict[str, SimulatedKvsStream] | None = None,
    ) -> None:
        self.stream = stream
        self.stream_arn = stream_arn
        self.streams = {stream_arn: stream, **(more or {})}
        self.drops = list(drops or [])
        self.get_media: list[dict[str, str]] = []
        self.assume_role: list[dict[str, object]] = []
        self.data_endpoint: list[dict[str, object]] = []

    def __call__(self, service: str, *, region: str, credentials=None, **kwargs):
        from botocore.response import StreamingBody
        from botocore.stub import Stubber

        from callscribe.connect.kvs import boto3_client

        client = boto3_client(service, region=region, credentials=credentials, **kwargs)
        events = client.meta.events
        if service == "sts":
            events.register(
                "provide-client-params.sts.AssumeRole",
                lambda params, **_: self.assume_role.append(dict(params)),
            )
        elif service == "kinesisvideo":
            events.register(
                "provide-client-params.kinesis-video.GetDataEndpoint",
                lambda params, **_: self.data_endpoint.append(dict(params)),
            )
        elif service == "kinesis-video-media":
            stubber = Stubber(client)

            def answer(params, **_):
                # provide-client-params comes before the Stubber checks and answers the call.
                selector = dict(params["StartSelector"])
                self.get_media.append(selector)
                drop = self.drops.pop(0) if self.drops else None
                stream_arn = params["StreamARN"]
                body = self.streams[stream_arn].get_media(selector, drop_after_bytes=drop)
                stubber.add_response(
                    "get_media",
                    {"ContentType": "video/webm", "Payload": StreamingBody(body, None)},
                    expected_params={"StreamARN": stream_arn, "StartSelector": selector},
                )

            events.register("provide-client-params.kinesis-video-media.GetMedia", answer)
            stubber.activate()
        return client


def create_kvs_stream(name: str = "connect-acme-contact-d111f871") -> str:
    import boto3

    client = boto3.client("kinesisvideo", region_name=REGION)
    return client.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="audio/L16")[
        "StreamARN"
    ]
