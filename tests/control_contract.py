"""The contract every ``Control`` adapter honours (``callscribe/control.py``): start and stop
reach the process that holds a call's media and act on that call alone; what the call answers
(its result, or its error code) comes back unchanged.

Subclass and provide the ``world`` fixture, a ``ControlWorld`` whose ``control`` is the
adapter under test and whose calls are held by the process that adapter reaches, as
tests/test_control_contract.py does for each adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import pytest

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.bus import InProcessEventBus
from callscribe.calls import CallRegistry, Calls, CallServices, CallSession
from callscribe.config import EndpointingSettings
from callscribe.control import Control
from callscribe.model import CallError, ErrorCode, Role, StartRequest
from callscribe.store.base import CallKey, CallRecord, CallStatus, TenantVocabulary
from callscribe.store.sqlite import SqliteStore
from callscribe.transcription import TranscriptionPipeline


class NoSpeechAsr:
    """No audio reaches these calls: control is under test, not transcription."""

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        return AsrResult(text="")

    async def close(self) -> None:
        pass


@dataclass
class CallHolder:
    """The process that holds calls' media (a gateway), as far as control is concerned: its
    live calls and the Store they are recorded in, under ``owner``."""

    registry: CallRegistry
    store: SqliteStore
    pipeline: TranscriptionPipeline
    owner: str

    @classmethod
    def in_directory(cls, directory: Path, owner: str) -> CallHolder:
        store = SqliteStore(directory / "callscribe.db")
        pipeline = TranscriptionPipeline(NoSpeechAsr(), store, InProcessEventBus(), 3600)
        return cls(CallRegistry(), store, pipeline, owner)

    async def add_call(self, guid: str, tenant: str = "acme") -> CallRecord:
        """A Twilio call whose media this process holds, connected, not yet transcribing."""
        calls = Calls(
            CallServices(self.store, self.pipeline, EndpointingSettings(), owner=self.owner),
            self.registry,
        )
        session = await calls.open(
            CallSession,
            CallKey(tenant, "twilio", guid),
            channels=("inbound", "outbound"),
            channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
        )
        record = self.store.get_call(session.key)
        assert record is not None
        return record

    def session(self, record: CallRecord) -> CallSession:
        session = self.registry.get(record.key)
        assert session is not None
        return session

    def status(self, record: CallRecord) -> CallStatus:
        stored = self.store.get_call(record.key)
        assert stored is not None
        assert stored.status is self.session(record).status
        return stored.status

    async def close(self) -> None:
        await self.registry.complete_all()


@dataclass
class ControlWorld:
    control: Control
    holder: CallHolder


def start_request(guid: str, **fields: object) -> StartRequest:
    return StartRequest.model_validate(
        {"namespace": "twilio", "guid": guid, "customerId": "C-17", "agentId": "A-4", **fields}
    )


async def refused(action: Awaitable[object]) -> CallError:
    with pytest.raises(CallError) as caught:
        await action
    return caught.value


class ControlContract:
    async def test_start_turns_transcription_on_and_names_both_participants(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-start")
        result = await world.control.start(call, start_request("CA-start"))
        session = world.holder.session(call)
        assert world.holder.status(call) is CallStatus.STREAMING
        assert result.customer is not None and result.agent is not None
        assert result.customer.streamId == session.participants[Role.CUSTOMER]["streamId"]
        assert result.agent.streamId == session.participants[Role.AGENT]["streamId"]
        assert result.customer.streamId != result.agent.streamId
        assert result.customer.summary is None and result.agent.summary is None

    async def test_the_start_request_reaches_the_call_whole(self, world: ControlWorld) -> None:
        call = await world.holder.add_call("CA-request")
        request = start_request(
            "CA-request",
            customerId="cust éé 42",
            agentId="agent/7",
            autotranscribeParams={
                "language": "es-US",
                "detailedToken": True,
                "redactionOutput": "redacted_and_unredacted",
            },
            twilioParams={"trackMap": {"inbound": "agent", "outbound": "customer"}},
        )
        await world.control.start(call, request)
        session = world.holder.session(call)
        assert session.request == request
        assert session.participants[Role.CUSTOMER]["externalId"] == "cust éé 42"
        assert session.channel_roles == {"inbound": Role.AGENT, "outbound": Role.CUSTOMER}

    async def test_the_calls_vocabulary_is_merged_with_its_tenants_where_the_call_is_held(
        self, world: ControlWorld
    ) -> None:
        store = world.holder.store
        store.put_tenant_vocabulary(TenantVocabulary("acme", ("Acme Cloud", "Zorblax"), 0))
        store.put_tenant_vocabulary(TenantVocabulary("globex", ("Globex Plus",), 0))
        call = await world.holder.add_call("CA-vocabulary")
        request = start_request(
            "CA-vocabulary", autotranscribeParams={"vocabulary": ["zorblax", "Quantum Plan"]}
        )
        await world.control.start(call, request)
        session = world.holder.session(call)
        assert session.request == request
        # The call's terms first (its spelling of a shared one), then the tenant's; never
        # another tenant's.
        assert session.vocabulary == ("zorblax", "Quantum Plan", "Acme Cloud")

        # Each start reads the tenant's again and brings its own terms (or none).
        await world.control.stop(call)
        store.put_tenant_vocabulary(TenantVocabulary("acme", ("Acme Mobile",), 1))
        await world.control.start(
            call,
            start_request("CA-vocabulary", autotranscribeParams={"vocabulary": ["Nimbus"]}),
        )
        assert session.vocabulary == ("Nimbus", "Acme Mobile")
        await world.control.stop(call)
        store.delete_tenant_vocabulary("acme")
        await world.control.start(call, start_request("CA-vocabulary"))
        assert session.vocabulary == ()

        other = await world.holder.add_call("CA-vocabulary-globex", tenant="globex")
        await world.control.start(other, start_request("CA-vocabulary-globex"))
        assert world.holder.session(other).vocabulary == ("Globex Plus",)

    async def test_stop_turns_it_off_with_a_summary_of_each_participant(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-stop")
        started = await world.control.start(call, start_request("CA-stop"))
        stopped = await world.control.stop(call)
        assert world.holder.status(call) is CallStatus.STOPPED
        assert stopped.customer is not None and stopped.agent is not None
        assert stopped.customer.summary is not None and stopped.agent.summary is not None
        assert started.customer is not None and started.agent is not None
        assert (stopped.customer.streamId, stopped.agent.streamId) == (
            started.customer.streamId,
            started.agent.streamId,
        )

    async def test_start_after_stop_resumes_the_same_participants(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-hold")
        first = await world.control.start(call, start_request("CA-hold"))
        await world.control.stop(call)
        # A later start may leave the participant ids out: the call keeps the ones it has.
        resumed = await world.control.start(
            call, start_request("CA-hold", customerId=None, agentId=None)
        )
        assert world.holder.status(call) is CallStatus.STREAMING
        assert resumed.customer is not None and first.customer is not None
        assert resumed.customer.streamId == first.customer.streamId

    async def test_start_while_transcribing_is_refused_as_already_started(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-twice")
        first = start_request("CA-twice")
        await world.control.start(call, first)
        error = await refused(
            world.control.start(call, start_request("CA-twice", customerId="someone else"))
        )
        assert error.code is ErrorCode.ALREADY
        assert world.holder.status(call) is CallStatus.STREAMING
        assert world.holder.session(call).request == first

    async def test_stop_while_not_transcribing_is_refused_as_already_stopped(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-idle")
        error = await refused(world.control.stop(call))
        assert error.code is ErrorCode.ALREADY
        assert world.holder.status(call) is CallStatus.CONNECTED
        await world.control.start(call, start_request("CA-idle"))
        await world.control.stop(call)
        error = await refused(world.control.stop(call))
        assert error.code is ErrorCode.ALREADY
        assert world.holder.status(call) is CallStatus.STOPPED

    async def test_a_first_start_without_participant_ids_is_a_parameter_error(
        self, world: ControlWorld
    ) -> None:
        call = await world.holder.add_call("CA-anonymous")
        error = await refused(
            world.control.start(call, start_request("CA-anonymous", customerId=None))
        )
        assert error.code is ErrorCode.PARAMETER
        assert "customerId" in str(error)
        assert world.holder.status(call) is CallStatus.CONNECTED

    async def test_a_call_no_process_holds_is_no_such_call(self, world: ControlWorld) -> None:
        # Recorded with the holder as its owner, but its media is not (or no longer) there.
        unheld = CallRecord(
            CallKey("acme", "twilio", "CA-unheld"), CallStatus.CONNECTED, world.holder.owner, 0, 0
        )
        for action in (
            world.control.start(unheld, start_request("CA-unheld")),
            world.control.stop(unheld),
        ):
            error = await refused(action)
            assert error.code is ErrorCode.NO_SUCH_CALL
            assert "CA-unheld" in str(error)

    async def test_a_call_whose_media_ended_is_no_such_call(self, world: ControlWorld) -> None:
        call = await world.holder.add_call("CA-ended")
        await world.holder.session(call).complete()
        error = await refused(world.control.start(call, start_request("CA-ended")))
        assert error.code is ErrorCode.NO_SUCH_CALL
        assert world.holder.status(call) is CallStatus.COMPLETED

    async def test_control_acts_on_the_named_call_alone(self, world: ControlWorld) -> None:
        one = await world.holder.add_call("CA-one")
        other = await world.holder.add_call("CA-other")
        await world.control.start(one, start_request("CA-one"))
        assert world.holder.status(one) is CallStatus.STREAMING
        assert world.holder.status(other) is CallStatus.CONNECTED
        error = await refused(world.control.stop(other))
        assert error.code is ErrorCode.ALREADY
        assert world.holder.status(one) is CallStatus.STREAMING
