"""A draining KVS reader hands its Amazon Connect calls to another reader: two reader runtimes
in one process on one Store (SQLite) and one transcript bus, GetMedia answered through
botocore's Stubber with a simulated live Connect stream (STS and Kinesis Video Streams under
moto). The VAD hears speech wherever the audio is loud and each reader's ASR names the reader,
so every message says who transcribed what; every sample the readers hand to the calls is
recorded, so a lost or repeated sample shows. The readers reach each other here through the
``CallHandover`` port directly; ``test_connect_aws.py`` hands a call over between two reader
tasks' control endpoints, through the API Lambda and the webhook Lambda."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from callscribe import adapters
from callscribe.bus import InProcessEventBus, TranscriptEvent
from callscribe.config import ConnectSettings, Settings
from callscribe.connect.ingest import ConnectCall, ConnectIngest
from callscribe.connect.kvs import BotoMediaSources
from callscribe.connect.media import AGENT_TRACK, CUSTOMER_TRACK, ConnectMediaDemuxer
from callscribe.control import NotTakingCalls
from callscribe.ingest import Ingest, IngestRuntime
from callscribe.model import AmazonConnectParams, CallError, ErrorCode, StartRequest
from callscribe.store.base import CallKey, CallStatus, ConnectAccess
from callscribe.testing.connect_stream import (
    SimulatedFragment,
    SimulatedKvsStream,
    connect_fragments,
)
from tests.connect_support import (
    CONTACT_ID,
    EXTERNAL_ID,
    READER_ROLE_ARN,
    StubbedKvs,
    create_kvs_stream,
    fragment_pcm,
    get_media_bytes,
)
from tests.drain_support import NamingAsr, segments
from tests.test_connect_service import FedAudio, aws, fed
from tests.test_endpointing import ScriptedVad

__all__ = ["aws", "fed"]  # the fixtures

KEY = CallKey("acme", "amazonconnect", CONTACT_ID)
FRAGMENT_MS = 500


class DirectHandover:
    """The ``CallHandover`` port straight into another reader's ``CallReceiver`` side."""

    def __init__(self, receiver: ConnectIngest) -> None:
        self.receiver = receiver
        self.asked = 0

    async def available(self) -> bool:
        return self.receiver.ready()

    async def hand_over(self, key: CallKey) -> str:
        self.asked += 1
        await self.receiver.resume(key)
        return self.receiver.owner


class NobodyTakes:
    """Other readers answer that they take calls, then each refuses this one."""

    def __init__(self) -> None:
        self.asked = 0

    async def available(self) -> bool:
        return True

    async def hand_over(self, key: CallKey) -> str:
        self.asked += 1
        raise NotTakingCalls("none of the 2 readers takes new calls")


@dataclass
class Readers:
    a: IngestRuntime
    b: IngestRuntime
    asr_a: NamingAsr
    asr_b: NamingAsr
    stream_arn: str
    events: list[TranscriptEvent] = field(default_factory=list)

    def use(self, stream: SimulatedKvsStream) -> StubbedKvs:
        kvs = StubbedKvs(stream, self.stream_arn)
        for runtime in (self.a, self.b):
            assert runtime.connect is not None
            runtime.connect.sources = BotoMediaSources(
                runtime.store, runtime.settings.connect, client_factory=kvs
            )
        return kvs

    def request(self, fragment: str) -> StartRequest:
        return StartRequest.model_validate(
            {
                "namespace": "amazonconnect",
                "guid": CONTACT_ID,
                "customerId": "C-1",
                "agentId": "A-1",
                "amazonConnectParams": AmazonConnectParams(
                    streamArn=self.stream_arn,
                    startSelectorType="FRAGMENT_NUMBER",
                    afterFragmentNumber=fragment,
                ).model_dump(),
            }
        )

    def call_on(self, runtime: IngestRuntime) -> ConnectCall:
        assert runtime.connect is not None
        return runtime.connect.calls[KEY]

    def messages(self) -> list[tuple[int, str, str, int, int]]:
        """(seq, reader, role, start ms, end ms) of every message, in publishing order."""
        return [
            (
                event.seq,
                event.body["autotranscribeResponse"]["utterance"][0]["text"],
                event.body["sender"]["role"],
                event.body["autotranscribeResponse"]["start"],
                event.body["autotranscribeResponse"]["end"],
            )
            for event in self.events
        ]


