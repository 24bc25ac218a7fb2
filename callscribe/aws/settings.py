"""Where the AWS adapters find their resources: environment variables set by the CDK stack."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CONTROL_SECRET = "control-shared-secret"


class AwsResources(BaseSettings):
    """What every AWS process finds: the deployment's table and its secrets' name prefix."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_", extra="ignore")

    table_name: str
    # Secrets not passed by ARN (tenants' webhook credentials) are named <prefix><name>.
    secrets_prefix: str = "callscribe/"


class WebhookFunctionSettings(AwsResources):
    """The webhook Lambda's: the deployment-wide target's credentials, and how long a message
    may wait in the queue before it is dropped (oldest first) rather than sent."""

    webhook_secret_arn: str | None = None
    webhook_max_queue_age_s: float = Field(120.0, gt=0)


class AwsSettings(AwsResources):
    """The tasks that hold calls and the API Lambda."""

    # Where the tasks that hold calls publish transcripts: the SQS FIFO queue the webhook
    # Lambda reads (required to deliver webhooks), and the EventBridge bus that carries a copy
    # of each for customers' own rules (optional).
    delivery_queue_url: str | None = None
    event_bus_name: str | None = None
    token_secret_arn: str
    control_secret_arn: str
    webhook_secret_arn: str | None = None
    # The gateway task's private control endpoint; the API reaches it at the address the task
    # advertises in the Store (derived from the ECS task metadata unless given).
    control_port: int = Field(8081, ge=1, le=65535)
    control_url: str | None = None
    port: int = Field(8080, ge=1, le=65535)
    # The ECS cluster whose tasks own calls; a starting gateway completes the calls of owners
    # that are no longer among its live tasks. Unset: the cluster named in the task's metadata
    # (no sweep outside ECS).
    ecs_cluster: str | None = None
    # The KVS reader tasks' private control base (their Cloud Map name, e.g.
    # http://kvs-reader.prod.callscribe.internal:8081): where the API Lambda's start-streaming
    # opens Amazon Connect calls, and where a draining reader hands its calls over. Unset (in
    # the API): this deployment does not ingest Amazon Connect.
    kvs_reader_url: str | None = None
    # How often a task that holds calls publishes its load (CloudWatch EMF lines on stdout:
    # callscribe.aws.services.task_load); 0: never.
    metrics_interval_s: float = Field(60.0, ge=0)
    # The SIPREC recorder: its NLB target group, which a recorder whose deployment was replaced
    # leaves so that SBCs' pinned flows move to the new tasks. Unset: none (outside AWS).
    siprec_target_group_arn: str | None = None
    # The live event stream's WebSocket API (its stage's URLs). The tasks that hold calls post
    # each tenant's events to its viewers through the callback URL
    # (https://<api>.execute-api.<region>.amazonaws.com/<stage>); the API Lambda gives the
    # WebSocket URL (wss://…) with each live token. Unset: no live event stream.
    live_callback_url: str | None = None
    live_websocket_url: str | None = None


class LiveFunctionSettings(AwsResources):
    """The live event stream's connection Lambda: the key live tokens are signed with, and how
    long a viewer's connection is kept in the Store if API Gateway's $disconnect never comes
    (API Gateway closes every WebSocket after 2 hours)."""

    token_secret_arn: str
    live_connection_ttl_s: int = Field(2 * 3600 + 300, ge=60)
    # The live page's origin (the API's URL): the only page whose handshake is let in.
    live_page_origin: str | None = None
