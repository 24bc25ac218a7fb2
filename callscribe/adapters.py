"""Which adapter serves each port, chosen here and nowhere else: local mode's (SQLite, a secrets
file, the data directory's blobs, an in-process bus) or the AWS deployment's (DynamoDB, Secrets
Manager, S3, the SQS FIFO delivery queue with a copy to EventBridge). ``local`` and ``aws``
give a whole process's set; the single-port builders serve the processes that need only some
ports (the CLI, the Lambdas). AWS modules are imported only when an AWS adapter is asked for:
local mode runs without boto3.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from callscribe.blobs.base import BlobStore
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore
from callscribe.bus import DeliveryWithFanOut, EventBus, InProcessEventBus
from callscribe.config import Settings
from callscribe.recording import Recordings
from callscribe.secrets import FILE_LINK_SIGNING_KEY, FileSecrets, Secrets, new_signing_key
from callscribe.store.base import Store

if TYPE_CHECKING:
    from callscribe.aws.adapters.live_connections import LiveConnectionsPublisher
    from callscribe.aws.adapters.secrets_manager import SecretsManagerSecrets
    from callscribe.aws.settings import AwsSettings

DAY_S = 86_400
# Lambda and Fargate tasks may write only under /tmp; recordings and feed files are spooled
# here before they are uploaded.
AWS_SPOOL_DIR = Path(tempfile.gettempdir()) / "callscribe-spool"


@dataclass(frozen=True)
class Adapters:
    """The ports of one process, each on its adapter."""

    store: Store
    secrets: Secrets
    blobs: BlobStore
    bus: EventBus
    # Call audio, when a start request allows it: made by the gateways, linked by the API.
    recordings: Recordings
    # Where recordings and feed files are written before they go to ``blobs``.
    spool_dir: Path
    # The live event stream where its viewers are outside this process (AWS: the WebSocket
    # API's connections); None where there is none, or where the process keeps its own hub
    # (local mode's, callscribe.server).
    live: LiveConnectionsPublisher | None = None

    @property
    def link_signer(self) -> BlobLinkSigner | None:
        """Local mode's links point at the server, which checks this signature; S3's are
        pre-signed by S3."""
        return self.blobs.signer if isinstance(self.blobs, DirectoryBlobStore) else None


def local(settings: Settings) -> Adapters:
    """Local mode: everything in the data directory (blobs in S3 when a bucket is set)."""
    secrets = local_secrets(settings)
    blobs = local_blobs(settings, secrets)
    return Adapters(
        store=local_store(settings),
        secrets=secrets,
        blobs=blobs,
        bus=InProcessEventBus(),
        recordings=recordings(settings, blobs, settings.spool_dir),
        spool_dir=settings.spool_dir,
    )


def aws(settings: Settings, resources: AwsSettings) -> Adapters:
    """An AWS task that holds calls (the Twilio gateway, the KVS reader, the SIPREC
    recorder)."""
    blobs = s3_blobs(settings)
    store = dynamodb_store(resources.table_name)
    return Adapters(
        store=store,
        secrets=deployment_secrets(resources),
        blobs=blobs,
        bus=transcript_bus(resources),
        # Calls started with audioRecordingAllowed leave a WAV in the bucket when they end.
        recordings=recordings(settings, blobs, AWS_SPOOL_DIR),
        spool_dir=AWS_SPOOL_DIR,
        live=live_connections(store, resources),
    )


# One port at a time ----------------------------------------------------------------------------


def transcript_bus(resources: AwsSettings) -> EventBus:
    """Each transcript straight to the SQS FIFO delivery queue (its conversation's message
    group), which the webhook Lambda reads; with an event bus named, a best-effort copy to
    EventBridge for customers' own rules, off the webhook path."""
    from callscribe.aws.adapters.eventbridge_bus import EventBridgeBus
    from callscribe.aws.adapters.sqs_delivery_bus import SqsFifoDeliveryBus

    if not resources.delivery_queue_url:
        # Without it transcripts would reach no webhook, silently.
        raise RuntimeError("CALLSCRIBE_DELIVERY_QUEUE_URL must name the webhook delivery queue")
    delivery = SqsFifoDeliveryBus(resources.delivery_queue_url)
    if not resources.event_bus_name:
        return delivery
    return DeliveryWithFanOut(delivery, EventBridgeBus(resources.event_bus_name))


def live_connections(store: Store, resources: AwsSettings) -> LiveConnectionsPublisher | None:
    """The tenants' live events to their viewers' WebSocket connections, where the deployment
    has the live event stream (its callback URL is set)."""
    if not resources.live_callback_url:
        return None
    from callscribe.aws.adapters.live_connections import (
        LiveConnectionsPublisher,
        management_client,
    )

    return LiveConnectionsPublisher(store, management_client(resources.live_callback_url))


def local_store(settings: Settings) -> Store:
    from callscribe.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path)


def dynamodb_store(table_name: str) -> Store:
    from callscribe.aws.adapters.dynamodb_store import DynamoStore

    return DynamoStore(table_name)


def local_secrets(settings: Settings) -> Secrets:
    return FileSecrets(settings.secrets_path)


def deployment_secrets(resources: AwsSettings) -> SecretsManagerSecrets:
    """The deployment's own secrets (the token-signing key, the control secret) by the ARNs
    the stack passes in; every other name under the deployment's prefix."""
    from callscribe.aws.settings import CONTROL_SECRET
    from callscribe.secrets import TOKEN_SIGNING_KEY

    return secrets_manager(
        {
            TOKEN_SIGNING_KEY: resources.token_secret_arn,
            CONTROL_SECRET: resources.control_secret_arn,
        },
        resources.secrets_prefix,
    )


def secrets_manager(secret_ids: dict[str, str], prefix: str) -> SecretsManagerSecrets:
    from callscribe.aws.adapters.secrets_manager import SecretsManagerSecrets

    return SecretsManagerSecrets(secret_ids, name_prefix=prefix.rstrip("/") + "/")


def local_blobs(settings: Settings, secrets: Secrets) -> BlobStore:
    """S3 when a bucket is configured, else the data directory's ``blobs/``."""
    if settings.blob_s3_bucket:
        return s3_blobs(settings)
    signer = BlobLinkSigner(secrets.get_or_create(FILE_LINK_SIGNING_KEY, new_signing_key))
    return DirectoryBlobStore(settings.blob_dir, signer)


def s3_blobs(settings: Settings, bucket: str | None = None) -> BlobStore:
    """The deployment's recordings/exports bucket (``bucket``, else the settings')."""
    from callscribe.blobs.s3 import S3BlobStore  # boto3 only when asked for

    bucket = bucket or settings.blob_s3_bucket
    if not bucket:
        raise RuntimeError("CALLSCRIBE_BLOB_S3_BUCKET must name the recordings/exports bucket")
    return S3BlobStore(bucket, settings.blob_s3_prefix)


def recordings(settings: Settings, blobs: BlobStore, spool_dir: Path) -> Recordings:
    return Recordings(
        blobs, spool_dir, settings.recording_retention_days * DAY_S, settings.recording
    )
