"""Amazon Connect ingest: Kinesis Video Streams media (MKV) → a call's customer and agent audio.

Kept import-light on purpose: the contact-flow Lambdas ship only ``flow.py`` from this package
(stdlib only), so nothing here may import numpy, pydantic or boto3 at module load.
"""
