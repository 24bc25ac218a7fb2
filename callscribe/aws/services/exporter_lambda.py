"""The exporter Lambda: the daily utterances feed of the AWS deployment.

EventBridge Scheduler invokes it at 02:00 UTC (``infra/export_schedule.py``) with no date, and
it exports the previous UTC day, every tenant that held an API key that day: 24 gzip JSON Lines
files per tenant under ``exports/utterances/<tenant>/<day>/`` in the bucket, then the day's run
marker. An operator re-runs a day with ``{"date": "YYYY-MM-DD"}`` (and optionally
``{"tenants": [...]}``); a re-run rewrites the same keys, so it is idempotent.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from callscribe import adapters
from callscribe.aws.settings import AwsResources
from callscribe.config import Settings
from callscribe.export import UtteranceExporter

logger = Logger(service="callscribe-exporter")
tracer = Tracer(service="callscribe-exporter")
metrics = Metrics(namespace="CallScribe", service="callscribe-exporter")


class InvalidExportRequest(ValueError):
    """The invocation's event names no valid day or tenants."""


@functools.cache
def exporter() -> UtteranceExporter:
    """Built once per Lambda container (cold start), from the function's environment."""
    return UtteranceExporter(
        adapters.dynamodb_store(AwsResources().table_name),
        adapters.s3_blobs(Settings()),
        adapters.AWS_SPOOL_DIR,
    )


def export_request(event: dict[str, Any] | None, now: float) -> tuple[date, list[str] | None]:
    """The day to export (``date`` in the event, else the UTC day before ``now``) and the
    tenants (``tenants`` in the event, else every tenant active that day)."""
    event = event or {}
    text = event.get("date")
    if text is None:
        day = (datetime.fromtimestamp(now, UTC) - timedelta(days=1)).date()
    else:
        try:
            day = date.fromisoformat(str(text))
        except ValueError:
            raise InvalidExportRequest(f"date {text!r} is not YYYY-MM-DD") from None
    if day >= datetime.fromtimestamp(now, UTC).date():
        raise InvalidExportRequest(f"{day} is not over yet (UTC): only past days are exported")
    tenants = event.get("tenants")
    if tenants is not None and (
        not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants)
    ):
        raise InvalidExportRequest("tenants must be a list of tenant names")
    return day, tenants


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    day, tenants = export_request(event, time.time())
    logger.append_keys(export_date=day.isoformat())
    summary = exporter().export_day(day, tenants)
    metrics.add_metric(name="ExportFiles", unit=MetricUnit.Count, value=summary.files)
    metrics.add_metric(
        name="ExportRows", unit=MetricUnit.Count, value=sum(summary.tenants.values())
    )
    logger.info("export finished", extra={"summary": summary.as_dict()})
    return summary.as_dict()
