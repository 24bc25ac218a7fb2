"""API Gateway WebSocket API ($connect, $disconnect) → the live event stream's connections.
Logic lives in callscribe/."""

from callscribe.aws.services.live_lambda import handler

__all__ = ["handler"]
