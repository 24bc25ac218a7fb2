"""The whole Amazon Connect path on loopback: a contact flow's Lambdas (connect_start /
connect_stop, real Connect events) call the real API of a local server; its KVS reader assumes
the tenant's role (moto STS), finds the GetMedia endpoint (moto Kinesis Video Streams) and reads
the sample call as a live Connect stream (GetMedia answered through botocore's Stubber with MKV
bytes paced like a producer, its first response breaking midway); real Whisper; transcripts at a
real HTTP webhook."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable

import boto3
import jiwer
import pytest
from moto import mock_aws

from callscribe.config import ConnectSettings
from callscribe.connect import flow
from callscribe.connect.kvs import BotoMediaSources
from callscribe.redaction import redact
from callscribe.store.base import ConnectAccess
from callscribe.testing.connect_stream import SimulatedKvsStream
from callscribe.testing.simulate import SampleCall, WebhookReceiver, load_sample_call
from functions import connect_start, connect_stop
from tests.aws_fixtures import LambdaContext
from tests.conftest import RunningServer
from tests.connect_support import (
    CONTACT_ID,
    EXTERNAL_ID,
    READER_ROLE_ARN,
    REGION,
    StubbedKvs,
    create_kvs_stream,
    sample_fragments,
)
from tests.test_e2e_twilio import normalise, transcribed_windows, wait_for_quiet

pytestmark = pytest.mark.e2e

SPEED = 4.0
FRAGMENT_MS = 1000


def connect_event(stream_arn: str, start_fragment: str | None, sample: SampleCall) -> dict:
    audio = {"StreamARN": stream_arn, "StartTimestamp": "1726677688724"}
    if start_fragment is not None:
        audio["StartFragmentNumber"] = start_fragment
    return {
        "Details": {
            "ContactData": {
                "Attributes": {"customerId": sample.customer_id},
                "Channel": "VOICE",
                "ContactId": CONTACT_ID,
                "InitialContactId": CONTACT_ID,
                "InitiationMethod": "INBOUND",
                "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/d5b716a2-10bb",
                "LanguageCode": "en-US",
                "MediaStreams": {"Customer": {"Audio": audio}},
                "PreviousContactId": None,
            },
            "Parameters": {"agentId": sample.agent_id},
        },
        "Name": "ContactFlowEvent",
    }


async def test_connect_contact_end_to_end(
    server_factory: Callable[..., Awaitable[RunningServer]],
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    sample = load_sample_call()
    with mock_aws():
        server = await server_factory(
            receiver.url,
            connect=ConnectSettings(
                read_timeout_s=3, retry_backoff_s=0.1, stopped_call_timeout_s=6
            ),
        )
        runtime = server.runtime
        assert runtime.connect is not None
        runtime.store.put_connect_access(
            ConnectAccess("acme", READER_ROLE_ARN, EXTERNAL_ID, time.time())
        )
        issued = server.issue_key("acme")
        secret_arn = boto3.client("secretsmanager").create_secret(
            Name="callscribe/connect-app",
            SecretString=json.dumps({"apiId": issued.api_id, "apiSecret": issued.api_secret}),
        )["ARN"]
        monkeypatch.setenv("CALLSCRIBE_API_URL", server.base_url)
        monkeypatch.setenv("CALLSCRIBE_CREDENTIALS_SECRET_ARN", secret_arn)
        flow.default_handler.cache_clear()

        stream_arn = create_kvs_stream()
        fragments = sample_fragments(fragment_ms=FRAGMENT_MS)
        stream = SimulatedKvsStream(fragments, speed=SPEED, ends=False)
        # The first GetMedia breaks 400 kB in (mid-fragment): the reader must resume.
        kvs = StubbedKvs(stream, stream_arn, drops=[400_000])
        runtime.connect.sources = BotoMediaSources(
            runtime.store, runtime.settings.connect, client_factory=kvs
        )

        results = []
        for control in sorted(sample.controls, key=lambda c: c.at_ms):
            while stream.stream_time_ms() - stream.start_ms < control.at_ms:
                await asyncio.sleep(0.01)
            if control.action == "start":
                fragment = fragments[control.at_ms // FRAGMENT_MS]
                event = connect_event(stream_arn, fragment.number, sample)
                result = await asyncio.to_thread(connect_start.handler, event, LambdaContext())
            else:
                event = connect_event(stream_arn, None, sample)
                result = await asyncio.to_thread(connect_stop.handler, event, LambdaContext())
            results.append((control.action, result))
        await wait_for_quiet(receiver)
        stats = runtime.stats()["amazonConnect"]
        deadline = time.monotonic() + 30
        after = None
        while time.monotonic() < deadline:
            after = await server.client("acme").messages(CONTACT_ID)
            if after.status_code == 200 and after.json()["complete"]:
                break
            await asyncio.sleep(0.2)
        flow.default_handler.cache_clear()

    # The flow's view: every start and stop succeeded, as flat string attributes.
    assert [(a, r["callscribeResult"]) for a, r in results] == [
        ("start", "ok"),
        ("stop", "ok"),
        ("start", "ok"),
        ("stop", "ok"),
    ], results
    assert all(isinstance(v, str) for _, r in results for v in r.values())
    final_stop = results[-1][1]

    # The reader: the tenant's role with its external id; each start at the flow's fragment;
    # the broken response resumed at the fragment it broke in.
    assert {call["ExternalId"] for call in kvs.assume_role} == {EXTERNAL_ID}
    starts = [
        fragments[c.at_ms // FRAGMENT_MS].number for c in sample.controls if c.action == "start"
    ]
    requested = [s.get("AfterFragmentNumber") for s in kvs.get_media]
    assert requested[0] == starts[0] and starts[1] in requested
    assert len(requested) == 3, requested  # start, resume after the break, start after the hold
    assert requested[1] not in starts

    messages = [m.body for m in receiver.messages]
    assert len(messages) >= 8
    windows = transcribed_windows(sample)
    # The call's audio starts where CallScribe began reading it: the first start's fragment.
    origin_ms = fragments.index(next(f for f in fragments if f.number == starts[0])) * FRAGMENT_MS
    for body in messages:
        assert body["externalConversationId"] == CONTACT_ID
        role = body["sender"]["role"]
        expected_id = sample.customer_id if role == "customer" else sample.agent_id
        assert body["sender"]["externalId"] == expected_id
        r = body["autotranscribeResponse"]
        start, end = r["start"] + origin_ms, r["end"] + origin_ms
        # Reading starts at the flow's fragment, up to a fragment before the start request.
        assert any(lo - FRAGMENT_MS - 100 <= start and end <= hi + 500 for lo, hi in windows), r

    wer = {}
    for track, role in (("inbound", "customer"), ("outbound", "agent")):
        reference = " ".join(
            redact(s.text) for s in sample.segments if s.track == track and s.transcribed
        )
        hypothesis = " ".join(
            " ".join(u["text"] for u in b["autotranscribeResponse"]["utterance"])
            for b in messages
            if b["sender"]["role"] == role
        )
        wer[role] = jiwer.wer(normalise(reference), normalise(hypothesis))
        assert wer[role] <= 0.25, (role, wer[role], reference, hypothesis)
    print(f"\nConnect end to end: WER {wer}; millis-behind-now {stats['millisBehindNow']}")

    pin = next(s for s in sample.segments if s.contains_pin)
    pin_text = " ".join(
        u["text"]
        for b in messages
        if b["sender"]["role"] == "customer"
        and b["autotranscribeResponse"]["start"] + origin_ms < pin.end_ms
        and b["autotranscribeResponse"]["end"] + origin_ms > pin.start_ms
        for u in b["autotranscribeResponse"]["utterance"]
    )
    assert "####" in pin_text and not re.search(r"\d|four|seven|two|nine", pin_text.lower())

    # Audio read: 14-35 s and 45-73 s of the call, give or take the fragment being written.
    for role in ("Customer", "Agent"):
        duration = int(final_stop[f"callscribe{role}AudioDurationMs"])
        assert abs(duration - 49_000) <= 2 * FRAGMENT_MS, duration
        transcripts = int(final_stop[f"callscribe{role}Transcripts"])
        assert transcripts == sum(1 for b in messages if b["sender"]["role"] == role.lower())

    # Read live: KVS's measure of how far behind the stream the reader was is reported, and
    # a reader that could not keep up with four times real time would be tens of seconds
    # behind by the end of the call (the bound is loose: CI machines are shared).
    assert stats["readersOpened"] == 2
    assert stats["millisBehindNow"]["maxEver"] is not None
    assert stats["millisBehindNow"]["maxEver"] < 10 * FRAGMENT_MS

    # After the call: the same messages, complete once the stopped contact timed out.
    assert after is not None and after.status_code == 200
    assert after.json()["complete"] is True
    assert after.json()["namespace"] == "amazonconnect"
    assert after.json()["messages"] == messages
