"""The ``BlobStore`` port (recordings, feed files) and its adapters: a directory (local mode)
and S3 (``callscribe.blobs.s3``, which alone imports boto3)."""

from callscribe.blobs.base import BlobInfo, BlobNotFound, BlobStore, key_segment

__all__ = ["BlobInfo", "BlobNotFound", "BlobStore", "key_segment"]
