"""The live hub (``callscribe/live.py``) and the live event stream, token, session and page
(``callscribe/api/live.py``): the hub on its own, then a real server on loopback with real
WebSockets, real Twilio streams and the real model."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import re
import secrets
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callscribe.auth import (
    LIVE_SESSION_SALT,
    LIVE_TOKEN_SALT,
    IssuedKey,
    LiveSessions,
    LiveTokens,
)
from callscribe.bus import TranscriptEvent
from callscribe.calls import CallRegistry
from callscribe.config import LiveSettings
from callscribe.live import (
    CallEnded,
    CallStarted,
    FinalTranscript,
    LiveFeed,
    LiveHub,
    LiveSubscriptionEnded,
)
from callscribe.model import RedactionOutput
from callscribe.secrets import TOKEN_SIGNING_KEY
from callscribe.store.base import CallKey
from callscribe.testing.simulate import WebhookReceiver
from tests.conftest import RunningServer
from tests.serve_support import TwilioCall, agent_lines, wait_until

ROOT = Path(__file__).resolve().parent.parent
EVENTS = "/callscribe/v1/live/events"
QUIET_S = 0.5  # a viewer that should get nothing is watched this long


def _signed_in_as(answer: httpx.Response, tenant: str) -> bool:
    """The session endpoints' answer for a page signed in as ``tenant``, until a time to come."""
    body = answer.json()
    until = datetime.fromisoformat(body["expiresAt"]).timestamp()
    return body["signedIn"] is True and body["tenant"] == tenant and until > time.time()


ServerFactory = Callable[..., Awaitable[RunningServer]]


# The hub on its own --------------------------------------------------------------------------


def _final(tenant: str, guid: str, seq: int, text: str = "hello", role: str = "agent") -> Any:
    body = {
        "type": "transcript",
        "externalConversationId": guid,
        "streamId": "s-1",
        "sender": {"externalId": "A1", "role": role},
        "autotranscribeResponse": {
            "message": "transcript",
            "start": 1000 * seq,
            "end": 1000 * seq + 800,
            "utterance": [{"text": text}],
        },
    }
    return FinalTranscript.of(TranscriptEvent(tenant, "twilio", guid, f"m-{seq}", seq, body))


async def _next(subscription: Any, timeout_s: float = 2.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(subscription.next(), timeout_s))


async def _nothing_more(subscription: Any) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.next(), QUIET_S)


async def test_a_viewer_sees_only_its_tenants_calls_even_naming_another_tenants_guid() -> None:
    hub = LiveHub()
    hub.publish(CallStarted("acme", "twilio", "CA-acme", 1.0))
    hub.publish(CallStarted("globex", "twilio", "CA-globex", 2.0))
    acme = hub.subscribe("acme")
    globex = hub.subscribe("globex")
    globex_spying = hub.subscribe("globex", guid="CA-acme")

    assert [c["guid"] for c in acme.snapshot["calls"]] == ["CA-acme"]
    assert [c["guid"] for c in globex.snapshot["calls"]] == ["CA-globex"]
    assert globex_spying.snapshot == {"type": "snapshot", "calls": []}

    hub.publish(_final("acme", "CA-acme", 0))
    hub.publish(CallEnded("acme", "twilio", "CA-acme", 3.0))
    assert [(await _next(acme))["type"], (await _next(acme))["type"]] == ["final", "callEnded"]
    await _nothing_more(globex)
    await _nothing_more(globex_spying)


