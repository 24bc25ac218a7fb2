"""Metrics the long-running AWS tasks publish: CloudWatch embedded metric format (EMF).

A task writes one JSON line per interval to standard output; the awslogs driver sends it to the
task's log group, where CloudWatch turns it into metrics (namespace ``CallScribe``, dimension
``service``) without a PutMetricData call or any permission. The lines come from
aws-lambda-powertools' ``Metrics``, which writes EMF outside Lambda too. The stack's scaling
policies and alarms read these metrics (``infra/``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

NAMESPACE = "CallScribe"

Unit = Literal["Count", "Milliseconds", "Seconds"]


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    unit: Unit = "Count"


class EmfPublisher:
    """Writes samples as one EMF line for ``service`` (the metrics' ``service`` dimension)."""

    def __init__(self, service: str, namespace: str = NAMESPACE) -> None:
        # The aws extra: only AWS tasks publish. Ephemeral: powertools' ``Metrics`` instances
        # share one set of metrics per process, so a line would carry whatever another part of
        # the process (a handler run in the same interpreter) added and had not flushed.
        from aws_lambda_powertools.metrics import EphemeralMetrics

        self.service = service
        self._metrics = EphemeralMetrics(namespace=namespace, service=service)

    def publish(self, samples: Iterable[Sample]) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        added = 0
        for sample in samples:
            self._metrics.add_metric(
                name=sample.name, unit=MetricUnit(sample.unit), value=sample.value
            )
            added += 1
        if added:
            self._metrics.flush_metrics()


async def publish_periodically(
    publisher: EmfPublisher, sample: Callable[[], list[Sample]], interval_s: float
) -> None:
    """Every ``interval_s`` until cancelled: ``sample()`` published. A failure is logged and
    the next interval tried: metrics never stop the task."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            publisher.publish(sample())
        except Exception:
            log.exception("publishing %s metrics failed", publisher.service)
