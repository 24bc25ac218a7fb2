"""What a task holding calls reports each minute (EMF): live calls, utterances lost to the ASR,
the ASR's waits, the KVS readers' lag; and the EMF lines themselves."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from callscribe import adapters as port_adapters
from callscribe.asr.base import AsrRequest, AsrResult, AsrUnavailableError
from callscribe.aws.adapters.live_connections import LiveConnectionsPublisher
from callscribe.aws.adapters.task_metrics import EmfPublisher, Sample
from callscribe.aws.services.task_load import TWILIO_GATEWAY_METRICS, load_sampler
from callscribe.calls import MessageSequence, Speaker
from callscribe.config import Settings
from callscribe.endpointing import Utterance
from callscribe.ingest import IngestRuntime
from callscribe.live import CallStarted
from callscribe.model import AutotranscribeParams, Namespace
from callscribe.server import LocalRuntime
from callscribe.store.base import CallKey, LiveConnection


class UnreachableAsr:
    """The ASR port with no worker behind it: every utterance fails as a gone worker's does."""

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        raise AsrUnavailableError("ASR worker http://asr.test:8000 is unreachable")

    async def close(self) -> None:
        pass


def as_dict(samples: list[Sample]) -> dict[str, float]:
    return {s.name: s.value for s in samples}


async def test_a_task_reports_its_calls_and_each_lost_utterance_once(tmp_path: Path) -> None:
    runtime = LocalRuntime.build(Settings(data_dir=tmp_path / "data"), asr=UnreachableAsr())
    sample = load_sampler(runtime)
    first = as_dict(sample())
    assert first == {"LiveCalls": 0, "AsrLost": 0, "AsrRefused": 0, "UtteranceWaitP95": 0.0}

    key = CallKey("acme", Namespace.TWILIO, "CAlost")
    speech = Utterance(0, np.zeros(16_000, np.float32))
    for _ in range(2):
        sent = await runtime.pipeline.handle(
            key, Speaker("agent", "A1", "MZ2"), speech, AutotranscribeParams(), MessageSequence()
        )
        assert sent is False
    assert as_dict(sample())["AsrLost"] == 2
    # Counted once: the next report holds only what was lost since.
    assert as_dict(sample())["AsrLost"] == 0
    runtime.store.close()


def test_samples_are_written_as_one_emf_line(capsys: pytest.CaptureFixture[str]) -> None:
    EmfPublisher(TWILIO_GATEWAY_METRICS).publish(
        [Sample("LiveCalls", 3), Sample("UtteranceWaitP95", 120.5, "Milliseconds")]
    )
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    (definition,) = line["_aws"]["CloudWatchMetrics"]
    assert definition["Namespace"] == "CallScribe"
    assert definition["Dimensions"] == [["service"]]
    assert {m["Name"]: m["Unit"] for m in definition["Metrics"]} == {
        "LiveCalls": "Count",
        "UtteranceWaitP95": "Milliseconds",
    }
    assert line["service"] == TWILIO_GATEWAY_METRICS
    assert line["LiveCalls"] in (3, [3], 3.0, [3.0])


class HeldConnections:
    """The Store's live connections, read only once the test lets the posting thread go."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def live_connections(self, tenant: str, now: float) -> list[LiveConnection]:
        self.release.wait(10)
        return [LiveConnection("viewer-1", tenant, None, now + 3600)]


class Posts:
    """post_to_connection only (what the publisher calls): the first ``failing`` fail."""

    class exceptions:  # noqa: N801 (botocore's attribute name)
        GoneException = type("GoneException", (Exception,), {})

    def __init__(self, failing: int) -> None:
        self.failing = failing

    def post_to_connection(self, ConnectionId: str, Data: bytes) -> None:  # noqa: N803
        if self.failing:
            self.failing -= 1
            raise RuntimeError("TooManyRequestsException")


def test_live_events_the_viewers_did_not_get_are_reported_once(tmp_path: Path) -> None:
    """A task with the live event stream (AWS): events dropped for a full backlog and posts
    that failed count as ``LiveEventsDropped``, each in one report only."""
    connections = HeldConnections()
    publisher = LiveConnectionsPublisher(
        connections,  # type: ignore[arg-type]
        Posts(failing=1),
        max_backlog=2,
    )
    settings = Settings(data_dir=tmp_path / "data")
    composed = dataclasses.replace(port_adapters.local(settings), live=publisher)
    runtime = IngestRuntime.compose(settings, composed, ingests=[], owner="t", asr=UnreachableAsr())
    sample = load_sampler(runtime)
    assert as_dict(sample())["LiveEventsDropped"] == 0

    for n in range(5):  # the thread holds the first; the backlog takes two; two are dropped
        publisher.publish(CallStarted("acme", "twilio", f"CA{n}", 0.0))
        if n == 0:
            while publisher.pending():
                time.sleep(0.01)
    connections.release.set()
    publisher.close()
    report = as_dict(sample())
    assert report["LiveEventsDropped"] == 2 + 1  # two dropped, one post failed
    assert report["LiveEventsPosted"] == 2
    assert as_dict(sample())["LiveEventsDropped"] == 0
    runtime.store.close()