async def test_the_snapshot_holds_the_calls_so_far_and_the_stream_what_follows() -> None:
    hub = LiveHub()
    hub.publish(CallStarted("acme", "twilio", "CA-1", 10.0))
    hub.publish(_final("acme", "CA-1", 0, "first"))
    hub.publish(CallStarted("acme", "twilio", "CA-2", 5.0))
    hub.publish(CallStarted("acme", "twilio", "CA-gone", 1.0))
    hub.publish(CallEnded("acme", "twilio", "CA-gone", 2.0))
    viewer = hub.subscribe("acme")
    hub.publish(_final("acme", "CA-1", 1, "second"))

    calls = viewer.snapshot["calls"]
    assert [c["guid"] for c in calls] == ["CA-2", "CA-1"]  # by start; the ended one is gone
    assert calls[0]["startedAt"] == "1970-01-01T00:00:05.000Z"
    (first,) = calls[1]["finals"]
    assert first["message"]["autotranscribeResponse"]["utterance"] == [{"text": "first"}]
    assert first["utteranceId"] == "agent-0" and first["seq"] == 0
    # Nothing falls between the snapshot and the stream, and nothing is in both.
    event = await _next(viewer)
    assert event["seq"] == 1 and event["utteranceId"] == "agent-1000"
    await _nothing_more(viewer)

    one_call = hub.subscribe("acme", guid="CA-2", namespace="twilio")
    assert [c["guid"] for c in one_call.snapshot["calls"]] == ["CA-2"]
    assert hub.subscribe("acme", guid="CA-2", namespace="siprec").snapshot["calls"] == []


async def test_events_reach_a_viewer_in_the_order_published() -> None:
    hub = LiveHub()
    viewer = hub.subscribe("acme")
    hub.publish(CallStarted("acme", "twilio", "CA-1", 1.0))
    for seq in range(20):
        hub.publish(_final("acme", "CA-1", seq))
    hub.publish(CallEnded("acme", "twilio", "CA-1", 2.0))
    events = [await _next(viewer) for _ in range(22)]
    assert events[0]["type"] == "callStarted" and events[-1]["type"] == "callEnded"
    assert [e["seq"] for e in events[1:-1]] == list(range(20))


async def test_a_viewer_that_falls_behind_is_let_go_and_the_others_keep_everything() -> None:
    hub = LiveHub(max_pending_events=8)
    slow = hub.subscribe("acme")
    fast = hub.subscribe("acme")
    received: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seq in range(30):
        hub.publish(_final("acme", "CA-1", seq))  # never waits, whoever watches
        received.append(await _next(fast))
    assert time.perf_counter() - started < 2.0
    assert [e["seq"] for e in received] == list(range(30))
    assert slow.ended.is_set() and slow.fell_behind
    with pytest.raises(LiveSubscriptionEnded, match="fell 8 events behind"):
        await slow.next()
    assert hub.dropped == 1 and hub.viewers("acme") == 1
    # What the slow viewer lost: the 8 it had not read and the 9th, which found it full
    # (the events after those were never its: it was gone).
    assert hub.dropped_events == 9
    assert hub.stats() == {"viewers": 1, "viewersDropped": 1, "eventsDropped": 9}


async def test_closing_the_hub_lets_every_viewer_go() -> None:
    hub = LiveHub()
    viewer = hub.subscribe("acme")
    hub.close()
    with pytest.raises(LiveSubscriptionEnded, match="stopping"):
        await viewer.next()
    assert hub.viewers() == 0 and not viewer.fell_behind


@dataclass
class _Call:
    key: CallKey


async def test_the_registry_tells_the_feed_when_calls_start_and_end() -> None:
    hub = LiveHub()
    viewer = hub.subscribe("acme")
    registry = CallRegistry()
    registry.watch(LiveFeed(hub))
    key = CallKey("acme", "twilio", "CA-1")
    first, reconnected = _Call(key), _Call(key)
    registry.add(first)
    registry.add(reconnected)  # the same call, not a new one
    registry.remove(first)  # no longer the live session: no end
    registry.remove(reconnected)
    assert [(await _next(viewer))["type"] for _ in range(2)] == ["callStarted", "callEnded"]
    await _nothing_more(viewer)


