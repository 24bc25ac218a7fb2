"""The KVS reader service in local mode, through the real HTTP API: STS and Kinesis Video Streams
under moto, GetMedia answered by botocore's Stubber with a simulated live Connect stream (real
MKV bytes in a streaming body). Every sample the readers hand to the call is recorded, so gaps
and duplicates show exactly; transcription is silent here (see test_e2e_connect.py for Whisper).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from moto import mock_aws

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.auth import create_api_key
from callscribe.config import ConnectSettings, Settings
from callscribe.connect.ingest import ConnectCall
from callscribe.connect.kvs import BotoMediaSources
from callscribe.connect.media import AGENT_TRACK, CUSTOMER_TRACK
from callscribe.server import LocalRuntime, create_local_app
from callscribe.serving import uvicorn_config
from callscribe.store.base import CallKey, CallStatus, ConnectAccess
from callscribe.testing.connect_stream import SimulatedKvsStream
from callscribe.testing.simulate import bind_loopback
from tests.connect_support import (
    EXTERNAL_ID,
    OTHER_CONTACT_ID,
    READER_ROLE_ARN,
    REGION,
    StubbedKvs,
    create_kvs_stream,
    fragment_pcm,
    tone_fragments,
)

START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"
MESSAGES = "/conversation/v1/conversation/messages"
GUID = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"


class SilentAsr:
    async def transcribe(self, request: AsrRequest) -> AsrResult:
        return AsrResult(text="")

    async def close(self) -> None:
        pass


@dataclass
class FedAudio:
    """What ConnectCall.audio received: (guid, channel, samples, at_sample) in order."""

    calls: list[tuple[str, str, np.ndarray, int | None]] = field(default_factory=list)

    def of(self, channel: str, guid: str | None = None) -> list[tuple[np.ndarray, int | None]]:
        return [(pcm, at) for g, c, pcm, at in self.calls if c == channel and guid in (None, g)]

    def pcm(self, channel: str, guid: str | None = None) -> np.ndarray:
        chunks = [pcm for pcm, _ in self.of(channel, guid)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def contiguous(self, channel: str, guid: str | None = None) -> bool:
        position = None
        for pcm, at in self.of(channel, guid):
            if position is not None and at != position:
                return False
            position = (at or 0) + len(pcm)
        return True


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> FedAudio:
    record = FedAudio()
    original = ConnectCall.audio

    def audio(
        self: ConnectCall, channel: str, pcm16: np.ndarray, at_sample: int | None = None
    ) -> None:
        record.calls.append((self.key.guid, channel, pcm16.copy(), at_sample))
        original(self, channel, pcm16, at_sample)

    monkeypatch.setattr(ConnectCall, "audio", audio)
    return record


@dataclass
class Server:
    runtime: LocalRuntime
    http: httpx.AsyncClient
    stream_arn: str

    def use(self, kvs: StubbedKvs) -> StubbedKvs:
        assert self.runtime.connect is not None
        self.runtime.connect.sources = BotoMediaSources(
            self.runtime.store, self.runtime.settings.connect, client_factory=kvs
        )
        return kvs

    def start_body(
        self, selector: str = "NOW", fragment: str | None = None, **extra: object
    ) -> dict:
        params: dict[str, object] = {"streamArn": self.stream_arn, "startSelectorType": selector}
        if fragment is not None:
            params["afterFragmentNumber"] = fragment
        return {
            "namespace": "amazonconnect",
            "guid": GUID,
            "customerId": "TT9833237",
            "agentId": "RE223444211993",
            "amazonConnectParams": params,
            **extra,
        }

    async def call_status(self) -> CallStatus | None:
        record = await asyncio.to_thread(
            self.runtime.store.get_call, CallKey("acme", "amazonconnect", GUID)
        )
        return record.status if record else None

    async def wait_for_status(self, status: CallStatus, limit_s: float = 60) -> None:
        deadline = time.monotonic() + limit_s
        while await self.call_status() is not status:
            assert time.monotonic() < deadline, f"call never became {status}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def server(aws: None, tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(
        data_dir=tmp_path / "data",
        connect=ConnectSettings(read_timeout_s=2, retry_backoff_s=0.05, stopped_call_timeout_s=1.5),
    )
    runtime = LocalRuntime.build(settings, asr=SilentAsr())
    runtime.store.put_connect_access(
        ConnectAccess("acme", READER_ROLE_ARN, EXTERNAL_ID, time.time())
    )
    issued = create_api_key(runtime.store, "acme")
    sock = bind_loopback()
    uv = uvicorn.Server(uvicorn_config(create_local_app(runtime), settings))
    task = asyncio.get_running_loop().create_task(uv.serve(sockets=[sock]))
    while not uv.started:
        await asyncio.sleep(0.01)
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
        headers={"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret},
        timeout=60,
    )
    try:
        yield Server(runtime, http, create_kvs_stream())
    finally:
        await http.aclose()
        uv.should_exit = True
        await task


async def test_fragment_number_start_reads_from_that_fragment_and_resumes_after_drops(
    server: Server, fed: FedAudio
) -> None:
    fragments = tone_fragments(6.0, fragment_ms=500)
    # Already produced: the reader catches up at GetMedia's speed, then the drops.
    stream = SimulatedKvsStream(fragments, speed=50)
    kvs = server.use(StubbedKvs(stream, server.stream_arn, drops=[21_000, 47_000, 3]))
    start_at = fragments[2]
    answer = await server.http.post(
        START, json=server.start_body("FRAGMENT_NUMBER", start_at.number)
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()["autotranscribeResponse"]
    assert set(body) == {"customer", "agent"}

    # The stream ends; three GetMedia responses that bring nothing new, and the call is over.
    await server.wait_for_status(CallStatus.COMPLETED)
    expected = fragments[2:]
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(expected, 0))
    assert np.array_equal(fed.pcm(AGENT_TRACK), fragment_pcm(expected, 1))
    assert fed.contiguous(CUSTOMER_TRACK) and fed.contiguous(AGENT_TRACK)

    # The first request starts at the flow's fragment; each later one at the latest fragment
    # read, whose delivered blocks were skipped.
    assert kvs.get_media[0] == {
        "StartSelectorType": "FRAGMENT_NUMBER",
        "AfterFragmentNumber": start_at.number,
    }
    assert len(kvs.get_media) >= 4 + 3
    assert all(s["StartSelectorType"] == "FRAGMENT_NUMBER" for s in kvs.get_media)
    resumed = [
        fragments.index(next(f for f in fragments if f.number == s["AfterFragmentNumber"]))
        for s in kvs.get_media[1:4]
    ]
    assert resumed == sorted(resumed) and resumed[0] > 2
    # Cross-account: the tenant's role, with its external id; the GET_MEDIA endpoint.
    assert kvs.assume_role[0]["RoleArn"] == READER_ROLE_ARN
    assert kvs.assume_role[0]["ExternalId"] == EXTERNAL_ID
    assert len(kvs.assume_role) == 1  # credentials are cached between requests
    assert kvs.data_endpoint[0] == {"StreamARN": server.stream_arn, "APIName": "GET_MEDIA"}

    stats = (await server.http.get("/healthz")).json()["amazonConnect"]
    assert stats["readersOpened"] == 1
    assert stats["readersFinished"] == {"end-of-stream": 1}
    assert stats["millisBehindNow"]["maxEver"] >= 0
    after = await server.http.get(MESSAGES, params={"externalConversationId": GUID})
    assert after.status_code == 200 and after.json()["complete"] is True


async def test_now_start_reads_from_the_fragment_being_produced(
    server: Server, fed: FedAudio
) -> None:
    fragments = tone_fragments(8.0, fragment_ms=500)
    stream = SimulatedKvsStream(fragments, speed=4)  # 4 s of stream a second
    kvs = server.use(StubbedKvs(stream, server.stream_arn))
    await asyncio.sleep(0.3)  # the producer is into the 3rd fragment
    answer = await server.http.post(START, json=server.start_body("NOW"))
    assert answer.status_code == 200, answer.text
    first = stream.requests[0].first_index
    assert first >= 2
    await asyncio.sleep(0.5)
    stopped = await server.http.post(STOP, json={"namespace": "amazonconnect", "guid": GUID})
    assert stopped.status_code == 200, stopped.text
    summary = stopped.json()["autotranscribeResponse"]["customer"]["summary"]
    assert kvs.get_media[0] == {"StartSelectorType": "NOW"}
    # The reader read live, in real time: from the fragment being written, contiguous, and the
    # summary counts exactly what it handed to the call.
    customer = fed.pcm(CUSTOMER_TRACK)
    assert len(customer) > 0
    assert np.array_equal(customer, fragment_pcm(fragments[first:], 0)[: len(customer)])
    assert summary["totalAudioBytes"] == 2 * len(customer)
    assert fed.contiguous(CUSTOMER_TRACK)
    # KVS's own measure of the reader's lag is taken per fragment; the bound is loose (shared
    # CI machines): a reader that could not keep up would drift further behind with every one.
    assert stream.millis_behind_now and max(stream.millis_behind_now) < 10_000
    # Stopped, not ended: a stopped call completes when no start follows in time.
    assert await server.call_status() is CallStatus.STOPPED
    await server.wait_for_status(CallStatus.COMPLETED, limit_s=10)


async def test_a_new_contact_on_the_stream_ends_the_call(server: Server, fed: FedAudio) -> None:
    ours = tone_fragments(2.0, fragment_ms=500, seed=1)
    theirs = tone_fragments(
        2.0,
        fragment_ms=500,
        seed=2,
        contact_id=OTHER_CONTACT_ID,
        first_index=len(ours),
        start_time_ms=ours[-1].end_ms,
    )
    stream = SimulatedKvsStream(ours + theirs, speed=100)
    kvs = server.use(StubbedKvs(stream, server.stream_arn))
    answer = await server.http.post(
        START, json=server.start_body("FRAGMENT_NUMBER", ours[0].number)
    )
    assert answer.status_code == 200, answer.text
    await server.wait_for_status(CallStatus.COMPLETED)
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(ours, 0))
    assert np.array_equal(fed.pcm(AGENT_TRACK), fragment_pcm(ours, 1))
    assert len(kvs.get_media) == 1  # stopped at once, no reconnect
    stats = (await server.http.get("/healthz")).json()["amazonConnect"]
    assert stats["readersFinished"] == {"contact-changed": 1}
    # The contact is over: stop says so.
    stop = await server.http.post(STOP, json={"namespace": "amazonconnect", "guid": GUID})
    assert (stop.status_code, stop.json()["error"]["code"]) == (400, "400-203")


async def test_stop_then_start_again_reads_the_new_selector_on_the_same_call(
    server: Server, fed: FedAudio
) -> None:
    fragments = tone_fragments(8.0, fragment_ms=500)
    stream = SimulatedKvsStream(fragments, speed=2, ends=False)  # 2 s of stream a second
    kvs = server.use(StubbedKvs(stream, server.stream_arn))
    first = await server.http.post(
        START, json=server.start_body("FRAGMENT_NUMBER", fragments[0].number)
    )
    assert first.status_code == 200
    await asyncio.sleep(0.5)
    stop = await server.http.post(STOP, json={"namespace": "amazonconnect", "guid": GUID})
    assert stop.status_code == 200
    read_before_stop = len(fed.pcm(CUSTOMER_TRACK))
    assert 0 < read_before_stop < 4 * 8000
    # After the hold the flow starts streaming again from a later fragment (4 s into the call).
    again = await server.http.post(
        START, json=server.start_body("FRAGMENT_NUMBER", fragments[8].number)
    )
    assert again.status_code == 200, again.text
    # Same participants, same streams: a hold, not a new leg.
    assert again.json()["autotranscribeResponse"] == first.json()["autotranscribeResponse"]
    already = await server.http.post(START, json=server.start_body("NOW"))
    assert (already.status_code, already.json()["error"]["code"]) == (409, "409-201")
    await asyncio.sleep(2.0)
    await server.http.post(STOP, json={"namespace": "amazonconnect", "guid": GUID})
    assert [s["AfterFragmentNumber"] for s in kvs.get_media] == [
        fragments[0].number,
        fragments[8].number,
    ]
    customer = fed.pcm(CUSTOMER_TRACK)
    before, after = customer[:read_before_stop], customer[read_before_stop:]
    assert np.array_equal(before, fragment_pcm(fragments, 0)[:read_before_stop])
    assert len(after) > 0
    assert np.array_equal(after, fragment_pcm(fragments[8:], 0)[: len(after)])
    # The second read sits at its own time on the call's timeline: 4 s in.
    first_after = next(
        at for pcm, at in fed.of(CUSTOMER_TRACK) if np.array_equal(pcm, after[: len(pcm)])
    )
    assert first_after == 4 * 8000

    # A start that goes back over what was read gets only what is new.
    await server.http.post(START, json=server.start_body("FRAGMENT_NUMBER", fragments[0].number))
    await asyncio.sleep(0.3)
    await server.http.post(STOP, json={"namespace": "amazonconnect", "guid": GUID})
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK)[: len(customer)], customer)
    reread = fed.pcm(CUSTOMER_TRACK)[len(customer) :]
    assert not any(
        np.array_equal(reread[:512], chunk[:512])
        for chunk in (
            fragment_pcm(fragments[:8], 0)[i : i + 512] for i in range(0, read_before_stop, 512)
        )
    )


async def test_start_errors_leave_no_call_behind(server: Server, aws: None) -> None:
    fragments = tone_fragments(1.0)
    server.use(StubbedKvs(SimulatedKvsStream(fragments), server.stream_arn))
    cases = [
        # A stream that does not exist (Kinesis Video Streams says so).
        (
            server.start_body()
            | {
                "amazonConnectParams": {
                    "streamArn": server.stream_arn.replace("connect-acme", "connect-gone")
                }
            },
            400,
            "400-202",
        ),
        # A stream in another account than the tenant's role.
        (
            server.start_body()
            | {
                "amazonConnectParams": {
                    "streamArn": server.stream_arn.replace("123456789012", "999988887777")
                }
            },
            400,
            "400-202",
        ),
        # Participants are needed on a call's first start.
        ({k: v for k, v in server.start_body().items() if k != "agentId"}, 400, "400-201"),
        # amazonConnectParams are required, FRAGMENT_NUMBER needs its fragment.
        (
            {k: v for k, v in server.start_body().items() if k != "amazonConnectParams"},
            400,
            "400-202",
        ),
        (server.start_body("FRAGMENT_NUMBER"), 400, "400-202"),
    ]
    for body, status, code in cases:
        answer = await server.http.post(START, json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert await server.call_status() is None
    # A tenant without Connect access.
    server.runtime.store.delete_connect_access("acme")
    answer = await server.http.post(START, json=server.start_body())
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "400-202")
    assert "connect-access set" in answer.json()["error"]["message"]
    assert await server.call_status() is None


async def test_many_contacts_at_once_each_from_its_own_stream(
    server: Server, fed: FedAudio
) -> None:
    contacts = 6
    arns = [create_kvs_stream(f"connect-acme-contact-{n}") for n in range(contacts)]
    streams = {
        arn: SimulatedKvsStream(
            tone_fragments(3.0, fragment_ms=500, seed=10 + n, contact_id=f"contact-{n}"), speed=20
        )
        for n, arn in enumerate(arns)
    }
    first = next(iter(streams.values()))
    server.use(StubbedKvs(first, arns[0], more=streams))
    guids = [f"contact-{n}" for n in range(contacts)]

    async def start(n: int) -> int:
        body = server.start_body("FRAGMENT_NUMBER", streams[arns[n]].fragments[0].number)
        body["guid"] = guids[n]
        body["amazonConnectParams"]["streamArn"] = arns[n]
        return (await server.http.post(START, json=body)).status_code

    assert await asyncio.gather(*(start(n) for n in range(contacts))) == [200] * contacts
    stats = (await server.http.get("/healthz")).json()["amazonConnect"]
    assert stats["calls"] == contacts
    # Each stream ends; each call completes on its own.
    deadline = time.monotonic() + 60
    while len(server.runtime.connect.calls) and time.monotonic() < deadline:  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
    assert not server.runtime.connect.calls  # type: ignore[union-attr]
    # Every contact's audio reached its own call, whole and in order.
    for n, guid in enumerate(guids):
        fragments = streams[arns[n]].fragments
        assert np.array_equal(fed.pcm(CUSTOMER_TRACK, guid), fragment_pcm(fragments, 0)), guid
        assert np.array_equal(fed.pcm(AGENT_TRACK, guid), fragment_pcm(fragments, 1)), guid
        assert fed.contiguous(CUSTOMER_TRACK, guid) and fed.contiguous(AGENT_TRACK, guid)
    stats = (await server.http.get("/healthz")).json()["amazonConnect"]
    assert stats["readersFinished"] == {"end-of-stream": contacts}
