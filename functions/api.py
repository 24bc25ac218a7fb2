"""API Gateway → the CallScribe API (FastAPI through Mangum). Logic lives in callscribe/."""

from callscribe.aws.services.api_lambda import handler

__all__ = ["handler"]
