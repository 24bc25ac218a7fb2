"""Custom vocabulary (``callscribe/vocabulary.py``): a call's and a tenant's terms, checked,
bounded and merged."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from callscribe.asr.base import AsrRequest, AsrResult
from callscribe.auth import create_api_key
from callscribe.bus import InProcessEventBus
from callscribe.calls import CallRegistry, Calls, CallServices, CallSession
from callscribe.config import EndpointingSettings, Settings, SiprecSettings
from callscribe.model import Role, StartRequest
from callscribe.server import LocalRuntime, create_local_app
from callscribe.serving import start_serving, stop_serving, uvicorn_config
from callscribe.store.base import CallKey, CallStatus, TenantVocabulary
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import ApiClient, Segment, bind_loopback, load_sample_call
from callscribe.transcription import TranscriptionPipeline
from callscribe.vocabulary import (
    MAX_TERM_CHARS,
    MAX_TERMS,
    MAX_TOTAL_CHARS,
    merge_vocabulary,
    total_chars,
    vocabulary_terms,
)
from tests.serve_support import TwilioCall, agent_lines, wait_until


def test_terms_are_stripped_and_case_repeats_dropped_keeping_the_first_spelling() -> None:
    assert vocabulary_terms([" iPhone 15 ", "IPHONE 15", "Zorblax", "zorblax", "Zorblax"]) == (
        "iPhone 15",
        "Zorblax",
    )
    assert vocabulary_terms([]) == ()
    # Letters of any script, digits, punctuation and inner spaces are all printable.
    assert vocabulary_terms(["Müller-Lüdenscheidt", "東京", "4G LTE+", "O'Brien & Co."]) == (
        "Müller-Lüdenscheidt",
        "東京",
        "4G LTE+",
        "O'Brien & Co.",
    )


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["ok", ""], "term 2 is empty"),
        (["x" * (MAX_TERM_CHARS + 1)], f"is {MAX_TERM_CHARS + 1} characters; at most 50"),
        (["two\nlines"], r"U\+000A"),
        (["zero\u200bwidth"], r"U\+200B \(ZERO WIDTH SPACE\)"),
        (["bell\x07"], r"U\+0007"),
        ([f"t{n}" for n in range(MAX_TERMS + 1)], "51 different terms; at most 50"),
        ([f"{n:02d}" + "z" * 48 for n in range(10)], "518 characters"),
    ],
)
def test_a_bad_or_oversized_vocabulary_is_refused_saying_why(
    terms: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        vocabulary_terms(terms)


def test_the_bounds_are_reachable_exactly() -> None:
    # 50 terms, 500 characters joined: both bounds met, neither passed.
    terms = [f"{n:02d}" + "t" * 6 for n in range(MAX_TERMS - 1)] + ["last" + "u" * 6]
    assert total_chars(terms) == MAX_TOTAL_CHARS
    assert len(vocabulary_terms(terms)) == MAX_TERMS


def test_a_merge_puts_the_calls_terms_first_then_the_tenants_without_case_repeats() -> None:
    merged = merge_vocabulary(("Acme Cloud", "Zorblax"), ("ZORBLAX", "Globex Plus", "acme cloud"))
    assert merged.terms == ("Acme Cloud", "Zorblax", "Globex Plus")
    assert merged.dropped == ()
    assert merge_vocabulary((), ("Globex",)).terms == ("Globex",)
    assert merge_vocabulary(("Acme",), ()).terms == ("Acme",)


def test_over_the_bounds_a_merge_keeps_the_call_and_each_tenant_term_that_still_fits() -> None:
    # The call's 460 characters leave 40: "Short" fits, the 45-character term does not,
    # and a later short one still does.
    call = tuple(f"{n:02d}" + "c" * 48 for n in range(9))
    assert total_chars(call) == 466
    long_term = "L" * 45
    merged = merge_vocabulary(call, ("Short", long_term, "Tiny"))
    assert merged.terms == (*call, "Short", "Tiny")
    assert merged.dropped == (long_term,)
    assert total_chars(merged.terms) <= MAX_TOTAL_CHARS

    # By count: 49 of the call's leave room for one of the tenant's.
    many = tuple(f"c{n}" for n in range(49))
    merged = merge_vocabulary(many, ("t1", "t2", "t3"))
    assert merged.terms == (*many, "t1")
    assert merged.dropped == ("t2", "t3")


def test_a_stored_term_no_longer_valid_is_dropped_from_the_merge_not_fatal() -> None:
    merged = merge_vocabulary(("Acme",), ("x" * 80, "two\nlines", "Globex"))
    assert merged.terms == ("Acme", "Globex")
    assert merged.dropped == ("x" * 80, "two\nlines")


# --------------------------------------------------------------------------- a call's requests


class RecordingAsr:
    """An engine double that records every request, finals and interims (it is also
    interim-capable, so that calls asking for interim results get them): what reaches the
    engine is under test here, not what it makes of it."""

    def __init__(self) -> None:
        # Each request, as a final (transcribe) or an interim (start_interim).
        self.requests: list[tuple[str, AsrRequest]] = []

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.requests.append(("final", request))
        return AsrResult(text="thank you", audio_ms=len(request.audio) // 16)

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult]:
        self.requests.append(("interim", request))
        decoded: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        decoded.set_result(AsrResult(text="thank", audio_ms=len(request.audio) // 16))
        return decoded

    async def close(self) -> None:
        pass


@dataclass
class LocalServer:
    runtime: LocalRuntime
    base_url: str
    asr: RecordingAsr

    def client(self, tenant: str) -> ApiClient:
        issued = create_api_key(self.runtime.store, tenant)
        return ApiClient(self.base_url, issued.api_id, issued.api_secret)


@pytest.fixture
async def local_server(tmp_path: Path) -> AsyncIterator[LocalServer]:
    asr = RecordingAsr()
    settings = Settings(data_dir=tmp_path, siprec=SiprecSettings(enabled=False))
    runtime = LocalRuntime.build(settings, asr=asr)
    sock = bind_loopback()
    server, task = await start_serving(uvicorn_config(create_local_app(runtime), settings), [sock])
    assert server.started
    yield LocalServer(runtime, f"http://127.0.0.1:{sock.getsockname()[1]}", asr)
    await stop_serving(server, task)


async def _requests_of_one_line(
    server: LocalServer, call: TwilioCall, line: Segment
) -> dict[str, set[tuple[str, ...]]]:
    """The vocabularies of what the engine was asked while ``call``'s agent said ``line``, up
    to its final, by kind of request (final, interim)."""
    first = len(server.asr.requests)

    async def final_made() -> bool:
        return any(kind == "final" for kind, _ in server.asr.requests[first:])

    await call.send_line(line, speed=4)
    await wait_until(final_made, 30, "the line's final")
    vocabularies: dict[str, set[tuple[str, ...]]] = {}
    for kind, request in server.asr.requests[first:]:
        vocabularies.setdefault(kind, set()).add(request.vocabulary)
    return vocabularies


@pytest.mark.e2e
async def test_every_request_of_a_call_carries_its_vocabulary_and_its_tenants_alone(
    local_server: LocalServer,
) -> None:
    store = local_server.runtime.store
    store.put_tenant_vocabulary(TenantVocabulary("acme", ("Acme Cloud", "Zorblax"), 0))
    store.put_tenant_vocabulary(TenantVocabulary("globex", ("Globex Plus", "Hyperion"), 0))
    lines = agent_lines(load_sample_call())

    acme = TwilioCall(local_server.client("acme"))
    await acme.open(interimResults=True, vocabulary=["Quantum Plan", "ZORBLAX"])
    # Interims and the final alike: the call's terms first, then the tenant's not repeated.
    merged = {("Quantum Plan", "ZORBLAX", "Acme Cloud")}
    assert await _requests_of_one_line(local_server, acme, lines[0]) == {
        "interim": merged,
        "final": merged,
    }

    # A new window: the tenant's vocabulary read again, the new start's terms instead.
    assert (await acme.api.stop(acme.call_sid)).status_code == 200
    store.put_tenant_vocabulary(TenantVocabulary("acme", ("Acme Mobile",), 1))
    response = await acme.api.start(
        acme.call_sid, "C1", "A1", interimResults=True, vocabulary=["Nimbus"]
    )
    assert response.status_code == 200, response.text
    merged = {("Nimbus", "Acme Mobile")}
    assert await _requests_of_one_line(local_server, acme, lines[1]) == {
        "interim": merged,
        "final": merged,
    }

    # Another tenant's call, with no vocabulary of its own: its tenant's terms, no others.
    globex = TwilioCall(local_server.client("globex"))
    await globex.open()
    assert await _requests_of_one_line(local_server, globex, lines[2]) == {
        "final": {("Globex Plus", "Hyperion")}
    }
    for call in (acme, globex):
        await call.close()
        await call.api.close()


@pytest.mark.e2e
async def test_a_bad_vocabulary_is_refused_with_the_transcription_parameter_code(
    local_server: LocalServer,
) -> None:
    api = local_server.client("acme")
    refused = {
        "vocabulary: Value error, term 2 ('two\\nlines') contains U+000A": ["ok", "two\nlines"],
        "vocabulary: Value error, 51 different terms; at most 50": [f"t{n}" for n in range(51)],
        "vocabulary: Value error, term 1 ('xxxxxxxxxxxxxxxxxxxx…') is 60 characters": ["x" * 60],
        "vocabulary.0: Input should be a valid string": [7],
        "vocabulary: Input should be a valid list": "Acme Cloud",
    }
    for message, vocabulary in refused.items():
        response = await api.start("CA" + "0" * 32, "C1", "A1", vocabulary=vocabulary)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "400-202"
        assert error["message"].startswith(message), error["message"]
    await api.close()


async def test_a_store_that_cannot_read_the_tenants_vocabulary_does_not_fail_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class UnreadableVocabularies(SqliteStore):
        def get_tenant_vocabulary(self, tenant: str) -> TenantVocabulary | None:
            raise sqlite3.OperationalError("database is locked")

    store = UnreadableVocabularies(tmp_path / "callscribe.sqlite3")
    services = CallServices(
        store,
        TranscriptionPipeline(RecordingAsr(), store, InProcessEventBus(), 3600),
        EndpointingSettings(),
    )
    calls = Calls(services, CallRegistry())
    session = await calls.open(
        CallSession,
        CallKey("acme", "twilio", "CA-unreadable"),
        channels=("inbound", "outbound"),
        channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
    )
    request = StartRequest.model_validate(
        {
            "namespace": "twilio",
            "guid": "CA-unreadable",
            "customerId": "C1",
            "agentId": "A1",
            "autotranscribeParams": {"vocabulary": ["Quantum Plan"]},
        }
    )
    await session.start(request)
    assert session.status is CallStatus.STREAMING
    assert session.vocabulary == ("Quantum Plan",)
    assert services.vocabulary_stats.as_dict() == {"tenantReadFailures": 1, "termsDropped": 0}
    assert "could not read the tenant's vocabulary" in caplog.text
    await session.complete()
    store.close()


async def test_tenant_terms_over_the_bounds_are_counted_as_dropped(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    store.put_tenant_vocabulary(TenantVocabulary("acme", ("t1", "t2", "t3"), 0))
    services = CallServices(
        store,
        TranscriptionPipeline(RecordingAsr(), store, InProcessEventBus(), 3600),
        EndpointingSettings(),
    )
    session = await Calls(services, CallRegistry()).open(
        CallSession,
        CallKey("acme", "twilio", "CA-full"),
        channels=("inbound", "outbound"),
        channel_roles={"inbound": Role.CUSTOMER, "outbound": Role.AGENT},
    )
    many = [f"c{n}" for n in range(49)]
    await session.start(
        StartRequest.model_validate(
            {
                "namespace": "twilio",
                "guid": "CA-full",
                "customerId": "C1",
                "agentId": "A1",
                "autotranscribeParams": {"vocabulary": many},
            }
        )
    )
    assert session.vocabulary == (*many, "t1")
    assert services.vocabulary_stats.as_dict() == {"tenantReadFailures": 0, "termsDropped": 2}
    await session.complete()
    store.close()


@pytest.mark.e2e
async def test_the_api_describes_the_vocabulary_as_an_extension_with_its_bounds(
    local_server: LocalServer,
) -> None:
    async with httpx.AsyncClient(base_url=local_server.base_url) as http:
        spec = (await http.get("/openapi.json")).json()
    start = spec["paths"]["/mg-autotranscribe/v1/start-streaming"]["post"]
    assert "`autotranscribeParams.vocabulary`" in start["description"]
    assert (
        "At most 50 terms of 1-50 characters each, 500 characters in all" in (start["description"])
    )
    body = start["requestBody"]["content"]["application/json"]["schema"]
    field = body["$defs"]["AutotranscribeParams"]["properties"]["vocabulary"]
    assert field["type"] == "array" and field["items"] == {"type": "string"}
    assert "CallScribe extension" in field["description"]
    assert "callscribe vocabulary set" in field["description"]


@pytest.mark.e2e
async def test_the_http_api_sets_shows_and_removes_the_keys_tenants_vocabulary_alone(
    local_server: LocalServer,
) -> None:
    store = local_server.runtime.store
    store.put_tenant_vocabulary(TenantVocabulary("globex", ("Globex Plus",), 0))
    issued = create_api_key(store, "acme")
    headers = {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}
    path = "/callscribe/v1/vocabulary"
    async with httpx.AsyncClient(base_url=local_server.base_url, headers=headers) as http:
        none = {"terms": [], "characters": 0, "updatedAt": None}
        assert (await http.get(path)).json() == none

        answer = await http.put(path, json={"terms": [" Acme Cloud", "Zorblax", "ZORBLAX"]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["terms"] == ["Acme Cloud", "Zorblax"]
        assert answer.json()["characters"] == len("Acme Cloud, Zorblax")
        assert (await http.get(path)).json() == answer.json()
        stored = store.get_tenant_vocabulary("acme")
        assert stored is not None and stored.terms == ("Acme Cloud", "Zorblax")

        refused = {
            "terms: term 2 ('two\\nlines') contains U+000A": {"terms": ["ok", "two\nlines"]},
            "terms: 51 different terms; at most 50": {"terms": [f"t{n}" for n in range(51)]},
            "terms: a vocabulary needs at least one term": {"terms": []},
            "terms: Input should be a valid list": {"terms": "Acme"},
            "terms: Field required": {"words": ["Acme"]},
        }
        for message, body in refused.items():
            answer = await http.put(path, json=body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "400-201"
            assert answer.json()["error"]["message"].startswith(message), answer.text
        stored = store.get_tenant_vocabulary("acme")
        assert stored is not None and stored.terms == ("Acme Cloud", "Zorblax")

        assert (await http.delete(path)).json() == none
        assert store.get_tenant_vocabulary("acme") is None
        assert (await http.delete(path)).json() == none
        # Another tenant's vocabulary is neither seen nor touched.
        stored = store.get_tenant_vocabulary("globex")
        assert stored is not None and stored.terms == ("Globex Plus",)
        unauthenticated = await http.get(path, headers={"asapp-api-secret": "wrong"})
        assert unauthenticated.status_code == 401