@pytest.fixture
async def readers(aws: None, tmp_path: Path) -> AsyncIterator[Readers]:
    settings = Settings(
        data_dir=tmp_path,
        connect=ConnectSettings(read_timeout_s=1, retry_backoff_s=0.05, stopped_call_timeout_s=30),
    )
    ports = adapters.local(settings)
    ports.store.put_connect_access(ConnectAccess("acme", READER_ROLE_ARN, EXTERNAL_ID, time.time()))
    asr_a, asr_b = NamingAsr("reader-a"), NamingAsr("reader-b")
    runtimes = [
        IngestRuntime.compose(
            settings,
            ports,
            ingests=[Ingest.AMAZON_CONNECT],
            owner=owner,
            asr=asr,
            vad_factory=ScriptedVad,
        )
        for owner, asr in (("http://10.0.1.10:8081", asr_a), ("http://10.0.2.20:8081", asr_b))
    ]
    found = Readers(*runtimes, asr_a, asr_b, create_kvs_stream())
    assert isinstance(ports.bus, InProcessEventBus)
    ports.bus.subscribe(found.events.append)
    try:
        yield found
    finally:
        for runtime in runtimes:
            await runtime.registry.complete_all()
            assert runtime.connect is not None
            await runtime.connect.close()
        ports.store.close()


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.01)


def fragment_at(fragments: list[SimulatedFragment], number: str) -> int:
    return next(i for i, f in enumerate(fragments) if f.number == number)


async def drain_when_read(readers: Readers, fragments: int) -> ConnectCall:
    """Once reader A has taken ``fragments`` fragments of the call, it stops taking calls
    (as when its deployment is replaced): it hands the call over."""
    call = readers.call_on(readers.a)
    await wait_for(lambda: len(call.taken_fragments) >= fragments, 30, "fragments read")
    readers.a.stop_taking_calls()
    return call


async def test_the_call_moves_at_a_pause_and_every_sample_is_transcribed_once(
    readers: Readers, fed: FedAudio
) -> None:
    # The customer speaks, pauses 1.4 s, speaks again; the agent answers after that.
    customer = segments(("speech", 1.6), ("silence", 1.4), ("speech", 1.6), ("silence", 2.4))
    agent = segments(("silence", 5.0), ("speech", 1.2), ("silence", 0.8), seed=2)
    fragments = connect_fragments(customer, agent, contact_id=CONTACT_ID, fragment_ms=FRAGMENT_MS)
    stream = SimulatedKvsStream(fragments, speed=2)
    kvs = readers.use(stream)
    assert readers.a.connect is not None and readers.b.connect is not None
    readers.a.connect.handover = DirectHandover(readers.b.connect)

    await readers.a.connect.open(KEY, readers.request(fragments[0].number))
    # A drains 1 s in, mid-word: it waits for the first fragment end in the pause.
    given = await drain_when_read(readers, 2)
    await wait_for(lambda: given.handed_over_to is not None, 30, "handover")
    assert given.handed_over_to == readers.b.owner
    assert KEY not in readers.a.connect.calls and len(readers.a.registry) == 0
    record = readers.a.store.get_call(KEY)
    assert record is not None and record.owner == readers.b.owner
    assert record.status is CallStatus.STREAMING

    # A stopped after the last fragment it took; B read from that fragment (GetMedia starts
    # at it) and took nothing of it.
    cut = fragment_at(fragments, given.taken_fragments[-1])
    cut_ms = (cut + 1) * FRAGMENT_MS
    assert 1600 + 300 <= cut_ms <= 3000, "cut in the pause"
    assert kvs.get_media[-1] == {
        "StartSelectorType": "FRAGMENT_NUMBER",
        "AfterFragmentNumber": fragments[cut].number,
    }
    await wait_for(lambda: KEY not in readers.b.connect.calls, 60, "the end of the call")
    assert readers.b.store.get_call(KEY).status is CallStatus.COMPLETED

    # Each sample of both tracks reached a call once, in order, on one timeline.
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    assert np.array_equal(fed.pcm(AGENT_TRACK), fragment_pcm(fragments, 1))
    assert fed.contiguous(CUSTOMER_TRACK) and fed.contiguous(AGENT_TRACK)
    # Three utterances, none split: the first was said before the cut and is A's (finished
    # at the cut), the others B's; numbered 0, 1, 2 across both readers.
    messages = readers.messages()
    assert [(seq, reader, role) for seq, reader, role, _, _ in messages] == [
        (0, "reader-a", "customer"),
        (1, "reader-b", "customer"),
        (2, "reader-b", "agent"),
    ]
    (_, _, _, start, end), (_, _, _, start_2, end_2), (_, _, _, start_3, _) = messages
    assert start <= 100 and 1500 <= end <= 1800 < cut_ms
    assert cut_ms <= start_2 and 2700 <= start_2 <= 3000 and 4500 <= end_2 <= 4800
    assert 4700 <= start_3 <= 5000
    stats = readers.a.connect.stats()["handovers"]
    assert stats == {"given": 1, "kept": 0, "taken": 0}
    assert readers.b.connect.stats()["handovers"]["taken"] == 1
    assert readers.a.connect.readers_finished == {"handed-over": 1}


