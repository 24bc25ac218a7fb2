"""Control over private HTTP: the API side (HttpControl) against a real gateway control
endpoint on loopback, its signatures, and its errors. What every Control adapter does (start,
stop, their refusals) is tests/control_contract.py, run for HttpControl in
tests/test_control_contract.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import uvicorn

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.calls import Calls, CallSession
from callscribe.config import Settings
from callscribe.control_http import (
    REFUSED_STATUS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HttpControl,
    create_control_app,
    sign,
)
from callscribe.model import CallError, ErrorCode, Role, StartRequest
from callscribe.server import LocalRuntime
from callscribe.store.base import CallKey, CallRecord, CallStatus
from callscribe.testing.simulate import bind_loopback

SECRET = "shared-control-secret"


class SilentAsr:
    async def transcribe(self, request: AsrRequest) -> AsrResult:
        return AsrResult(text="")

    async def close(self) -> None:
        pass


class Gateway:
    def __init__(self, runtime: LocalRuntime, url: str) -> None:
        self.runtime = runtime
        self.url = url

    async def add_call(self, guid: str) -> CallRecord:
        key = CallKey("acme", "twilio", guid)
        # A call this gateway holds under its control URL (as an AWS task records it).
        calls = Calls(replace(self.runtime.calls.services, owner=self.url), self.runtime.registry)
        await calls.open(
            CallSession,
            key,
            channels=("inbound", "outbound"),
            channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
        )
        record = self.runtime.store.get_call(key)
        assert record is not None
        return record


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    runtime = LocalRuntime.build(Settings(data_dir=tmp_path), asr=SilentAsr())
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_control_app(runtime.registry, SECRET), log_level="warning", lifespan="off"
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield Gateway(runtime, url)
    server.should_exit = True
    await task
    await runtime.shutdown()


def start_request(guid: str) -> StartRequest:
    return StartRequest.model_validate(
        {"namespace": "twilio", "guid": guid, "customerId": "C1", "agentId": "A1"}
    )


async def test_errors_travel_back_with_their_codes(gateway: Gateway) -> None:
    call = await gateway.add_call("CA2")
    gone = CallRecord(CallKey("acme", "twilio", "CAgone"), CallStatus.CONNECTED, gateway.url, 0, 0)
    with pytest.raises(CallError) as missing:
        await HttpControl(SECRET).start(gone, start_request("CAgone"))
    assert missing.value.code is ErrorCode.NO_SUCH_CALL
    with pytest.raises(CallError) as wrong_secret:
        await HttpControl("not-the-secret").start(call, start_request("CA2"))
    assert wrong_secret.value.code is ErrorCode.INTERNAL
    local_owner = CallRecord(call.key, CallStatus.CONNECTED, "local:host:1", 0, 0)
    with pytest.raises(CallError) as not_http:
        await HttpControl(SECRET).start(local_owner, start_request("CA2"))
    assert not_http.value.code is ErrorCode.NO_SUCH_CALL


async def test_a_refused_action_is_answered_with_its_code(gateway: Gateway) -> None:
    """The holder's refusal carries the contract's code; its HTTP status is the API's to give
    (the API side re-raises the code), so the control answer has one status for them all."""
    await gateway.add_call("CA5")
    now = str(int(time.time()))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for guid, code in [("CAelsewhere", "400-203"), ("CA5", "409-201")]:
            key = {"tenant": "acme", "namespace": "twilio", "guid": guid}
            body = json.dumps({"key": key}).encode()
            response = await http.post(
                "/control/stop",
                content=body,
                headers={TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(SECRET, now, body)},
            )
            assert response.status_code == REFUSED_STATUS
            assert response.json()["isOk"] is False
            assert response.json()["error"]["code"] == code


async def test_gateway_refuses_unsigned_stale_and_tampered_requests(gateway: Gateway) -> None:
    await gateway.add_call("CA3")
    body = json.dumps(
        {
            "key": {"tenant": "acme", "namespace": "twilio", "guid": "CA3"},
            "request": start_request("CA3").model_dump(mode="json"),
        }
    ).encode()
    now = str(int(time.time()))
    stale = str(int(time.time()) - 120)
    cases = [
        {},
        {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: "0" * 64},
        {TIMESTAMP_HEADER: stale, SIGNATURE_HEADER: sign(SECRET, stale, body)},
        {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: sign(SECRET, "soon", body)},
    ]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for headers in cases:
            response = await http.post("/control/start", content=body, headers=headers)
            assert response.status_code == 401
        tampered = body.replace(b"CA3", b"CA4")
        response = await http.post(
            "/control/start",
            content=tampered,
            headers={TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(SECRET, now, body)},
        )
        assert response.status_code == 401
        session = gateway.runtime.registry.get(CallKey("acme", "twilio", "CA3"))
        assert session is not None and session.status is CallStatus.CONNECTED
        garbage = b'{"key": "nope"}'
        response = await http.post(
            "/control/start",
            content=garbage,
            headers={TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(SECRET, now, garbage)},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "400-201"
        response = await http.post(
            "/control/delete",
            content=body,
            headers={TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(SECRET, now, body)},
        )
        assert response.status_code == 404
