"""Recording metadata (RFC 7865): who the participants are and which stream each one sends.

Two generations are in the field and both are read:

* RFC 7865, namespace ``urn:ietf:params:xml:ns:recording:1``: ids in ``session_id``,
  ``participant_id``, ``stream_id`` attributes; ``<participantstreamassoc participant_id>``
  holds ``<send>``/``<recv>`` stream ids.
* The pre-RFC drafts, namespace ``urn:ietf:params:xml:ns:recording`` (older Cisco CUBE,
  Oracle/Acme Packet releases): ids in ``id`` attributes, ``session=`` references, and
  ``<send>``/``<recv>`` directly inside ``<participant>``.

Vendor extensions (``<extensiondata>``, elements in other namespaces) are skipped. The XML is
parsed with ``defusedxml``: entity expansion, DTDs and external references are refused, as
the metadata comes from the network. Every problem raises :class:`MetadataParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

RECORDING_NAMESPACES = ("urn:ietf:params:xml:ns:recording:1", "urn:ietf:params:xml:ns:recording")
MAX_METADATA_BYTES = 256 * 1024
MAX_ELEMENTS = 5000


class MetadataParseError(ValueError):
    pass


@dataclass
class MetadataParticipant:
    participant_id: str
    aors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    sends: set[str] = field(default_factory=set)  # stream ids
    receives: set[str] = field(default_factory=set)


@dataclass
class MetadataStream:
    stream_id: str
    label: str | None
    session_id: str | None = None


@dataclass
class RecordingMetadata:
    namespace: str
    data_mode: str | None  # "complete" (a snapshot) or "partial" (an update)
    session_ids: list[str] = field(default_factory=list)
    participants: dict[str, MetadataParticipant] = field(default_factory=dict)
    streams: dict[str, MetadataStream] = field(default_factory=dict)

    def sender_of_label(self, label: str) -> MetadataParticipant | None:
        """The participant whose ``<send>`` names the stream carrying SDP ``a=label``."""
        stream_ids = {s.stream_id for s in self.streams.values() if s.label == label}
        for participant in self.participants.values():
            if participant.sends & stream_ids:
                return participant
        return None

    def merged_with(self, update: RecordingMetadata) -> RecordingMetadata:
        """This snapshot with a later one applied: a ``complete`` update replaces it, a
        ``partial`` one (RFC 7865 §6) adds and overrides by id."""
        if update.data_mode != "partial":
            return update
        merged = RecordingMetadata(
            namespace=update.namespace,
            data_mode=self.data_mode,
            session_ids=list(dict.fromkeys(self.session_ids + update.session_ids)),
            participants={**self.participants},
            streams={**self.streams, **update.streams},
        )
        for pid, participant in update.participants.items():
            known = merged.participants.get(pid)
            if known is None:
                merged.participants[pid] = participant
            else:
                merged.participants[pid] = MetadataParticipant(
                    pid,
                    aors=participant.aors or known.aors,
                    names=participant.names or known.names,
                    sends=known.sends | participant.sends,
                    receives=known.receives | participant.receives,
                )
        return merged


def parse_metadata(data: bytes) -> RecordingMetadata:
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataParseError(f"metadata longer than {MAX_METADATA_BYTES} bytes")
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise MetadataParseError(f"metadata refused: {type(exc).__name__}") from None
    except (ParseError, ValueError, UnicodeError, LookupError) as exc:
        # LookupError: an XML declaration naming an encoding Python does not know.
        raise MetadataParseError(f"metadata is not well-formed XML: {str(exc)[:80]}") from None
    namespace, local = _split(root.tag)
    if local != "recording" or namespace not in RECORDING_NAMESPACES:
        raise MetadataParseError(f"root element is not a recording: {str(root.tag)[:80]!r}")
    if sum(1 for _ in root.iter()) > MAX_ELEMENTS:
        raise MetadataParseError(f"more than {MAX_ELEMENTS} elements")
    metadata = RecordingMetadata(namespace=namespace, data_mode=None)
    associations: list[tuple[str, Element]] = []
    for child in root:
        child_namespace, name = _split(child.tag)
        if child_namespace != namespace:
            continue  # a vendor extension at the top level
        if name in ("datamode", "dataMode"):
            metadata.data_mode = _text(child)
        elif name == "session":
            session_id = _id(child, "session_id")
            if session_id:
                metadata.session_ids.append(session_id)
        elif name == "participant":
            participant = _participant(child, namespace)
            if participant is not None:
                metadata.participants[participant.participant_id] = participant
        elif name == "stream":
            stream_id = _id(child, "stream_id")
            if stream_id:
                label = child.find(f"{{{namespace}}}label")
                metadata.streams[stream_id] = MetadataStream(
                    stream_id,
                    _text(label) if label is not None else None,
                    child.get("session_id") or child.get("session"),
                )
        elif name == "participantstreamassoc":
            participant_id = child.get("participant_id") or child.get("id")
            if participant_id:
                associations.append((participant_id, child))
    for participant_id, association in associations:
        participant = metadata.participants.setdefault(
            participant_id, MetadataParticipant(participant_id)
        )
        _collect_streams(association, namespace, participant)
    return metadata


def _participant(element: Element, namespace: str) -> MetadataParticipant | None:
    participant_id = _id(element, "participant_id")
    if not participant_id:
        return None
    participant = MetadataParticipant(participant_id)
    for name_id in element.iter(f"{{{namespace}}}nameID"):
        aor = name_id.get("aor")
        if aor:
            participant.aors.append(aor.strip())
        for name in name_id.iter(f"{{{namespace}}}name"):
            if _text(name):
                participant.names.append(_text(name) or "")
    # Drafts allowed a bare <aor> and <name> too.
    for aor_element in element.findall(f"{{{namespace}}}aor"):
        if _text(aor_element):
            participant.aors.append(_text(aor_element) or "")
    _collect_streams(element, namespace, participant)
    return participant


def _collect_streams(element: Element, namespace: str, participant: MetadataParticipant) -> None:
    for send in element.findall(f"{{{namespace}}}send"):
        if _text(send):
            participant.sends.add(_text(send) or "")
    for recv in element.findall(f"{{{namespace}}}recv"):
        if _text(recv):
            participant.receives.add(_text(recv) or "")


def _id(element: Element, attribute: str) -> str | None:
    value = element.get(attribute) or element.get("id")
    return value.strip() if value and value.strip() else None


def _text(element: Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _split(tag: object) -> tuple[str, str]:
    if not isinstance(tag, str):
        return "", ""  # comments and processing instructions
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag
