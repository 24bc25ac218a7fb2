"""EventBridge Scheduler (daily, 02:00 UTC) → the utterances feed export. Logic lives in
callscribe/."""

from callscribe.aws.services.exporter_lambda import handler

__all__ = ["handler"]