async def test_a_watcher_that_fails_never_reaches_the_call() -> None:
    class Broken:
        def call_registered(self, call: object) -> None:
            raise RuntimeError("broken")

        def call_unregistered(self, call: object) -> None:
            raise RuntimeError("broken")

    registry = CallRegistry()
    registry.watch(Broken())
    call = _Call(CallKey("acme", "twilio", "CA-1"))
    registry.add(call)
    assert len(registry) == 1
    registry.remove(call)
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("redaction", "text", "stable", "unredacted"),
    [
        (RedactionOutput.REDACTED, "my pin number is ####", 17, None),
        (RedactionOutput.UNREDACTED, "my pin number is 4729", 19, None),
        (RedactionOutput.BOTH, "my pin number is ####", 17, "my pin number is 4729"),
    ],
)
async def test_interim_text_is_shown_as_the_calls_redaction_asks(
    redaction: RedactionOutput, text: str, stable: int, unredacted: str | None
) -> None:
    hub = LiveHub()
    viewer = hub.subscribe("acme")
    feed = LiveFeed(hub)
    # Stable up to "…is 47": redacted, those two digits may still grow into a longer run.
    feed.interim(
        CallKey("acme", "twilio", "CA-1"), "customer", 4200, "my pin number is 4729", 19, redaction
    )
    event = await _next(viewer)
    assert event == {
        "type": "interim",
        "namespace": "twilio",
        "guid": "CA-1",
        "utteranceId": "customer-4200",
        "role": "customer",
        "start": 4200,
        "text": text,
        "stablePrefix": stable,
        **({"unredactedText": unredacted} if unredacted else {}),
    }


# A real server --------------------------------------------------------------------------------


def _key_headers(issued: IssuedKey) -> dict[str, str]:
    return {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}


@contextlib.asynccontextmanager
async def _viewer(
    server: RunningServer, query: str = "", **connect: Any
) -> AsyncIterator[ClientConnection]:
    async with websockets.connect(f"{server.ws_base}{EVENTS}{query}", **connect) as ws:
        yield ws


async def _event(ws: ClientConnection, timeout_s: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def _silent(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), QUIET_S)


