"""Amazon Connect contact flow → CallScribe start-streaming (after "Start media streaming").
Logic lives in callscribe/connect/flow.py."""

from typing import Any

from callscribe.connect.flow import handle


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    return handle("start", event)
