"""Write the sample call as Amazon Connect puts it in Kinesis Video Streams: a GetMedia payload
(Matroska documents of unknown size, one per fragment, two PCM tracks, Connect's and GetMedia's
tags), and measure how fast CallScribe's reader parses it.

    .venv/bin/python tools/make_connect_stream.py --out /tmp/connect.mkv
    ffprobe -show_format -show_streams /tmp/connect.mkv     # an independent look at it
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from callscribe.audio import ulaw_to_pcm16
from callscribe.connect.media import AGENT_TRACK, CUSTOMER_TRACK, AudioReceived, ConnectMediaDemuxer
from callscribe.testing.connect_stream import connect_fragments, two_party_pcm
from callscribe.testing.simulate import load_sample_call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .mkv file to write")
    parser.add_argument("--contact-id", default="d111f871-5fe7-40b1-b5f7-6b67060de0c2")
    parser.add_argument("--fragment-ms", type=int, default=1000)
    parser.add_argument("--block-ms", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="parses timed for the throughput")
    args = parser.parse_args(argv)

    call = load_sample_call()
    customer, agent = two_party_pcm(
        ulaw_to_pcm16(call.tracks["inbound"]), ulaw_to_pcm16(call.tracks["outbound"])
    )
    fragments = connect_fragments(
        customer,
        agent,
        contact_id=args.contact_id,
        fragment_ms=args.fragment_ms,
        block_ms=args.block_ms,
    )
    data = b"".join(f.encode((0, f.number)) for f in fragments)
    args.out.write_bytes(data)

    best = float("inf")
    for _ in range(args.rounds):
        demuxer = ConnectMediaDemuxer()
        started = time.perf_counter()
        outputs = demuxer.feed(data) + demuxer.end_of_body()
        best = min(best, time.perf_counter() - started)
    read = {
        channel: np.concatenate(
            [o.pcm16 for o in outputs if isinstance(o, AudioReceived) and o.channel == channel]
        )
        for channel in (CUSTOMER_TRACK, AGENT_TRACK)
    }
    exact = np.array_equal(read[CUSTOMER_TRACK], customer) and np.array_equal(
        read[AGENT_TRACK], agent
    )
    print(
        f"{args.out}: {len(fragments)} fragments, {len(data)} bytes; parsed back "
        f"{'sample-exact' if exact else 'WITH DIFFERENCES'} at {len(data) / best / 1e6:.1f} MB/s "
        f"({len(customer) / 8000 / best:.0f}x real time for one call)"
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
