"""Every error code reachable in local mode, credentials and stream tokens, bad frames on the
Twilio WebSocket, and a webhook target that is down."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
import websockets
from itsdangerous import URLSafeTimedSerializer

from callscribe.api.schemas import parse_start
from callscribe.audio import pcm16_to_ulaw
from callscribe.auth import TOKEN_SALT
from callscribe.model import CallError, ErrorCode
from callscribe.store.base import CallKey
from callscribe.testing.simulate import (
    PlayedCall,
    free_port,
    load_sample_call,
    play_call,
)
from callscribe.twilio.protocol import TwilioStreamWriter
from tests.conftest import RunningServer

START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"


@asynccontextmanager
async def live_call(stream_url: str, call_sid: str | None = None) -> AsyncIterator[tuple[str, Any]]:
    """A Twilio stream that has sent its start frame and one frame of silence."""
    call_sid = call_sid or "CA" + uuid.uuid4().hex
    writer = TwilioStreamWriter("MZ" + uuid.uuid4().hex, call_sid, "AC" + "1" * 32)
    async with websockets.connect(stream_url) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start())
        silence = pcm16_to_ulaw(np.zeros(160, dtype=np.int16))
        await ws.send(writer.media("inbound", silence, 0))
        await ws.send(writer.media("outbound", silence, 0))
        await asyncio.sleep(0.2)
        yield call_sid, ws


def start_body(guid: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "namespace": "twilio",
        "guid": guid,
        "customerId": "C1",
        "agentId": "A1",
        "autotranscribeParams": {"language": "en-US"},
    }
    body.update(overrides)
    return body


def raw_client(server: RunningServer, tenant: str = "acme") -> httpx.AsyncClient:
    key = server.issue_key(tenant)
    return httpx.AsyncClient(
        base_url=server.base_url,
        headers={"asapp-api-id": key.api_id, "asapp-api-secret": key.api_secret},
    )


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["isOk"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_parameter_errors_400_201(server: RunningServer) -> None:
    async with raw_client(server) as http:
        cases = [
            (START, b"{not json"),
            (START, b"[1, 2]"),
            (START, b'{"namespace": "twilio"}'),
            (START, b'{"namespace": "skype", "guid": "CA1", "customerId": "c", "agentId": "a"}'),
            (START, b'{"namespace": "twilio", "guid": "bad guid with spaces"}'),
            # A trailing newline: "$" matches before it, so the pattern must match whole.
            (
                START,
                b'{"namespace": "twilio", "guid": "CA1\\n", "customerId": "c", "agentId": "a"}',
            ),
            (START, b'{"namespace": "twilio", "guid": 42}'),
            (STOP, b'{"guid": "CA1"}'),
            (STOP, b"\xff\xfe"),
            (START, b'{"namespace": "twilio", "guid": "CA1", "pad": "' + b"x" * 70_000 + b'"}'),
        ]
        for path, body in cases:
            response = await http.post(path, content=body)
            assert_error(response, 400, "400-201")
        response = await http.get("/conversation/v1/conversation/messages")
        assert_error(response, 400, "400-201")
        # Says which parameter, and never shows the server's source files.
        message = response.json()["error"]["message"]
        assert "externalConversationId" in message
        assert ".py" not in message and "line" not in message.lower(), message


async def test_transcription_parameter_errors_400_202(server: RunningServer) -> None:
    async with raw_client(server) as http:
        bad = [
            start_body("CA1", autotranscribeParams={"language": "xx-XX"}),
            start_body("CA1", autotranscribeParams={"language": "english please"}),
            start_body("CA1", autotranscribeParams={"redactionOutput": "some"}),
            start_body("CA1", autotranscribeParams={"detailedToken": "maybe"}),
            start_body(
                "CA1", twilioParams={"trackMap": {"inbound": "customer", "outbound": "customer"}}
            ),
            start_body("CA1", twilioParams={"trackMap": {"inbound": "supervisor"}}),
            start_body("CA1", namespace="siprec", twilioParams={"trackMap": {"inbound": "agent"}}),
            start_body("CA1", namespace="amazonconnect"),
            start_body(
                "CA1",
                namespace="amazonconnect",
                amazonConnectParams={
                    "streamArn": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/x/1",
                    "startSelectorType": "FRAGMENT_NUMBER",
                },
            ),
        ]
        for body in bad:
            assert_error(await http.post(START, json=body), 400, "400-202")


def test_the_language_is_checked_against_the_languages_given() -> None:
    """The languages start-streaming accepts are the API services' to say (the ASR port's list
    by default), not a list the request schema holds itself."""
    spanish_only = {"es"}
    spanish = start_body("CA1", autotranscribeParams={"language": "es-US"})
    assert parse_start(spanish, spanish_only).autotranscribeParams.language == "es-US"
    with pytest.raises(CallError) as refused:
        parse_start(start_body("CA1", autotranscribeParams={"language": "en-US"}), spanish_only)
    assert refused.value.code is ErrorCode.TRANSCRIPTION_PARAMETER
    assert "language 'en-US' is not supported" in refused.value.message


async def test_a_deeply_nested_body_is_400_201(server: RunningServer) -> None:
    """Nesting deeper than the JSON parser recurses is a bad body, not an internal error."""
    deep = b"[" * 20_000 + b"]" * 20_000
    inside = b'{"namespace": "twilio", "guid": "CA1", "autotranscribeParams": {"x": ' + deep + b"}}"
    async with raw_client(server) as http:
        for body in (deep, inside):
            assert_error(await http.post(START, content=body), 400, "400-201")
        # Nesting the parser takes, in a field this server does not know, is ignored.
        shallow = start_body("CAnope", autotranscribeParams={"x": [[[[[[[[[[1]]]]]]]]]]})
        assert_error(await http.post(START, json=shallow), 400, "400-203")


async def test_times_beyond_the_calendar_in_utc_are_400_201(server: RunningServer) -> None:
    """A time that is valid as written but not once converted to UTC (or too close to the
    calendar's end to count hours from) is a bad parameter, not an internal error."""
    failures = "/callscribe/v1/webhook-failures"
    feed = "/fileexporter/v1/feeds/utterances/files"
    async with raw_client(server) as http:
        for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
            response = await http.get(failures, params={"since": since})
            assert_error(response, 400, "400-201")
            assert "since" in response.json()["error"]["message"]
        for start, end in (
            ("0001-01-01T00:00:00+14:00", "0001-01-02T00:00:00Z"),
            ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59-14:00"),
            ("9999-12-31T20:00:00Z", "9999-12-31T23:59:59Z"),
        ):
            response = await http.get(feed, params={"start": start, "end": end})
            assert_error(response, 400, "400-201")
        # Early but representable: still answered.
        early = await http.get(failures, params={"since": "0001-01-01T00:00:00Z"})
        assert early.status_code == 200, early.text
        day = {"start": "2024-01-01T00:00:00+14:00", "end": "2024-01-02T00:00:00Z"}
        ok = await http.get(feed, params=day)
        assert ok.status_code == 200, ok.text


async def test_unknown_fields_are_ignored_and_logged_once(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends a field this server does not know keeps working, wherever the
    field is: at the top level or inside autotranscribeParams or twilioParams."""
    api = server.client("acme")
    caplog.set_level(logging.INFO)
    async with live_call(await api.stream_url()) as (guid, _), raw_client(server) as http:
        body = start_body(
            guid,
            futureTopLevel=1,
            autotranscribeParams={"language": "en-US", "unknownSetting": 1, "alsoNew": {"a": 1}},
            twilioParams={"trackMap": {"inbound": "customer"}, "newTwilioThing": True},
        )
        response = await http.post(START, json=body)
        assert response.status_code == 200, response.text
        schema = (await http.get("/openapi.json")).json()
    logged = [r.getMessage() for r in caplog.records if "unknownSetting" in r.getMessage()]
    assert len(logged) == 1, logged
    for name in ("futureTopLevel", "alsoNew", "newTwilioThing"):
        assert name in logged[0]
    # The OpenAPI description says so, and no part of the body's schema forbids them.
    start = schema["paths"][START]["post"]
    assert "ignored" in start["description"]
    assert not _forbids_extra_fields(start["requestBody"])


def _forbids_extra_fields(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("additionalProperties") is False or any(
            _forbids_extra_fields(value) for value in node.values()
        )
    if isinstance(node, list):
        return any(_forbids_extra_fields(value) for value in node)
    return False


async def test_unknown_call_400_203(server: RunningServer) -> None:
    async with raw_client(server) as http:
        assert_error(await http.post(START, json=start_body("CAnope")), 400, "400-203")
        assert_error(
            await http.post(STOP, json={"namespace": "twilio", "guid": "CAnope"}), 400, "400-203"
        )
        response = await http.get(
            "/conversation/v1/conversation/messages", params={"externalConversationId": "CAnope"}
        )
        assert_error(response, 400, "400-203")


async def test_start_and_stop_answer_with_a_trailing_slash_too(server: RunningServer) -> None:
    """The SIPREC guide writes the paths with a trailing slash: they are served as they are
    (a 307 would make a client re-post its body, which many do not)."""
    async with raw_client(server) as http:
        assert_error(await http.post(START + "/", json=start_body("CAnope")), 400, "400-203")
        assert_error(
            await http.post(STOP + "/", json={"namespace": "twilio", "guid": "CAnope"}),
            400,
            "400-203",
        )
        assert_error(await http.post(START + "/", content=b"{not json"), 400, "400-201")
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert START in paths and START + "/" not in paths


async def test_already_started_and_stopped_409_201(server: RunningServer) -> None:
    api = server.client("acme")
    async with live_call(await api.stream_url()) as (guid, _), raw_client(server) as http:
        assert_error(
            await http.post(STOP, json={"namespace": "twilio", "guid": guid}), 409, "409-201"
        )
        first = await http.post(START, json=start_body(guid))
        assert first.status_code == 200, first.text
        assert first.json()["isOk"] is True
        assert_error(await http.post(START, json=start_body(guid)), 409, "409-201")
        stopped = await http.post(STOP, json={"namespace": "twilio", "guid": guid})
        assert stopped.status_code == 200
        assert_error(
            await http.post(STOP, json={"namespace": "twilio", "guid": guid}), 409, "409-201"
        )
        # start again after stop is a resume, not an error
        assert (await http.post(START, json=start_body(guid))).status_code == 200


async def test_pending_request_409_202(server: RunningServer) -> None:
    api = server.client("acme")
    async with live_call(await api.stream_url()) as (guid, _), raw_client(server, "acme") as http:
        key = CallKey("acme", "twilio", guid)
        store = server.runtime.store
        # Another API worker is in the middle of a request for this call.
        assert store.acquire_call_lock(key, "other-worker", time.time(), 30)
        assert_error(await http.post(START, json=start_body(guid)), 409, "409-202")
        assert_error(
            await http.post(STOP, json={"namespace": "twilio", "guid": guid}), 409, "409-202"
        )
        store.release_call_lock(key, "other-worker")
        assert (await http.post(START, json=start_body(guid))).status_code == 200


async def test_first_start_needs_participant_ids(server: RunningServer) -> None:
    api = server.client("acme")
    async with live_call(await api.stream_url()) as (guid, _), raw_client(server) as http:
        body = start_body(guid)
        del body["agentId"]
        assert_error(await http.post(START, json=body), 400, "400-201")


async def test_new_agent_is_a_new_leg(server: RunningServer) -> None:
    api = server.client("acme")
    async with live_call(await api.stream_url()) as (guid, _), raw_client(server) as http:
        first = (await http.post(START, json=start_body(guid))).json()["autotranscribeResponse"]
        await http.post(STOP, json={"namespace": "twilio", "guid": guid})
        resumed = (await http.post(START, json=start_body(guid))).json()["autotranscribeResponse"]
        assert resumed["agent"]["streamId"] == first["agent"]["streamId"]
        await http.post(STOP, json={"namespace": "twilio", "guid": guid})
        transfer = (await http.post(START, json=start_body(guid, agentId="A2"))).json()[
            "autotranscribeResponse"
        ]
        assert transfer["agent"]["streamId"] != first["agent"]["streamId"]
        assert transfer["customer"]["streamId"] == first["customer"]["streamId"]


async def test_credentials(server: RunningServer) -> None:
    key = server.issue_key("acme")
    url = "/mg-autotranscribe/v1/twilio-media-stream-url"
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert_error(await http.get(url), 401, "401-201")
        wrong = {"asapp-api-id": key.api_id, "asapp-api-secret": "wrong"}
        assert_error(await http.get(url, headers=wrong), 401, "401-201")
        unknown = {"asapp-api-id": "cs-unknown", "asapp-api-secret": key.api_secret}
        assert_error(await http.get(url, headers=unknown), 401, "401-201")
        good = {"asapp-api-id": key.api_id, "asapp-api-secret": key.api_secret}
        response = await http.get(url, headers=good)
        assert response.status_code == 200
        assert response.json()["streamingUrl"].startswith(f"{server.ws_base}/twilio-media?token=")
        server.runtime.store.revoke_api_key(key.api_id, time.time())
        assert_error(await http.get(url, headers=good), 401, "401-201")


async def _closed_with(url: str) -> tuple[int | None, str | None]:
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=10)
        return ws.close_code, ws.close_reason


async def test_stream_tokens(server: RunningServer) -> None:
    api = server.client("acme")
    good_url = await api.stream_url()
    token = good_url.split("token=")[1]
    base = f"{server.ws_base}/twilio-media"

    # No token in the URL: the start frame's custom parameter "token" must carry it.
    writer = TwilioStreamWriter("MZnotoken", "CAnotoken", "AC" + "3" * 32)
    async with websockets.connect(base) as ws:
        await ws.send(writer.start())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=10)
        assert (ws.close_code, ws.close_reason) == (1008, "missing token")
    assert server.runtime.store.get_call(CallKey("acme", "twilio", "CAnotoken")) is None
    writer = TwilioStreamWriter("MZparam", "CAparam", "AC" + "3" * 32)
    async with websockets.connect(base) as ws:
        await ws.send(writer.start(custom_parameters={"token": token}))
        await asyncio.sleep(0.3)
        assert server.runtime.registry.get(CallKey("acme", "twilio", "CAparam")) is not None
    server.runtime.gateway.services.start_timeout_s = 0.5
    assert await _closed_with(base) == (1008, "missing token")
    forged = URLSafeTimedSerializer("not-the-key", salt=TOKEN_SALT).dumps({"t": "acme", "k": "x"})
    assert await _closed_with(f"{base}?token={forged}") == (1008, "stream token invalid")
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert await _closed_with(f"{base}?token={tampered}") == (1008, "stream token invalid")
    with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 301):
        old_url = await api.stream_url()
    assert await _closed_with(old_url) == (1008, "stream token expired")

    # One URL opens many calls during its life.
    async with live_call(good_url) as (first, _), live_call(good_url) as (second, _):
        assert first != second
        assert server.runtime.registry.get(CallKey("acme", "twilio", first)) is not None
        assert server.runtime.registry.get(CallKey("acme", "twilio", second)) is not None


async def test_other_tenants_token_binds_the_call_to_that_tenant(server: RunningServer) -> None:
    acme, globex = server.client("acme"), server.client("globex")
    async with live_call(await globex.stream_url()) as (guid, _):
        refused = await acme.start(guid, "C", "A")
        assert_error(refused, 400, "400-203")
        accepted = await globex.start(guid, "C", "A")
        assert accepted.status_code == 200


async def test_bad_frames_close_only_their_stream(server: RunningServer) -> None:
    api = server.client("acme")
    url = await api.stream_url()
    writer = TwilioStreamWriter("MZbad", "CAbad", "AC" + "2" * 32)
    async with live_call(url) as (good_guid, good_ws):
        cases = [
            ("not json at all", 1007, "JSON"),
            (writer.media("inbound", b"\xff" * 160, 0), 1002, "before start"),
            ("x" * 20_000, 1009, "exceeds"),
            (b"\x00\x01binary", 1003, "binary"),
        ]
        for frame, code, reason_part in cases:
            async with websockets.connect(url) as ws:
                await ws.send(frame)
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), timeout=10)
                assert ws.close_code == code
                assert reason_part.lower() in (ws.close_reason or "").lower()
        # Out of order after a good start: a second start frame.
        bad_writer = TwilioStreamWriter("MZbad2", "CAbad2", "AC" + "2" * 32)
        async with websockets.connect(url) as ws:
            await ws.send(bad_writer.start())
            await ws.send(bad_writer.start())
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=10)
            assert ws.close_code == 1002
        # The call with the bad stream was registered, then completed, not left dangling.
        record = server.runtime.store.get_call(CallKey("acme", "twilio", "CAbad2"))
        assert record is not None and record.status.value == "completed"
        # The good call is unaffected: still live and controllable.
        assert (await api.start(good_guid, "C", "A")).status_code == 200
        assert (await api.stop(good_guid)).status_code == 200


async def test_webhook_down_keeps_transcripts(server_factory: Any, tmp_path: Any) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/webhook"
    server = await server_factory(dead_url)
    api = server.client("acme")
    call = load_sample_call()
    # The first conversation window of the sample call is enough.
    first_stop = sorted(call.controls, key=lambda c: c.at_ms)[1]
    short = type(call)(
        tracks={t: b[: (first_stop.at_ms + 500) * 8] for t, b in call.tracks.items()},
        duration_ms=first_stop.at_ms + 500,
        customer_id=call.customer_id,
        agent_id=call.agent_id,
        controls=tuple(sorted(call.controls, key=lambda c: c.at_ms)[:2]),
        segments=call.segments,
    )
    played = await play_call(
        await api.stream_url(), short, api, played=PlayedCall("CAdown", speed=4)
    )
    assert [r.status_code for _, r in played.control_responses] == [200, 200]
    after = (await api.messages("CAdown")).json()
    assert len(after["messages"]) >= 3
    await server.runtime.dispatcher.drain(10)
    failures = server.runtime.store.list_delivery_failures("acme", "CAdown")
    assert {f.message_id for f in failures} == {
        m.message_id
        for m in server.runtime.store.list_messages(
            CallKey("acme", "twilio", "CAdown"), 1000, time.time()
        )
    }
    assert all(f.status_code is None and "Connect" in f.reason for f in failures)
