"""The ``Control`` port: reach the process that holds a call's media to start or stop it;
``CallOpener``, which starts a call that no process holds yet; and ``CallHandover``, through
which a process that is stopping gives a live call to another process of its kind (Amazon
Connect: a draining KVS reader to another reader), which continues it (``CallReceiver``).

Local mode: the API and the gateways share one process, so control is a direct call into the
registry of live calls. In AWS the owner recorded in the Store is a gateway task's private
address and the adapter calls it over authenticated HTTP.
"""

from __future__ import annotations

from typing import Protocol

from callscribe.calls import CallRegistry, CallSession
from callscribe.model import AutotranscribeResult, CallError, ErrorCode, StartRequest
from callscribe.store.base import CallKey, CallRecord


class Control(Protocol):
    async def start(self, call: CallRecord, request: StartRequest) -> AutotranscribeResult: ...

    async def stop(self, call: CallRecord) -> AutotranscribeResult: ...


class CallOpener(Protocol):
    """Starts a call whose media no process holds yet (Amazon Connect: start-streaming itself
    opens the media). Local mode: the Connect ingest in this process; AWS: a KVS reader task
    over the signed control HTTP (``control_http.HttpCallOpener``)."""

    async def open(self, key: CallKey, request: StartRequest) -> AutotranscribeResult: ...


class NotTakingCalls(CallError):
    """This process takes no new call now (it is draining): another process of its kind may.
    Over the control HTTP it is a 503, on which the caller tries another task."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class CallReceiver(Protocol):
    """Continues a call another process handed over, from what that process recorded in the
    Store (``resume``); ``ready`` says whether it would take one now."""

    def ready(self) -> bool: ...

    async def resume(self, key: CallKey) -> AutotranscribeResult: ...


class CallHandover(Protocol):
    """The giving side: finds another process that takes the call and asks it to continue.
    ``hand_over`` returns the new holder (its owner URL); CallError when none took it."""

    async def available(self) -> bool:
        """Whether some other process would take a call now (asked before a call is cut)."""
        ...

    async def hand_over(self, key: CallKey) -> str: ...


class LocalControl:
    """Control of the calls whose media this process holds. The API of local mode calls it
    directly; a gateway task's private control endpoint (``control_http``) calls it for the
    API Lambda, so both apply the same rules."""

    def __init__(self, registry: CallRegistry) -> None:
        self.registry = registry

    def _live(self, key: CallKey) -> CallSession:
        session = self.registry.get(key)
        if session is None:
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {key.guid} has no live media")
        return session

    async def start(self, call: CallRecord, request: StartRequest) -> AutotranscribeResult:
        return await self.start_live(call.key, request)

    async def stop(self, call: CallRecord) -> AutotranscribeResult:
        return await self.stop_live(call.key)

    async def start_live(self, key: CallKey, request: StartRequest) -> AutotranscribeResult:
        return await self._live(key).start(request)

    async def stop_live(self, key: CallKey) -> AutotranscribeResult:
        return await self._live(key).stop()
