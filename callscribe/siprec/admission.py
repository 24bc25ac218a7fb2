"""SIPREC's own rule for start/stop on a live call, handed to each call it opens."""

from __future__ import annotations

from callscribe.calls import CallSession
from callscribe.model import CallError, ErrorCode


def refuse_while_closing(call: CallSession) -> None:
    """After a BYE the call is finishing its last utterances: a start or stop then is answered
    with 409-BYE_IN_PROGRESS, not applied to a call about to complete."""
    if call.closing:
        raise CallError(
            ErrorCode.BYE_IN_PROGRESS,
            f"call {call.key.guid} received a SIPREC BYE; its last utterances are being "
            "transcribed",
        )
