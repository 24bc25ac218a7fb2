"""The ASR counters a server keeps (``/healthz``): bounded however long it runs."""

from __future__ import annotations

from callscribe.transcription import RECENT_WAITS, AsrStats


def test_queue_waits_are_kept_for_recent_utterances_only() -> None:
    stats = AsrStats()
    for i in range(RECENT_WAITS * 5):
        stats.queue_wait_s.append(0.001 * (i % 100))
    assert len(stats.queue_wait_s) == RECENT_WAITS
    assert 94.0 <= stats.as_dict()["recentQueueWaitP95Ms"] <= 95.0  # waits of 0-99 ms
    assert AsrStats().as_dict()["recentQueueWaitP95Ms"] == 0.0
