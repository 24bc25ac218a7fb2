"""S3 adapter of the ``BlobStore`` port: links are pre-signed GET URLs (SigV4).

boto3 is imported here only (``pip install 'callscribe[aws]'``); the core never imports this
module unless a deployment names a bucket. In the AWS deployment a bucket lifecycle rule
expires ``recordings/`` and ``exports/`` objects after their retention (see README); the
``purge_older_than`` method does the same by listing, for a bucket without that rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from callscribe.blobs.base import BlobInfo, BlobNotFound, validate_key

# SigV4 pre-signed URLs live at most 7 days.
MAX_LINK_S = 7 * 24 * 3600
# Hours of stereo 8 kHz audio are hundreds of MB: upload in 16 MiB parts, two at a time, so
# memory stays bounded whatever the length.
_TRANSFER = TransferConfig(
    multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=2
)


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3", config=Config(signature_version="s3v4"))

    def _object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _info(self, key: str) -> BlobInfo:
        head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        return BlobInfo(key, head["ContentLength"], head["LastModified"].timestamp())

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        self.client.put_object(
            Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType=content_type
        )
        return self._info(key)

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        self.client.upload_file(
            str(path),
            self.bucket,
            self._object_key(key),
            ExtraArgs={"ContentType": content_type},
            Config=_TRANSFER,
        )
        return self._info(key)

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from None
            raise
        return response["Body"].read()

    def stat(self, key: str) -> BlobInfo | None:
        try:
            return self._info(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def list(self, prefix: str) -> list[BlobInfo]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                found.append(
                    BlobInfo(
                        item["Key"][len(self.prefix) :],
                        item["Size"],
                        item["LastModified"].timestamp(),
                    )
                )
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        if self.stat(key) is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        return True

    def signed_url(self, key: str, expires_in_s: int, download_name: str | None = None) -> str:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": self._object_key(key)}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        return self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=max(1, min(expires_in_s, MAX_LINK_S))
        )

    def purge_older_than(self, prefix: str, cutoff: float) -> int:
        old = [info for info in self.list(prefix) if info.modified_at < cutoff]
        for start in range(0, len(old), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = old[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Objects": [{"Key": self._object_key(i.key)} for i in batch],
                    "Quiet": True,
                },
            )
        return len(old)
