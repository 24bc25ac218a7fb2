"""SIPREC from the command line: `callscribe siprec-sources` sets, lists and removes the SBC
source mappings in the store (local SQLite, or a deployment's DynamoDB table under moto); and
`callscribe serve` as its own process: SIGTERM in the middle of a recorded sentence still
transcribes it and completes the call, without a BYE to the SBC."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from moto import mock_aws

from callscribe.auth import create_api_key
from callscribe.aws.adapters.dynamodb_store import DynamoStore
from callscribe.cli import main
from callscribe.siprec.callid import ucid_from_user_to_user
from callscribe.store.sqlite import SqliteStore
from callscribe.testing.simulate import load_sample_call, running_receiver, running_server
from tests.aws_fixtures import REGION, AwsResources, create_resources
from tests.siprec_support import (
    FRAME_MS,
    RtpPlayback,
    SiprecApi,
    bind_rtp_sockets,
    encode_track,
    source_ports,
    start_sipp,
)


def sources_cli(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[dict[str, str]], str]:
    """A siprec-sources command: its exit code, the JSON lines it printed, its stderr."""
    code = main(["siprec-sources", *args])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, lines, err


def test_siprec_sources_set_list_remove_in_the_local_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ["--data-dir", str(tmp_path)]
    assert sources_cli(capsys, "list", *local) == (0, [], "")
    # What is stored (and printed) is the network normalised.
    assert sources_cli(capsys, "set", "--network", "192.0.2.9/24", "--tenant", "acme", *local) == (
        0,
        [{"network": "192.0.2.0/24", "tenant": "acme"}],
        "",
    )
    for network, tenant in (("198.51.100.7", "globex"), ("2001:DB8::/32", "acme")):
        assert sources_cli(capsys, "set", "--network", network, "--tenant", tenant, *local)[0] == 0
    # A network set again is replaced, however it is written.
    code, printed, _ = sources_cli(
        capsys, "set", "--network", "192.0.2.0/255.255.255.0", "--tenant", "initech", *local
    )
    assert code == 0 and printed == [{"network": "192.0.2.0/24", "tenant": "initech"}]
    listed = [
        {"network": "192.0.2.0/24", "tenant": "initech"},
        {"network": "198.51.100.7/32", "tenant": "globex"},
        {"network": "2001:db8::/32", "tenant": "acme"},
    ]
    assert sources_cli(capsys, "list", *local) == (0, listed, "")
    # The store a local server reads.
    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    assert store.siprec_sources() == {entry["network"]: entry["tenant"] for entry in listed}

    code, _, _ = sources_cli(capsys, "remove", "--network", "198.51.100.7/32", *local)
    assert code == 0
    assert store.siprec_sources() == {"192.0.2.0/24": "initech", "2001:db8::/32": "acme"}
    assert sources_cli(capsys, "remove", "--network", "198.51.100.7", *local) == (
        1,
        [],
        "error: no SIPREC source mapping for 198.51.100.7/32\n",
    )


def test_siprec_sources_bad_input_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ["--data-dir", str(tmp_path)]
    for args, error in (
        (
            ("set", "--network", "192.0.2.300/24", "--tenant", "acme"),
            "error: '192.0.2.300/24' is not an IP address or network\n",
        ),
        (
            ("set", "--network", "sbc.example.com", "--tenant", "acme"),
            "error: 'sbc.example.com' is not an IP address or network\n",
        ),
        (
            ("set", "--network", "192.0.2.0/24", "--tenant", "acme corp"),
            "error: tenant must be 1-128 letters, digits, '-' or '_' (got 'acme corp')\n",
        ),
        (
            ("remove", "--network", "192.0.2.0/40"),
            "error: '192.0.2.0/40' is not an IP address or network\n",
        ),
    ):
        assert sources_cli(capsys, *args, *local) == (2, [], error)
    assert sources_cli(capsys, "list", *local) == (0, [], "")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsResources]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield create_resources()


def test_siprec_sources_in_a_deployments_table(
    aws: AwsResources, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator runs from a laptop against the table every recorder task reads."""
    table = ["--store", "dynamodb", "--table", aws.table_name]
    assert sources_cli(capsys, "set", "--network", "10.20.0.0/16", "--tenant", "acme", *table) == (
        0,
        [{"network": "10.20.0.0/16", "tenant": "acme"}],
        "",
    )
    store = DynamoStore(aws.table_name)
    assert store.siprec_sources() == {"10.20.0.0/16": "acme"}
    # The table may come from the environment instead.
    monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", aws.table_name)
    code, _, _ = sources_cli(
        capsys, "set", "--network", "10.20.30.40", "--tenant", "globex", "--store", "dynamodb"
    )
    assert code == 0
    assert sources_cli(capsys, "list", "--store", "dynamodb") == (
        0,
        [
            {"network": "10.20.0.0/16", "tenant": "acme"},
            {"network": "10.20.30.40/32", "tenant": "globex"},
        ],
        "",
    )
    assert sources_cli(capsys, "remove", "--network", "10.20.0.0/16", *table)[0] == 0
    assert store.siprec_sources() == {"10.20.30.40/32": "globex"}
    assert sources_cli(capsys, "remove", "--network", "10.20.0.0/16", *table)[0] == 1


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
