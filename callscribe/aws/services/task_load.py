"""What a task that holds calls reports each minute as CloudWatch metrics (EMF): the stack's
dashboard and alarms read them (``infra/monitoring.py``).

Per task, dimension ``service`` (one name per ingest service):
- ``LiveCalls``: the calls it holds now;
- ``AsrLost``: utterances it could not have transcribed since the last report (each is also
  recorded among the tenant's failures), ``AsrRefused``: ASR workers' 503s it met (a refused
  utterance may still have been taken by another worker);
- ``UtteranceWaitP95``: the p95 of its recent utterances' wait for the ASR, in ms;
- the KVS readers: ``KvsMillisBehindNow``, the largest lag of the calls it reads;
- with the live event stream deployed: ``LiveEventsDropped``, live events its viewers did not
  get since the last report (the posting backlog was full, or a post to a connection failed:
  throttled, API Gateway unavailable), ``LiveEventsPosted``, posts that reached a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from callscribe.aws.adapters.task_metrics import Sample
from callscribe.ingest import IngestRuntime

# The metrics' ``service`` dimension, by ingest (the stack's alarms name the same).
TWILIO_GATEWAY_METRICS = "callscribe-twilio-gateway"
KVS_READER_METRICS = "callscribe-kvs-reader"
SIPREC_RECORDER_METRICS = "callscribe-siprec-recorder"


def load_sampler(runtime: IngestRuntime) -> Callable[[], list[Sample]]:
    """A function giving this task's samples since its previous call."""
    reported = {"errors": 0, "refused": 0, "liveDropped": 0, "livePosted": 0}

    def sample() -> list[Sample]:
        stats: dict[str, Any] = runtime.stats()
        asr = stats["asr"]
        refused = (asr.get("remoteWorkers") or {}).get("refused", 0)
        samples = [
            Sample("LiveCalls", stats["liveCalls"]),
            Sample("AsrLost", asr["errors"] - reported["errors"]),
            Sample("AsrRefused", refused - reported["refused"]),
            Sample("UtteranceWaitP95", asr["recentQueueWaitP95Ms"], "Milliseconds"),
        ]
        reported.update(errors=asr["errors"], refused=refused)
        connect = stats.get("amazonConnect")
        if connect is not None and connect["millisBehindNow"]["max"] is not None:
            behind = connect["millisBehindNow"]["max"]
            samples.append(Sample("KvsMillisBehindNow", behind, "Milliseconds"))
        publisher = runtime.adapters.live
        if publisher is not None:
            live = publisher.stats
            dropped = live.dropped + live.failed
            samples.append(Sample("LiveEventsDropped", dropped - reported["liveDropped"]))
            samples.append(Sample("LiveEventsPosted", live.posted - reported["livePosted"]))
            reported.update(liveDropped=dropped, livePosted=live.posted)
        return samples

    return sample
