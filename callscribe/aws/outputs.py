"""Issue 6's outputs on AWS: recordings and feed files in the deployment's S3 bucket.

The API Lambda links to them (S3 pre-signed URLs), the gateway tasks write recordings, the
exporter Lambda writes feed files. All three find the bucket in ``CALLSCRIBE_BLOB_S3_BUCKET``
(``Settings.blob_s3_bucket``) and the retention periods in the same settings as local mode.
Deletion is the bucket's lifecycle rules' job (``infra/data.py``); retention here only hides
what is past it, as local mode does between purges.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from callscribe.api.deps import OutputServices
from callscribe.blobs.s3 import S3BlobStore
from callscribe.config import Settings
from callscribe.recording import Recordings

DAY_S = 86_400
# Lambda and Fargate tasks may write only under /tmp; recordings and feed files are spooled
# here before they are uploaded.
SPOOL_DIR = Path(tempfile.gettempdir()) / "callscribe-spool"


def s3_blob_store(settings: Settings) -> S3BlobStore:
    if not settings.blob_s3_bucket:
        raise RuntimeError("CALLSCRIBE_BLOB_S3_BUCKET must name the recordings/exports bucket")
    return S3BlobStore(settings.blob_s3_bucket, settings.blob_s3_prefix)


def s3_recordings(settings: Settings, blobs: S3BlobStore) -> Recordings:
    return Recordings(
        blobs, SPOOL_DIR, settings.recording_retention_days * DAY_S, settings.recording
    )


def s3_output_services(settings: Settings) -> OutputServices:
    """The API's outputs: links are pre-signed S3 GETs, so no download route is served."""
    blobs = s3_blob_store(settings)
    return OutputServices(
        blobs=blobs,
        recordings=s3_recordings(settings, blobs),
        export_retention_s=settings.export_retention_days * DAY_S,
        link_ttl_s=settings.link_ttl_s,
    )