async def test_speech_at_the_cut_ends_on_the_first_reader_and_goes_on_on_the_next(
    readers: Readers, fed: FedAudio
) -> None:
    # No pause at all: with no quiet wait the call is cut at the next fragment end, mid-word.
    readers.a.settings.connect.handover_quiet_wait_s = 0
    customer = segments(("speech", 5.0), ("silence", 1.0))
    agent = segments(("silence", 6.0))
    fragments = connect_fragments(customer, agent, contact_id=CONTACT_ID, fragment_ms=FRAGMENT_MS)
    readers.use(SimulatedKvsStream(fragments, speed=2))
    assert readers.a.connect is not None and readers.b.connect is not None
    readers.a.connect.handover = DirectHandover(readers.b.connect)

    await readers.a.connect.open(KEY, readers.request(fragments[0].number))
    given = await drain_when_read(readers, 3)
    await wait_for(lambda: given.handed_over_to is not None, 30, "handover")
    cut_ms = (fragment_at(fragments, given.taken_fragments[-1]) + 1) * FRAGMENT_MS
    await wait_for(lambda: KEY not in readers.b.connect.calls, 60, "the end of the call")

    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    assert fed.contiguous(CUSTOMER_TRACK)
    # The speech open at the cut was finished by A up to the cut; B's utterance starts
    # exactly there: nothing said is lost or heard twice.
    (first, second) = readers.messages()
    assert first[:3] == (0, "reader-a", "customer") and second[:3] == (1, "reader-b", "customer")
    assert first[3] == 0 and first[4] == cut_ms == second[3]
    assert 5000 <= second[4] <= 5200


async def test_a_call_no_reader_takes_is_read_on_by_its_reader_and_ends_there(
    readers: Readers, fed: FedAudio
) -> None:
    readers.a.settings.connect.handover_quiet_wait_s = 0
    customer = segments(("speech", 2.0), ("silence", 1.0), ("speech", 1.5), ("silence", 1.5))
    fragments = connect_fragments(
        customer, segments(("silence", 6.0)), contact_id=CONTACT_ID, fragment_ms=FRAGMENT_MS
    )
    stream = SimulatedKvsStream(fragments, speed=2)
    kvs = readers.use(stream)
    assert readers.a.connect is not None
    nobody = NobodyTakes()
    readers.a.connect.handover = nobody

    await readers.a.connect.open(KEY, readers.request(fragments[0].number))
    call = await drain_when_read(readers, 2)
    await wait_for(lambda: nobody.asked >= 1, 30, "a handover")
    # It reads on from the fragment after the cut, as its own owner.
    await wait_for(lambda: KEY not in readers.a.connect.calls, 60, "the end of the call")
    assert call.handed_over_to is None and call.ended is not None
    record = readers.a.store.get_call(KEY)
    assert record is not None and record.owner == readers.a.owner
    assert record.status is CallStatus.COMPLETED
    assert len(kvs.get_media) >= 2
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    assert fed.contiguous(CUSTOMER_TRACK)
    messages = readers.messages()
    assert [seq for seq, *_ in messages] == list(range(len(messages)))
    assert {reader for _, reader, *_ in messages} == {"reader-a"}
    assert readers.asr_b.utterances == 0
    assert readers.a.connect.stats()["handovers"]["kept"] >= 1


