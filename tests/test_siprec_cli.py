"""`callscribe serve` as its own process with SIPREC: SIGTERM in the middle of a recorded
sentence still transcribes it and completes the call, without a BYE to the SBC."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from callscribe.auth import create_api_key
from callscribe.siprec.callid import ucid_from_user_to_user
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import load_sample_call, running_receiver, running_server
from tests.siprec_support import (
    FRAME_MS,
    RtpPlayback,
    SiprecApi,
    bind_rtp_sockets,
    encode_track,
    source_ports,
    start_sipp,
)


async def test_sigterm_completes_siprec_calls_without_bye(tmp_path: Path) -> None:
    call = load_sample_call()
    line = next(s for s in call.segments if s.transcribed and s.track == "outbound")
    uui = "00FA0800050006" + "65A1B2C3"
    guid = ucid_from_user_to_user(uui)
    payloads = {
        "1": encode_track(call.tracks["inbound"], "PCMA"),
        "2": encode_track(call.tracks["outbound"], "PCMA"),
    }
    async with running_receiver() as receiver:
        async with running_server(
            tmp_path, receiver.url, env={"CALLSCRIBE_SIPREC_TENANT": "acme"}
        ) as server:
            issued = create_api_key(SqliteStore(tmp_path / "callscribe.sqlite3"), "acme")
            key = {"asapp-api-id": issued.api_id, "asapp-api-secret": issued.api_secret}
            async with httpx.AsyncClient(headers=key) as client:
                health = (await client.get(f"{server.base_url}/healthz")).json()
            sip_port = health["siprec"]["port"]
            assert sip_port > 0
            api = SiprecApi(server.base_url, issued.api_id, issued.api_secret)
            sources = bind_rtp_sockets(["1", "2"])
            sipp = await start_sipp(
                "siprec_call",
                ("127.0.0.1", sip_port),
                tmp_path / "sipp",
                pause_ms=120_000,
                injection=[
                    [uui, "8", "PCMA", "sip:+15550001@pstn", "sip:4002@pbx", *source_ports(sources)]
                ],
            )
            try:
                answered = await sipp.wait_logged(rf"answered {uui} (\d+) (\d+)")
                assert (await api.start(guid, "C1", "A1")).status_code == 200
                # The agent's line up to two thirds through: no end-of-speech silence yet.
                first = (line.start_ms - 300) // FRAME_MS
                last = (line.start_ms + (line.end_ms - line.start_ms) * 2 // 3) // FRAME_MS
                playback = RtpPlayback(
                    {
                        "1": ("127.0.0.1", int(answered.group(1))),
                        "2": ("127.0.0.1", int(answered.group(2))),
                    },
                    payloads,
                    8,
                    sources=sources,
                    speed=2.0,
                )
                await playback.play(first_frame=first, last_frame=last)
                await asyncio.sleep(0.5)
                assert receiver.messages == []
                server.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(server.process.wait, 60)
            finally:
                if sipp.process.returncode is None:
                    sipp.process.kill()
                await sipp.process.wait()
                await api.close()
        assert code == 0
        assert len(receiver.messages) == 1
        body = receiver.messages[0].body
        assert body["externalConversationId"] == guid
        assert body["sender"]["role"] == "agent"
        assert body["autotranscribeResponse"]["utterance"][0]["text"].strip()
        records = SqliteStore(tmp_path / "callscribe.sqlite3").find_calls("acme", guid)
        assert [(r.key.namespace, r.status.value) for r in records] == [("siprec", "completed")]
        # No BYE was sent to the SBC: the server just went.
        assert "BYE sip:" not in sipp.messages().split("ACK sip:")[-1]
