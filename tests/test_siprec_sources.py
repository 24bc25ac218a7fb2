"""The SBC source mapping held in the Store, on a real SIPREC gateway on loopback: a mapping set
with `callscribe siprec-sources` while the recorder runs decides INVITEs from its next refresh
on, and a Store that fails meanwhile leaves the last mapping read in force (with a warning)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from callscribe.cli import main
from callscribe.config import SiprecSettings
from callscribe.testing.simulate import WebhookReceiver
from tests.conftest import RunningServer
from tests.siprec_support import SipUdpPeer, numbered_streams

GATEWAY_LOG = "callscribe.siprec.gateway"
REFRESH_S = 0.2
SBC_ADDRESS = "127.0.0.5"
REFRESH_FAILED = "could not refresh the SBC source mapping from the Store"


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


async def test_a_mapping_set_while_running_takes_effect_and_outlives_a_store_failure(
    server_factory: Callable[..., Awaitable[RunningServer]],
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No default tenant: an SBC nothing maps is refused.
    server = await server_factory(
        receiver.url, siprec=SiprecSettings(port=0, tenant="", sources_refresh_s=REFRESH_S)
    )
    gateway = server.runtime.siprec
    assert gateway is not None and gateway.recorder is not None
    recorder = gateway.recorder
    target = ("127.0.0.1", gateway.port)
    settings = server.runtime.settings
    sbc = SipUdpPeer(SBC_ADDRESS)
    try:
        refused = await sbc.invite(target, numbered_streams(2))
        assert refused.code == 403, (refused.code, refused.phrase)

        # The operator maps the SBC's network, from another process, while the recorder runs.
        set_mapping = [
            "siprec-sources",
            "set",
            "--network",
            "127.0.0.0/29",
            "--tenant",
            "acme",
            "--data-dir",
            str(settings.data_dir),
        ]
        assert await asyncio.to_thread(main, set_mapping) == 0
        await eventually(lambda: recorder.policy.tenant_of(SBC_ADDRESS) == "acme")
        guid = f"call-{uuid.uuid4().hex}"
        admitted = await sbc.invite(target, numbered_streams(2), call_id=guid)
        assert admitted.code == 200, (admitted.code, admitted.phrase)
        recording = gateway.recording_of(guid)
        assert recording is not None and recording.key.tenant == "acme"

        # The Store fails (its table is gone): each refresh warns, the mapping stays.
        with caplog.at_level(logging.INFO, logger=GATEWAY_LOG):
            with sqlite3.connect(settings.store_path) as db:
                db.execute("DROP TABLE siprec_sources")

            def failures() -> list[logging.LogRecord]:
                return [r for r in caplog.records if REFRESH_FAILED in r.getMessage()]

            await eventually(lambda: len(failures()) >= 2)
            guid = f"call-{uuid.uuid4().hex}"
            kept = await sbc.invite(target, numbered_streams(2), call_id=guid)
            assert kept.code == 200, (kept.code, kept.phrase)
            recording = gateway.recording_of(guid)
            assert recording is not None and recording.key.tenant == "acme"
        # One warning line each, no traceback, and nothing else went wrong.
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in failures())
        assert "no such table: siprec_sources" in failures()[0].getMessage()
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        sbc.close()
