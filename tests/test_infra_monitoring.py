"""The deployment's alarms, dashboard and alarm topic, asserted by property; and the metric
names and dimensions the alarms read are the ones the services publish."""

from __future__ import annotations

import json

import pytest

from infra import monitoring
from tests.infra_support import (
    default_stack,
    default_template,
    logical_id,
    variant_stack,
    variant_template,
)

pytestmark = pytest.mark.slow


def alarms(template) -> list[dict]:
    return [a["Properties"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()]


def custom_alarm(template, name: str, service: str) -> dict:
    (alarm,) = [
        a
        for a in alarms(template)
        if a.get("MetricName") == name
        and a.get("Dimensions") == [{"Name": "service", "Value": service}]
    ]
    return alarm


def test_every_dead_letter_queue_alarms_on_its_first_message():
    stack = default_stack()
    template = default_template()
    queues = {logical_id(q) for q in stack.events.dead_letter_queues}
    assert len(queues) == len(stack.events.dead_letter_queues) >= 1
    watched = set()
    for alarm in alarms(template):
        if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible":
            (dimension,) = alarm["Dimensions"]
            watched.add(dimension["Value"]["Fn::GetAtt"][0])
            assert alarm["Threshold"] == 1
            assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert watched == queues


def test_delivery_asr_and_kvs_alarms_read_what_the_services_publish():
    template = default_template()
    failures = custom_alarm(template, "WebhookFailed", "callscribe-webhook")
    assert (failures["Statistic"], failures["Period"], failures["Threshold"]) == ("Sum", 300, 10)
    latency = custom_alarm(template, "DeliveryLatency", "callscribe-webhook")
    assert latency["ExtendedStatistic"] == "p95" and latency["Threshold"] == 2000
    assert latency["EvaluationPeriods"] == latency["DatapointsToAlarm"] == 3
    wait = custom_alarm(template, "AsrWaitP95", "callscribe-asr-worker")
    assert wait["Threshold"] == 500
    for service in ("callscribe-twilio-gateway", "callscribe-kvs-reader"):
        assert custom_alarm(template, "AsrRefused", service)["EvaluationPeriods"] == 3
        assert custom_alarm(template, "AsrLost", service)["Threshold"] == 1
    behind = custom_alarm(template, "KvsMillisBehindNow", "callscribe-kvs-reader")
    assert (behind["Statistic"], behind["Threshold"]) == ("Maximum", 5000)
    # No traffic is not an incident.
    assert {a["TreatMissingData"] for a in alarms(template)} == {"notBreaching"}
    # Without SIPREC, nothing watches a recorder that does not exist.
    assert not [a for a in alarms(template) if "siprec" in json.dumps(a.get("Dimensions"))]


def test_alarms_notify_an_encrypted_topic_and_mail_it_when_asked():
    for stack, template, mailed in (
        (default_stack(), default_template(), False),
        (variant_stack(), variant_template(), True),
    ):
        topic = logical_id(stack.monitoring.topic)
        (properties,) = [
            t["Properties"] for t in template.find_resources("AWS::SNS::Topic").values()
        ]
        assert "alias/aws/sns" in json.dumps(properties["KmsMasterKeyId"])
        for alarm in alarms(template):
            assert alarm["AlarmActions"] == [{"Ref": topic}]
            assert alarm["OKActions"] == [{"Ref": topic}]
        subscriptions = template.find_resources("AWS::SNS::Subscription")
        assert bool(subscriptions) == mailed
        if mailed:
            (subscription,) = [s["Properties"] for s in subscriptions.values()]
            assert subscription["Protocol"] == "email"
            assert subscription["Endpoint"] == "oncall@callscribe.example.com"


def test_the_variant_watches_its_siprec_recorders_and_its_own_threshold():
    template = variant_template()
    assert custom_alarm(template, "AsrLost", "callscribe-siprec-recorder")["Threshold"] == 1
    assert custom_alarm(template, "DeliveryLatency", "callscribe-webhook")["Threshold"] == 1500


def test_one_dashboard_per_stage_with_the_alarms_and_the_load():
    template = default_template()
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "callscribe-prod"
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for name in (
        "LiveCalls",
        "DeliveryLatency",
        "AsrQueueDepth",
        "UtteranceWaitP95",
        "LiveEventsDropped",
    ):
        assert name in body


def test_the_names_the_alarms_read_are_the_ones_the_code_publishes():
    from callscribe.asr.worker import METRICS_SERVICE
    from callscribe.aws.services import task_load, webhook_lambda

    assert monitoring.ASR_WORKER_METRICS == METRICS_SERVICE
    assert monitoring.TWILIO_GATEWAY_METRICS == task_load.TWILIO_GATEWAY_METRICS
    assert monitoring.KVS_READER_METRICS == task_load.KVS_READER_METRICS
    assert monitoring.SIPREC_RECORDER_METRICS == task_load.SIPREC_RECORDER_METRICS
    assert webhook_lambda.metrics.service == monitoring.WEBHOOK_METRICS
