"""Which call a recording belongs to: the identifier the contact centre already knows, taken from
the SBC's INVITE and written the way the API's ``guid`` expects it.

Sources (tried in the configured order; the first that yields a value wins):

``user-to-user``
    Avaya's Universal Call ID (UCID) in the ``User-to-User`` header, hex encoded in Avaya's
    "shared UUI" layout: a protocol discriminator byte (``00`` or ``04``), then elements of
    id (1 byte), length (1 byte), value; the UCID element has id ``FA`` and 8 bytes: network
    node id (2 bytes), sequence number (2 bytes), timestamp (4 bytes, UNIX seconds). Its
    decimal form, the one Avaya reports and the API's guid uses, writes those three numbers
    as 5, 5 and 10 zero-padded digits: ``00FA080019001038F725B3`` -> node 25, sequence 16,
    timestamp 955721139 -> ``00025000160955721139``.
``cisco-guid``
    Cisco's ``Cisco-Guid`` header: four 32-bit numbers as 10-digit decimals joined by ``-``
    (``0867617078-0032318833-2221801472-0002236962``); a 32-digit hex form becomes that.
``header:<Name>``
    Any header (``header:X-UCID``, ``header:X-Genesys-CallUUID``), taken as it is.
``metadata-session``
    The RFC 7865 metadata's communication session id: base64 of 16 bytes, written as a UUID.
``call-id``
    The SIP Call-ID of the recording session itself (unknown to the contact centre, so only
    a last resort); characters the guid cannot hold become ``_``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass

from callscribe.model import GUID_PATTERN
from callscribe.siprec.metadata import RecordingMetadata

KNOWN_SOURCES = ("user-to-user", "cisco-guid", "metadata-session", "call-id")
UCID_ELEMENT_ID = 0xFA
UCID_LENGTH = 8
_PROTOCOL_DISCRIMINATORS = (0x00, 0x04)
_CISCO_DECIMAL = re.compile(r"^\d{10}-\d{10}-\d{10}-\d{10}$")
_CISCO_HEX = re.compile(r"^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{8}$")


class CallIdConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CallIdSource:
    kind: str  # one of KNOWN_SOURCES or "header"
    header: str | None = None

    def __str__(self) -> str:
        return f"header:{self.header}" if self.kind == "header" else self.kind


def parse_sources(spec: str) -> tuple[CallIdSource, ...]:
    sources = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        lowered = item.lower()
        if lowered in KNOWN_SOURCES:
            sources.append(CallIdSource(lowered))
        elif lowered.startswith("header:") and re.fullmatch(r"[A-Za-z0-9\-_.!%*+`'~]+", item[7:]):
            sources.append(CallIdSource("header", item[7:]))
        else:
            raise CallIdConfigError(
                f"unknown call-id source {item!r}: use {', '.join(KNOWN_SOURCES)} or header:<Name>"
            )
    if not sources:
        raise CallIdConfigError("no call-id source configured")
    return tuple(sources)


def ucid_from_user_to_user(value: str) -> str | None:
    """The decimal UCID in a ``User-to-User`` value, or None when it holds none."""
    data = value.split(";", 1)[0].strip().strip('"').strip()
    if len(data) % 2 or not data:
        return None
    try:
        raw = binascii.unhexlify(data)
    except (binascii.Error, ValueError):
        return None
    # Some SBCs pass the shared-UUI elements without the protocol discriminator byte.
    for start in (1, 0) if raw[:1] and raw[0] in _PROTOCOL_DISCRIMINATORS else (0,):
        position = start
        while position + 2 <= len(raw):
            element_id, length = raw[position], raw[position + 1]
            value_bytes = raw[position + 2 : position + 2 + length]
            if len(value_bytes) < length:
                break
            if element_id == UCID_ELEMENT_ID and length >= UCID_LENGTH:
                return decimal_ucid(value_bytes[:UCID_LENGTH])
            position += 2 + length
    return None


def decimal_ucid(ucid: bytes) -> str:
    node = int.from_bytes(ucid[0:2], "big")
    sequence = int.from_bytes(ucid[2:4], "big")
    timestamp = int.from_bytes(ucid[4:8], "big")
    return f"{node:05d}{sequence:05d}{timestamp:010d}"


def cisco_guid(value: str) -> str | None:
    value = value.strip()
    if _CISCO_DECIMAL.match(value):
        return value
    if _CISCO_HEX.match(value):
        digits = value.replace("-", "")
        return "-".join(f"{int(digits[i : i + 8], 16):010d}" for i in range(0, 32, 8))
    return None


def metadata_session_guid(metadata: RecordingMetadata | None) -> str | None:
    if metadata is None or not metadata.session_ids:
        return None
    session_id = metadata.session_ids[0]
    try:
        raw = base64.b64decode(session_id, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 16:
        return str(uuid.UUID(bytes=raw))
    return session_id if GUID_PATTERN.fullmatch(session_id) else None


def sanitised(value: str) -> str | None:
    value = re.sub(r"[^A-Za-z0-9._:\-]", "_", value.strip())[:128]
    return value if GUID_PATTERN.fullmatch(value) else None


def resolve_call_guid(
    sources: tuple[CallIdSource, ...],
    headers: dict[str, str],
    metadata: RecordingMetadata | None,
) -> tuple[str, CallIdSource] | None:
    """The call's guid and where it came from. ``headers``: name (lower case) -> value."""
    for source in sources:
        guid: str | None = None
        if source.kind == "user-to-user":
            value = headers.get("user-to-user")
            guid = ucid_from_user_to_user(value) if value else None
        elif source.kind == "cisco-guid":
            value = headers.get("cisco-guid")
            guid = cisco_guid(value) if value else None
        elif source.kind == "header":
            value = headers.get((source.header or "").lower())
            guid = value.strip() if value and GUID_PATTERN.fullmatch(value.strip()) else None
        elif source.kind == "metadata-session":
            guid = metadata_session_guid(metadata)
        elif source.kind == "call-id":
            value = headers.get("call-id")
            guid = sanitised(value) if value else None
        if guid:
            return guid, source
    return None
