"""start-streaming's transcription settings: detailedToken, redactionOutput, language; and
the OpenAPI description."""

from __future__ import annotations

import re
from dataclasses import replace

import httpx
import numpy as np
import pytest

from callscribe.asr.base import WHISPER_LANGUAGES, AsrRequest, AsrResult
from callscribe.asr.whisper import FasterWhisperEngine
from callscribe.testing.simulate import PlayedCall, WebhookReceiver, load_sample_call, play_call
from tests.conftest import RunningServer
from tests.test_e2e_twilio import wait_for_quiet

pytestmark = pytest.mark.e2e


def second_window_only():
    """The sample call from the hold on: the PIN and the end of the call."""
    call = load_sample_call()
    controls = sorted(call.controls, key=lambda c: c.at_ms)
    return replace(call, controls=tuple(controls[2:]))


async def test_detailed_tokens_and_both_redaction_outputs(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    call = second_window_only()
    api = server.client("acme")
    played = await play_call(
        await api.stream_url(),
        call,
        api,
        played=PlayedCall("CAdetailed", speed=6),
        autotranscribe_params={"detailedToken": True, "redactionOutput": "redacted_and_unredacted"},
    )
    assert [r.status_code for _, r in played.control_responses] == [200, 200]
    await wait_for_quiet(receiver)
    messages = [m.body for m in receiver.messages]
    assert len(messages) >= 5
    for body in messages:
        response = body["autotranscribeResponse"]
        utterance = response["utterance"][0]
        assert set(utterance) == {"text", "unredactedText", "tokens", "unredactedTokens"}
        tokens = utterance["tokens"]
        assert tokens and len(tokens) == len(utterance["unredactedTokens"])
        for token in tokens:
            assert set(token) == {"text", "start", "end", "confidence"}
            assert response["start"] - 20 <= token["start"] <= token["end"] <= response["end"] + 20
            assert 0.0 <= token["confidence"] <= 1.0
        starts = [t["start"] for t in tokens]
        assert starts == sorted(starts)

    pin = next(s for s in call.segments if s.contains_pin)
    pin_body = next(
        b
        for b in messages
        if b["sender"]["role"] == "customer"
        and b["autotranscribeResponse"]["start"] < pin.end_ms
        and b["autotranscribeResponse"]["end"] > pin.start_ms
    )
    utterance = pin_body["autotranscribeResponse"]["utterance"][0]
    assert "####" in utterance["text"]
    assert re.search(r"4\W*7\W*2\W*9|four", utterance["unredactedText"].lower())
    assert any(t["text"].strip(".,") == "####" for t in utterance["tokens"])
    assert not any(re.search(r"\d", t["text"]) for t in utterance["tokens"])
    assert any(re.search(r"\d|four", t["text"].lower()) for t in utterance["unredactedTokens"])


async def test_unredacted_output_keeps_digits(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    call = second_window_only()
    api = server.client("acme")
    await play_call(
        await api.stream_url(),
        call,
        api,
        played=PlayedCall("CAraw", speed=6),
        autotranscribe_params={"redactionOutput": "unredacted"},
    )
    await wait_for_quiet(receiver)
    texts = [m.body["autotranscribeResponse"]["utterance"][0] for m in receiver.messages]
    assert all(set(u) == {"text"} for u in texts)
    joined = " ".join(u["text"] for u in texts)
    assert "#" not in joined
    assert re.search(r"4\W*7\W*2\W*9|four", joined.lower())


class RecordingAsr:
    """An AsrEngine double that records what the pipeline asks for."""

    def __init__(self) -> None:
        self.requests: list[AsrRequest] = []

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        self.requests.append(request)
        return AsrResult(text="hola", audio_ms=len(request.audio) // 16)

    async def close(self) -> None:
        pass


async def test_language_reaches_the_asr_engine(tmp_path, receiver: WebhookReceiver) -> None:
    import asyncio

    import uvicorn

    from callscribe.auth import create_api_key
    from callscribe.config import Settings, WebhookSettings
    from callscribe.server import LocalRuntime, create_local_app
    from callscribe.serving import uvicorn_config
    from callscribe.testing.simulate import ApiClient, bind_loopback

    asr = RecordingAsr()
    settings = Settings(data_dir=tmp_path, webhook=WebhookSettings(url=receiver.url))
    runtime = LocalRuntime.build(settings, asr=asr)
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn_config(create_local_app(runtime), settings))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    warm_up_requests = len(asr.requests)  # the lifespan's warm-up transcription
    issued = create_api_key(runtime.store, "acme")
    api = ApiClient(f"http://127.0.0.1:{sock.getsockname()[1]}", issued.api_id, issued.api_secret)
    call = second_window_only()
    call = replace(
        call,
        tracks={t: b[: 60_000 * 8] for t, b in call.tracks.items()},
        duration_ms=60_000,
        controls=(call.controls[0], replace(call.controls[1], at_ms=59_000)),
    )
    await play_call(
        await api.stream_url(),
        call,
        api,
        played=PlayedCall("CAes", speed=20),
        autotranscribe_params={"language": "es-US", "detailedToken": True},
    )
    await api.close()
    server.should_exit = True
    await task
    requests = asr.requests[warm_up_requests:]
    assert requests
    assert {r.language for r in requests} == {"es"}
    assert all(r.word_timestamps for r in requests)
    assert all(r.audio.dtype == np.float32 for r in requests)
    assert (
        receiver.messages
        and receiver.messages[0].body["autotranscribeResponse"]["utterance"][0]["text"] == "hola"
    )


def test_the_accepted_languages_are_those_a_multilingual_model_lists(
    asr_engine: FasterWhisperEngine,
) -> None:
    """start-streaming checks the language against the list shipped with the ASR port (the API
    Lambda has no model to ask): it must be the one faster-whisper's multilingual models list,
    so that an upgrade adding a language shows here."""
    assert set(asr_engine.supported_languages) == WHISPER_LANGUAGES


async def test_openapi_describes_the_contract(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/mg-autotranscribe/v1/twilio-media-stream-url",
        "/mg-autotranscribe/v1/start-streaming",
        "/mg-autotranscribe/v1/stop-streaming",
        "/conversation/v1/conversation/messages",
    }
    start = paths["/mg-autotranscribe/v1/start-streaming"]["post"]
    assert {"200", "400", "401", "409", "500"} <= set(start["responses"])
    params = paths["/conversation/v1/conversation/messages"]["get"]["parameters"]
    assert "externalConversationId" in {p["name"] for p in params}
    assert "redacted_and_unredacted" in str(spec["components"]["schemas"])