async def test_a_stopped_call_is_held_by_the_next_reader_and_reads_on_from_there(
    readers: Readers, fed: FedAudio
) -> None:
    customer = segments(("speech", 1.2), ("silence", 0.8), ("speech", 1.2), ("silence", 0.8))
    fragments = connect_fragments(
        customer, segments(("silence", 4.0)), contact_id=CONTACT_ID, fragment_ms=FRAGMENT_MS
    )
    # Four times real time: A stops it part of the way through.
    readers.use(SimulatedKvsStream(fragments, speed=4, ends=False))
    assert readers.a.connect is not None and readers.b.connect is not None
    readers.a.connect.handover = DirectHandover(readers.b.connect)
    call = readers.a.connect
    await call.open(KEY, readers.request(fragments[0].number))
    held = readers.call_on(readers.a)
    await wait_for(lambda: len(held.taken_fragments) >= 3, 30, "fragments read")
    first_summary = await held.stop()
    read_on_a = len(fed.pcm(CUSTOMER_TRACK))

    readers.a.stop_taking_calls()
    await wait_for(lambda: held.handed_over_to is not None, 30, "handover")
    moved = readers.call_on(readers.b)
    assert moved.status is CallStatus.STOPPED
    assert readers.b.store.get_call(KEY).owner == readers.b.owner
    # The flow starts again from the first fragment: B reads only what A had not.
    again = await moved.start(readers.request(fragments[0].number))
    assert again.customer is not None and first_summary.customer is not None
    assert again.customer.streamId == first_summary.customer.streamId
    await wait_for(
        lambda: len(fed.pcm(CUSTOMER_TRACK)) >= len(fragment_pcm(fragments, 0)), 30, "the rest"
    )
    summary = await moved.stop()
    assert np.array_equal(fed.pcm(CUSTOMER_TRACK), fragment_pcm(fragments, 0))
    assert 0 < read_on_a < len(fragment_pcm(fragments, 0))
    # Its summary counts the whole call's audio, A's part included.
    assert summary.customer is not None and summary.customer.summary is not None
    assert summary.customer.summary.totalAudioBytes == 2 * len(fragment_pcm(fragments, 0))


async def test_a_draining_reader_takes_no_new_call_and_is_not_ready(readers: Readers) -> None:
    readers.a.stop_taking_calls()
    assert readers.a.why_not_ready() == "draining"
    assert readers.b.why_not_ready() is None
    assert readers.a.connect is not None
    with pytest.raises(NotTakingCalls):
        await readers.a.connect.open(KEY, readers.request("1"))
    with pytest.raises(NotTakingCalls):
        await readers.a.connect.resume(KEY)
    assert readers.a.store.get_call(KEY) is None
    # A reader that takes calls refuses a resume for a call nobody is handing over.
    assert readers.b.connect is not None
    with pytest.raises(CallError) as refused:
        await readers.b.connect.resume(KEY)
    assert refused.value.code is ErrorCode.NO_SUCH_CALL


def test_a_resuming_demuxer_gives_nothing_of_the_fragments_already_taken() -> None:
    customer = segments(("speech", 3.0))
    fragments = connect_fragments(
        customer, segments(("speech", 3.0), seed=2), contact_id=CONTACT_ID, fragment_ms=500
    )
    taken = [f.number for f in fragments[:3]]
    demuxer = ConnectMediaDemuxer.resuming_after(taken, CONTACT_ID)
    assert demuxer.resume_fragment == taken[-1]
    # GetMedia at the last fragment taken: it again, then the rest; and once more from the
    # first (a start that goes back).
    outputs = demuxer.feed(get_media_bytes(fragments[2:]))
    outputs += demuxer.end_of_body()
    demuxer.new_body()
    outputs += demuxer.feed(get_media_bytes(fragments[:2]))
    audio = [o for o in outputs if hasattr(o, "pcm16")]
    delivered = np.concatenate([o.pcm16 for o in audio if o.channel == CUSTOMER_TRACK])
    assert np.array_equal(delivered, fragment_pcm(fragments[3:], 0))
    assert {o.fragment_number for o in audio} == {f.number for f in fragments[3:]}
    with pytest.raises(ValueError):
        ConnectMediaDemuxer.resuming_after([], CONTACT_ID)


async def test_a_drain_too_short_for_a_handover_completes_the_call_with_its_transcripts(
    readers: Readers, fed: FedAudio
) -> None:
    customer = segments(("speech", 1.0), ("silence", 5.0))
    fragments = connect_fragments(
        customer, segments(("silence", 6.0)), contact_id=CONTACT_ID, fragment_ms=FRAGMENT_MS
    )
    readers.use(SimulatedKvsStream(fragments, speed=2, ends=False))
    assert readers.a.connect is not None and readers.b.connect is not None
    handover = DirectHandover(readers.b.connect)
    readers.a.connect.handover = handover
    await readers.a.connect.open(KEY, readers.request(fragments[0].number))
    call = readers.call_on(readers.a)
    await wait_for(lambda: len(call.taken_fragments) >= 2, 30, "fragments read")

    # SIGTERM with a drain timeout that leaves no time to hand over: the call stays, and the
    # shutdown that follows completes it as before, its utterance transcribed.
    await readers.a.drain(1.0)
    assert handover.asked == 0 and len(readers.a.registry) == 1
    await readers.a.registry.complete_all()
    record = readers.a.store.get_call(KEY)
    assert record is not None and record.status is CallStatus.COMPLETED
    assert record.owner == readers.a.owner
    assert [(seq, reader) for seq, reader, *_ in readers.messages()] == [(0, "reader-a")]
