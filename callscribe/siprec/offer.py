"""The body of a SIPREC INVITE (RFC 7866 §8): ``multipart/mixed`` with an ``application/sdp``
part and an ``application/rs-metadata+xml`` part (``application/rs-metadata`` from older SBCs).

A plain ``application/sdp`` body (an SBC set up to record without metadata) is accepted too:
streams are then told apart by label or by order. The multipart body is split with the
standard library's ``email`` parser. Problems raise :class:`OfferError` with the SIP status
to answer: 415 for a body type we do not take, 400 for a malformed one.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from email.message import Message

from callscribe.siprec.metadata import MetadataParseError, RecordingMetadata, parse_metadata
from callscribe.siprec.sdp import SdpParseError, SessionDescription, parse_sdp

SDP_TYPE = "application/sdp"
METADATA_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")
ACCEPTED_TYPES = f"{SDP_TYPE}, multipart/mixed, {', '.join(METADATA_TYPES)}"
MAX_PARTS = 16


class OfferError(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class RecordingOffer:
    sdp: SessionDescription | None
    metadata: RecordingMetadata | None


def parse_body(content_type: str | None, body: bytes) -> RecordingOffer:
    """The SDP and metadata of an INVITE, re-INVITE or UPDATE body. An empty body has neither
    (a session refresh, or a delayed offer that the caller rejects)."""
    if not body.strip():
        return RecordingOffer(None, None)
    if not content_type:
        raise OfferError(400, "body without Content-Type")
    header = _header_message(content_type)
    mime_type = header.get_content_type()
    if mime_type == SDP_TYPE:
        return RecordingOffer(_sdp(body), None)
    if mime_type in METADATA_TYPES:
        return RecordingOffer(None, _metadata(body))
    if mime_type != "multipart/mixed":
        raise OfferError(415, f"unsupported body type {mime_type}")
    if not header.get_param("boundary"):
        raise OfferError(400, "multipart body without a boundary")
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("utf-8", "replace") + body
        )
    except Exception as exc:  # the email package reports defects, but be certain
        raise OfferError(400, f"malformed multipart body: {type(exc).__name__}") from None
    if not message.is_multipart():
        raise OfferError(400, "malformed multipart body")
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts:
        raise OfferError(400, "multipart body has no parts")
    if len(parts) > MAX_PARTS:
        raise OfferError(400, f"multipart body has more than {MAX_PARTS} parts")
    sdp: SessionDescription | None = None
    metadata: RecordingMetadata | None = None
    for part in parts:
        if not isinstance(part, Message) or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        part_type = part.get_content_type()
        if part_type == SDP_TYPE and sdp is None:
            sdp = _sdp(payload)
        elif part_type in METADATA_TYPES and metadata is None:
            metadata = _metadata(payload)
        # Other parts (vendor data, a second SDP) carry nothing a recorder needs.
    if sdp is None and metadata is None:
        raise OfferError(400, "multipart body has neither SDP nor recording metadata")
    return RecordingOffer(sdp, metadata)


def _header_message(content_type: str) -> Message:
    message = Message()
    message["Content-Type"] = content_type
    return message


def _sdp(data: bytes) -> SessionDescription:
    try:
        return parse_sdp(data)
    except SdpParseError as exc:
        raise OfferError(400, f"bad SDP: {exc}") from None


def _metadata(data: bytes) -> RecordingMetadata:
    try:
        return parse_metadata(data)
    except MetadataParseError as exc:
        raise OfferError(400, f"bad recording metadata: {exc}") from None