async def _refused(server: RunningServer, query: str = "", **connect: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with _viewer(server, query, **connect):
            pass
    return refused.value.response.status_code


def _signing_key(server: RunningServer) -> str:
    key = server.runtime.secrets.get(TOKEN_SIGNING_KEY)
    assert key is not None
    return key


def _stamped(server: RunningServer, salt: str, issued: IssuedKey, age_s: int) -> str:
    """A token of this server's, signed with its real key, as if issued ``age_s`` ago."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - age_s

    serializer = URLSafeTimedSerializer(_signing_key(server), salt=salt, signer=PastSigner)
    return str(serializer.dumps({"t": issued.tenant, "k": issued.api_id}))


@pytest.mark.e2e
async def test_the_stream_keeps_tenants_apart_and_orders_each_calls_events(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    acme_key, globex_key = server.issue_key("acme"), server.issue_key("globex")
    acme_call = TwilioCall(server.client("acme"))
    await acme_call.open()
    guid = acme_call.call_sid
    async with (
        _viewer(server, additional_headers=_key_headers(acme_key)) as acme,
        _viewer(server, additional_headers=_key_headers(globex_key)) as globex,
        _viewer(server, f"?guid={guid}", additional_headers=_key_headers(globex_key)) as spying,
    ):
        # First a snapshot: the call already live, for its own tenant only.
        snapshot = await _event(acme)
        assert snapshot["type"] == "snapshot"
        assert [(c["namespace"], c["guid"], c["finals"]) for c in snapshot["calls"]] == [
            ("twilio", guid, [])
        ]
        assert await _event(globex) == {"type": "snapshot", "calls": []}
        assert await _event(spying) == {"type": "snapshot", "calls": []}

        lines = agent_lines(acme_call.call)[:2]
        for line in lines:
            await acme_call.send_line(line)
        await wait_until(
            lambda: _count(receiver, guid, 2), timeout_s=90, what="two transcripts at the webhook"
        )
        await acme_call.close()  # hang-up: the call completes, then ends
        events = [await _event(acme) for _ in range(3)]
        assert [e["type"] for e in events] == ["final", "final", "callEnded"]
        assert [e["seq"] for e in events[:2]] == [0, 1]
        # Each final is the webhook's message, exactly.
        webhook = [m.body for m in receiver.messages if m.body["externalConversationId"] == guid]
        assert [e["message"] for e in events[:2]] == webhook
        for event in events:
            assert (event["namespace"], event["guid"]) == ("twilio", guid)
        assert events[0]["utteranceId"] == "agent-" + str(
            webhook[0]["autotranscribeResponse"]["start"]
        )

        # globex's own call reaches globex's viewer, and not acme's or the one filtered.
        globex_call = TwilioCall(server.client("globex"))
        await globex_call.open()
        started = await _event(globex)
        assert (started["type"], started["guid"]) == ("callStarted", globex_call.call_sid)
        await globex_call.close()
        assert (await _event(globex))["type"] == "callEnded"
        for ws in (acme, globex, spying):
            await _silent(ws)


async def _count(receiver: WebhookReceiver, guid: str, at_least: int) -> bool:
    return sum(1 for m in receiver.messages if m.body["externalConversationId"] == guid) >= at_least


@pytest.mark.e2e
async def test_a_live_token_opens_the_stream_and_no_other_token_does(
    server: RunningServer,
) -> None:
    issued = server.issue_key("acme")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.post("/callscribe/v1/live/token")).status_code == 401
        answer = await http.post("/callscribe/v1/live/token", headers=_key_headers(issued))
    assert answer.status_code == 200
    body = answer.json()
    assert body["tenant"] == "acme"
    assert body["eventsUrl"] == f"{server.ws_base}{EVENTS}?token={body['token']}"
    left_s = datetime.fromisoformat(body["expiresAt"]).timestamp() - time.time()
    assert 0 < left_s <= LiveSettings().token_ttl_s
    async with websockets.connect(body["eventsUrl"]) as ws:
        assert (await _event(ws))["type"] == "snapshot"

    signing_key = _signing_key(server)
    key = server.runtime.store.get_api_key(issued.api_id)
    assert key is not None
    not_live_tokens = {
        "expired": _stamped(server, LIVE_TOKEN_SALT, issued, LiveSettings().token_ttl_s + 5),
        "signed with another key": LiveTokens("another-" + signing_key, 120).issue(key),
        "altered": body["token"][:-2] + ("AA" if body["token"][-2:] != "AA" else "BB"),
        "a session's": LiveSessions(signing_key, 3600).issue(key),
        "a Twilio stream URL's": (await server.client("acme").stream_url()).split("token=")[1],
    }
    for what, token in not_live_tokens.items():
        assert await _refused(server, f"?token={token}") == 401, what

    # A revoked key's token is refused too.
    server.runtime.store.revoke_api_key(issued.api_id, time.time())
    assert await _refused(server, f"?token={body['token']}") == 401
    assert await _refused(server, additional_headers=_key_headers(issued)) == 401
    assert await _refused(server) == 401  # no credentials at all
    fresh = server.issue_key("acme")
    assert await _refused(server, "?namespace=fax", additional_headers=_key_headers(fresh)) == 400


@pytest.mark.e2e
async def test_handshakes_from_another_sites_pages_are_refused(server: RunningServer) -> None:
    issued = server.issue_key("acme")
    host = server.base_url.removeprefix("http://")
    session = await _sign_in(server, issued)
    cookie = {"Cookie": f"callscribe_live_session={session}"}

    evil = {"origin": "https://evil.example"}
    assert await _refused(server, additional_headers=_key_headers(issued), **evil) == 403
    assert await _refused(server, additional_headers=cookie, **evil) == 403
    other_port = {"origin": f"http://127.0.0.1:{int(host.split(':')[1]) + 1}"}
    assert await _refused(server, additional_headers=cookie, **other_port) == 403
    assert await _refused(server, additional_headers=cookie, origin="null") == 403
    # The cookie lives in a browser, which always names the page's origin.
    assert await _refused(server, additional_headers=cookie) == 403
    # The page's own origin is welcome.
    async with _viewer(server, additional_headers=cookie, origin=f"http://{host}") as ws:
        assert (await _event(ws))["type"] == "snapshot"
    bad_cookie = {"Cookie": "callscribe_live_session=forged.value"}
    assert await _refused(server, additional_headers=bad_cookie, origin=f"http://{host}") == 401


async def _sign_in(server: RunningServer, issued: IssuedKey, **headers: str) -> str:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.post(
            "/live/session",
            json={"apiId": issued.api_id, "apiSecret": issued.api_secret},
            headers=headers,
        )
    assert answer.status_code == 200, answer.text
    return answer.cookies["callscribe_live_session"]


def _set_cookie(answer: httpx.Response) -> dict[str, str]:
    """The Set-Cookie header's attributes, lower-cased (value under "value")."""
    (header,) = answer.headers.get_list("set-cookie")
    parts = [p.strip() for p in header.split(";")]
    name, _, value = parts[0].partition("=")
    assert name == "callscribe_live_session"
    attributes = {"value": value}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    return attributes


@pytest.mark.e2e
async def test_signing_in_sets_a_strict_http_only_session_cookie_and_signing_out_clears_it(
    server: RunningServer,
) -> None:
    issued = server.issue_key("acme")
    credentials = {"apiId": issued.api_id, "apiSecret": issued.api_secret}
    host = server.base_url.removeprefix("http://")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.post(
            "/live/session", json=credentials, headers={"origin": f"http://{host}"}
        )
        assert answer.status_code == 200
        assert _signed_in_as(answer, "acme")
        assert issued.api_secret not in answer.text
        cookie = _set_cookie(answer)
        assert "httponly" in cookie and cookie["samesite"].lower() == "strict"
        assert cookie["path"] == "/" and cookie["max-age"] == str(LiveSettings().session_ttl_s)
        assert "secure" not in cookie  # plain http on loopback: a Secure cookie never comes back
        assert issued.api_secret not in cookie["value"] and issued.api_id not in cookie["value"]

        # Reached over HTTPS (a TLS proxy on this host says so), the cookie is Secure.
        behind_tls = await http.post(
            "/live/session", json=credentials, headers={"x-forwarded-proto": "https"}
        )
        assert "secure" in _set_cookie(behind_tls)

        # Who the page is signed in as.
        jar = {"cookie": f"callscribe_live_session={cookie['value']}"}
        mine = await http.get("/live/session", headers=jar)
        assert mine.status_code == 200
        assert _signed_in_as(mine, "acme")
        http.cookies.clear()
        assert (await http.get("/live/session")).json() == {
            "signedIn": False,
            "tenant": None,
            "expiresAt": None,
        }
        forged = {"cookie": "callscribe_live_session=forged.value"}
        assert (await http.get("/live/session", headers=forged)).json()["signedIn"] is False

        # Refused: a wrong secret, another site's page, a form post.
        wrong = await http.post("/live/session", json={**credentials, "apiSecret": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        cross = await http.post(
            "/live/session", json=credentials, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403 and "set-cookie" not in cross.headers
        form = await http.post("/live/session", data=credentials)
        assert form.status_code == 400 and "set-cookie" not in form.headers

        signed_out = await http.delete("/live/session", headers=jar)
        assert signed_out.status_code == 204
        cleared = SimpleCookie(signed_out.headers["set-cookie"])["callscribe_live_session"]
        assert cleared.value == "" and cleared["max-age"] == "0"
        http.cookies.clear()
        evil_sign_out = await http.delete(
            "/live/session", headers={"origin": "https://evil.example"}
        )
        assert evil_sign_out.status_code == 403


@pytest.mark.e2e
async def test_a_stream_opened_by_a_session_ends_when_the_session_does(
    server: RunningServer,
) -> None:
    issued = server.issue_key("acme")
    ttl = LiveSettings().session_ttl_s
    # A session signed in almost an hour ago: two seconds of it left.
    session = _stamped(server, LIVE_SESSION_SALT, issued, ttl - 2)
    host = server.base_url.removeprefix("http://")
    async with _viewer(
        server,
        additional_headers={"Cookie": f"callscribe_live_session={session}"},
        origin=f"http://{host}",
    ) as ws:
        assert (await _event(ws))["type"] == "snapshot"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4401
    assert "sign in again" in (ws.close_reason or "")


@pytest.mark.e2e
async def test_a_slow_viewer_is_disconnected_and_the_call_goes_on(
    server_factory: ServerFactory, receiver: WebhookReceiver
) -> None:
    server = await server_factory(receiver.url, live=LiveSettings(max_pending_events=16))
    issued = server.issue_key("acme")
    call = TwilioCall(server.client("acme"))
    await call.open()
    feed, hub = server.runtime.live_feed, server.runtime.live_hub
    assert feed is not None and hub is not None

    # The slow viewer reads its snapshot, then nothing: its library takes one more message,
    # its socket's small buffer a few kilobytes, and the server's send buffer fills.
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    slow = await websockets.connect(
        f"{server.ws_base}{EVENTS}",
        sock=raw,
        additional_headers=_key_headers(issued),
        max_queue=1,
        max_size=None,
    )
    assert (await _event(slow))["type"] == "snapshot"
    fast_events: list[dict[str, Any]] = []
    async with _viewer(server, additional_headers=_key_headers(issued), max_size=None) as fast:
        assert (await _event(fast))["type"] == "snapshot"
        reading = asyncio.ensure_future(_read_into(fast, fast_events))

        # What interim results would publish, fast and large: events of 32 kB of random text
        # (the stream is compressed: repeated words would shrink to nothing), twice what the
        # kernel's send buffer can grow to, so that the slow viewer's connection is full.
        key = CallKey("acme", "twilio", call.call_sid)
        count = max(200, 2 * _largest_send_buffer() // 32_000)
        published_in: list[float] = []
        for n in range(count):
            text = secrets.token_urlsafe(24_000)
            started = time.perf_counter()
            feed.interim(key, "agent", n * 1000, text, 0, RedactionOutput.UNREDACTED)
            published_in.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)  # let the fast viewer's connection take its share
        # Publishing never waited for a viewer.
        assert max(published_in) < 0.1, max(published_in)
        await wait_until(_true_when(lambda: hub.dropped == 1), 10, "the slow viewer let go")
        assert hub.viewers("acme") == 1
        live = (await call.api.health())["live"]
        assert live["viewersDropped"] == 1 and live["viewers"] == 1
        assert live["eventsDropped"] == hub.dropped_events >= 1

        # The call goes on: its next utterance is transcribed, delivered and watched.
        await call.send_line(agent_lines(call.call)[0])
        await wait_until(
            lambda: _count(receiver, call.call_sid, 1), timeout_s=60, what="a transcript"
        )
        await wait_until(
            _true_when(lambda: any(e["type"] == "final" for e in fast_events)), 10, "final"
        )
        reading.cancel()
    await call.close()

    interims = [e for e in fast_events if e["type"] == "interim"]
    assert [e["start"] for e in interims] == [n * 1000 for n in range(count)]
    # The slow viewer, reading at last, finds its stream cut short.
    behind = 0
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(slow.recv(), 30)
            behind += 1
    assert behind < count
    assert slow.close_code in (1006, 1013)


def _largest_send_buffer() -> int:
    """The most a TCP socket's send buffer grows to on this machine (Linux: tcp_wmem's max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


async def _read_into(ws: ClientConnection, events: list[dict[str, Any]]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            events.append(json.loads(message))


def _true_when(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return check()

    return condition


@pytest.mark.e2e
async def test_the_live_page_is_served_with_its_files_and_a_strict_policy(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        page = await http.get("/live")
        assets = {name: await http.get(f"/live/assets/{name}") for name in ("live.js", "live.css")}
        missing = await http.get("/live/assets/nothing.js")
        traversal = await http.get("/live/assets/..%2Fapp.py")
        spec = (await http.get("/openapi.json")).json()
    # The token is part of the API's description, with the stream it opens; the page is not.
    token = spec["paths"]["/callscribe/v1/live/token"]["post"]
    assert EVENTS in token["description"] and "callStarted" in token["description"]
    assert "/live" not in spec["paths"] and "/live/session" not in spec["paths"]
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert re.search(r"<html lang=\"en\">", html)
    # No inline script, style or event handler: the policy would refuse them.
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"\son[a-z]+=", html) and " style=" not in html
    # Every input has a label.
    for input_id in re.findall(r"<input id=\"([^\"]+)\"", html):
        assert f'<label for="{input_id}">' in html
    assert assets["live.js"].headers["content-type"] == "text/javascript; charset=utf-8"
    assert assets["live.css"].headers["content-type"] == "text/css; charset=utf-8"
    assert all("content-security-policy" in a.headers for a in assets.values())
    assert missing.status_code == 404 and traversal.status_code == 404


def test_the_live_pages_files_are_package_data() -> None:
    """The page ships inside the package (no build step): its files match package-data."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["callscribe"]
    files = sorted((ROOT / "callscribe" / "api" / "static" / "live").iterdir())
    assert {f.name for f in files} == {"index.html", "live.js", "live.css", "favicon.svg"}
    for path in files:
        relative = path.relative_to(ROOT / "callscribe").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.e2e
async def test_the_local_page_config_session_token_and_snapshot(server: RunningServer) -> None:
    """What the page asks besides the stream: local mode's stream opens with the session
    and sends its own snapshot; /live/session/token and /live/calls answer for the session's
    tenant only, and only to this server's pages."""
    issued = server.issue_key("acme")
    call = TwilioCall(server.client("acme"))
    await call.open()
    other = TwilioCall(server.client("globex"))
    await other.open()
    host = server.base_url.removeprefix("http://")
    cookie = await _sign_in(server, issued)
    jar = {"Cookie": f"callscribe_live_session={cookie}", "origin": f"http://{host}"}
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        config = (await http.get("/live/config")).json()
        assert config == {
            "eventsUrl": f"{server.ws_base}{EVENTS}",
            "streamAuth": "session",
            "streamSendsSnapshot": True,
        }
        page = await http.get("/live")
        assert "connect-src 'self';" in page.headers["content-security-policy"]

        issued_token = (await http.post("/live/session/token", headers=jar)).json()
        assert issued_token["tenant"] == "acme"
        assert (
            issued_token["eventsUrl"] == f"{server.ws_base}{EVENTS}?token={issued_token['token']}"
        )
        crossed = await http.post(
            "/live/session/token", headers={**jar, "origin": "https://evil.example"}
        )
        assert crossed.status_code == 403
        assert (await http.post("/live/session/token")).status_code == 401

        calls = (await http.get("/live/calls", headers=jar)).json()
        assert calls["type"] == "snapshot"
        assert [c["guid"] for c in calls["calls"]] == [call.call_sid]
        one = (await http.get("/live/calls", headers=jar, params={"guid": other.call_sid})).json()
        assert one["calls"] == []  # another tenant's call is not there to see
        bad = await http.get("/live/calls", headers=jar, params={"namespace": "zoom"})
        assert bad.status_code == 400

    # The token opens this server's stream, filtered as the page asks.
    query = f"?token={issued_token['token']}&guid={call.call_sid}"
    async with _viewer(server, query) as ws:
        snapshot = await _event(ws)
        assert [c["guid"] for c in snapshot["calls"]] == [call.call_sid]
    await call.close()
    await other.close()
