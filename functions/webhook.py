"""SQS FIFO (transcript events) → the customer's webhook. Logic lives in callscribe/."""

from callscribe.aws.services.webhook_lambda import handler

__all__ = ["handler"]
