"""The daily export's trigger: EventBridge Scheduler at 02:00 UTC invoking the exporter.

The stack builds its exporter (infra/exports.py) and hands it to `add_daily_export`, which
wires this schedule to it.
"""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from infra.config import DeploymentConfig

DAILY_EXPORT_CRON = "cron(0 2 * * ? *)"


class DailyExportSchedule(Construct):
    def __init__(
        self, scope: Construct, id: str, *, config: DeploymentConfig, exporter: lambda_.IFunction
    ) -> None:
        super().__init__(scope, id)
        role = iam.Role(
            self, "SchedulerRole", assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com")
        )
        # The unqualified function only: grant_invoke would add "<arn>:*" (every version and
        # alias), which the schedule never calls.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["lambda:InvokeFunction"], resources=[exporter.function_arn]
            )
        )
        self.schedule = scheduler.CfnSchedule(
            self,
            "Schedule",
            name=f"callscribe-{config.stage}-daily-export",
            description="CallScribe daily transcript export",
            schedule_expression=DAILY_EXPORT_CRON,
            schedule_expression_timezone="UTC",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=scheduler.CfnSchedule.TargetProperty(
                arn=exporter.function_arn,
                role_arn=role.role_arn,
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_retry_attempts=3, maximum_event_age_in_seconds=3600
                ),
            ),
        )
