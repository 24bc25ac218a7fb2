"""SIP messages (RFC 3261 §7): parsing, framing on stream transports, and building responses.

Sans-IO: bytes in, :class:`sipmessage.Request` / :class:`sipmessage.Response` out. Header
*values* are parsed by the ``sipmessage`` package (Via, CSeq, From/To addresses, URIs, media
types); this module does what it does not: tolerant framing (leading blank lines, folded
header lines, ``\\n`` line ends, Content-Length over UDP and TCP), size limits, and errors that
say what is wrong. Every problem raises :class:`SipParseError`, never anything else.

A request that is broken but still carries Via, From, To, Call-ID and CSeq can be answered
(400 with the reason); :attr:`SipParseError.request` is then set. Without them no response can
be routed or matched by the sender, so the message is dropped (and logged by the server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipmessage import URI, Address, Request, Response, Via
from sipmessage.message import COMPACT_FORMS

SIP_VERSION = "SIP/2.0"
# A UDP datagram holds at most 65,507 bytes; a SIPREC INVITE with metadata is a few KB.
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 256 * 1024
MAX_HEADER_LINES = 200
# The headers a response copies from its request (RFC 3261 §8.2.6.2): without all of them a
# response cannot be routed back or matched to its transaction.
ANSWERABLE_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")

_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~\-]+$")
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9.!%*_+`'~\-]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?$")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MAGIC_COOKIE = "z9hG4bK"


class SipParseError(ValueError):
    """A message that is not valid SIP. ``request`` is set when a 400 can still be sent."""

    def __init__(self, reason: str, request: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


def safe_text(text: str, limit: int = 100) -> str:
    """A value safe to put in a reason phrase or a log line: printable ASCII, clipped."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def canonical_header_name(name: str) -> str:
    return COMPACT_FORMS.get(name.lower(), name) if len(name) == 1 else name


def split_header_block(block: bytes) -> list[str]:
    """The header block's lines, unfolded (a line starting with space or tab continues the
    previous one, RFC 3261 §7.3.1)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"header bytes are not UTF-8 (at byte {exc.start})") from None
    lines: list[str] = []
    for raw in re.split(r"\r?\n", text):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw)
    return lines


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one whole message. ``datagram``: a UDP datagram, whose body may carry padding
    beyond Content-Length (it is cut) and may omit Content-Length (the rest is the body)."""
    # RFC 3261 §7.5: empty lines before the start line are ignored (keep-alives, padding).
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    end = _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4)
    if end is None:
        if len(data) > MAX_HEADER_BYTES:
            raise SipParseError(f"headers longer than {MAX_HEADER_BYTES} bytes")
        raise SipParseError("no blank line after the headers")
    lines = split_header_block(data[: end.start()])
    body = data[end.end() :]
    if len(lines) > MAX_HEADER_LINES:
        raise SipParseError(f"more than {MAX_HEADER_LINES} header lines")

    message = _start_line(lines[0])
    problem: str | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            problem = problem or f"malformed header line {safe_text(line, 40)!r}"
            continue
        message.headers.add(canonical_header_name(name), value.strip())

    lengths = message.headers.getlist("Content-Length")
    if lengths:
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,9}", lengths[0]):
            problem = problem or f"malformed Content-Length {safe_text(', '.join(lengths), 40)!r}"
        else:
            length = int(lengths[0])
            if length > MAX_BODY_BYTES:
                problem = problem or f"body of {length} bytes exceeds {MAX_BODY_BYTES}"
            elif length > len(body):
                problem = problem or f"body shorter than Content-Length {length}"
            else:
                # Over UDP a datagram may carry bytes beyond the message (§18.3): cut them.
                body = body[:length]
    elif not datagram:
        body = b""
    if len(body) > MAX_BODY_BYTES:
        problem = problem or f"body exceeds {MAX_BODY_BYTES} bytes"
    message.body = body

    if problem is not None:
        answerable = message if isinstance(message, Request) and _answerable(message) else None
        raise SipParseError(problem, answerable)
    if isinstance(message, Request):
        _check_request(message)
    return message


def _start_line(line: str) -> Request | Response:
    request = _REQUEST_LINE.match(line)
    if request is not None:
        # The Request-URI is checked with the other headers (so that a 400 can be sent).
        message = Request(method=request.group(1), uri=URI(scheme="sip", host="invalid"))
        message.raw_uri = request.group(2)  # type: ignore[attr-defined]
        return message
    status = _STATUS_LINE.match(line)
    if status is not None:
        return Response(code=int(status.group(1)), phrase=status.group(2) or "")
    raise SipParseError(f"not a SIP request or status line: {safe_text(line, 60)!r}")


def _answerable(message: Request | Response) -> bool:
    return isinstance(message, Request) and all(
        message.headers.get(name) for name in ANSWERABLE_HEADERS
    )


def _check_request(request: Request) -> None:
    """The headers every request needs (RFC 3261 §8.1.1) and that the UAS relies on."""
    answerable = request if _answerable(request) else None
    for name in ANSWERABLE_HEADERS:
        if not request.headers.get(name):
            raise SipParseError(f"missing {name} header", answerable)
    try:
        request.uri = URI.parse(request.raw_uri)  # type: ignore[attr-defined]
    except ValueError:
        raise SipParseError(
            f"malformed Request-URI {safe_text(request.raw_uri, 60)!r}",  # type: ignore[attr-defined]
            answerable,
        ) from None
    checks = (
        ("Via", lambda: request.via),
        ("CSeq", lambda: request.cseq),
        ("From", lambda: request.from_address),
        ("To", lambda: request.to_address),
    )
    for name, check in checks:
        try:
            check()
        except (ValueError, KeyError):
            raise SipParseError(f"malformed {name} header", answerable) from None
    cseq = request.cseq
    if cseq.method != request.method:
        raise SipParseError(
            f"CSeq method {safe_text(cseq.method, 20)} does not match {request.method}", answerable
        )
    if cseq.sequence >= 2**31:
        raise SipParseError("CSeq number out of range", answerable)
    max_forwards = request.headers.get("Max-Forwards")
    if max_forwards is not None and not re.fullmatch(r"[0-9]{1,3}", max_forwards):
        raise SipParseError("malformed Max-Forwards header", answerable)


# Request helpers ----------------------------------------------------------------------------


def tag_of(address: Address) -> str | None:
    return address.parameters.get("tag")


def transaction_branch(request: Request) -> str:
    """The top Via's branch; RFC 2543 peers without the magic cookie get a key built from the
    fields that identified a transaction then (§17.2.3)."""
    via = request.via[0]
    branch = via.parameters.get("branch")
    if branch and branch.startswith(_MAGIC_COOKIE):
        return branch
    return "|".join(
        (
            "rfc2543",
            branch or "",
            request.call_id,
            str(request.cseq.sequence),
            tag_of(request.from_address) or "",
            f"{via.host}:{via.port}",
        )
    )


def top_via_sent_by(request: Request) -> str:
    via = request.via[0]
    return f"{via.host.lower()}:{via.port or 5060}"


def response_destination(request: Request, source: tuple[str, int]) -> tuple[str, int]:
    """Where a UDP response goes (RFC 3261 §18.2.2, RFC 3581): the address the request came
    from, and the port it came from when the client asked for ``rport``, else the Via port."""
    try:
        via = request.via[0]
    except (ValueError, KeyError, IndexError):
        return source
    if "rport" in via.parameters:
        return source
    maddr = via.parameters.get("maddr")
    host = maddr or source[0]
    return host, via.port or 5060


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and angle brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        if ch == "," and not quoted and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _stamped_top_via(value: str, source: tuple[str, int]) -> str:
    """The top Via with ``received`` (when the sent-by host is not the source address) and a
    filled-in ``rport`` (when asked for), so the client can match its NAT binding."""
    try:
        via = Via.parse(value)
    except ValueError:
        return value
    if "rport" in via.parameters and not via.parameters.get("rport"):
        value = re.sub(r";\s*rport(?=\s*(?:;|$))", f";rport={source[1]}", value, count=1)
    if via.host != source[0] and "received" not in via.parameters:
        value += f";received={source[0]}"
    return value


def build_response(
    request: Request,
    code: int,
    reason: str,
    *,
    source: tuple[str, int] | None = None,
    to_tag: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """A response to ``request``: Via, From, Call-ID and CSeq copied as received (§8.2.6.2),
    To with our tag added when it has none, then ``headers``, then Content-Length."""
    response = Response(code=code, phrase=safe_text(reason))
    vias: list[str] = []
    for line in request.headers.getlist("Via"):
        vias.extend(_split_commas(line))
    if vias and source is not None:
        vias[0] = _stamped_top_via(vias[0], source)
    response.headers.setlist("Via", vias)
    response.headers.set("From", request.headers["From"])
    to = request.headers["To"]
    if to_tag is not None and code != 100 and not re.search(r";\s*tag=", to):
        to = f"{to};tag={to_tag}"
    response.headers.set("To", to)
    response.headers.set("Call-ID", request.headers["Call-ID"])
    response.headers.set("CSeq", request.headers["CSeq"])
    for name, value in headers:
        response.headers.add(name, value)
    if content_type is not None:
        response.headers.set("Content-Type", content_type)
    response.headers.set("Content-Length", str(len(body)))
    response.body = body
    return bytes(response)


# Stream transports (TCP): messages framed by Content-Length -------------------------------


class SipFramingError(ValueError):
    """The byte stream cannot be split into messages any more: the connection must close."""


@dataclass(frozen=True)
class KeepAlive:
    """A CRLF CRLF ping (RFC 5626 §3.5.1), answered with a single CRLF."""


class SipStreamFramer:
    """Splits a TCP byte stream into whole messages using Content-Length (RFC 3261 §18.3)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def incomplete_bytes(self) -> int:
        """Bytes of a message (or ping) started but not complete yet; 0 between messages."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        self._buffer += data
        out: list[bytes | KeepAlive] = []
        while True:
            if self._buffer.startswith(b"\r\n\r\n"):
                del self._buffer[:4]
                out.append(KeepAlive())
                continue
            if self._buffer.startswith(b"\r\n"):
                # Maybe the start of a ping: wait for the rest. Else a stray CRLF between
                # messages, which is allowed and skipped.
                if len(self._buffer) < 4 and b"\r\n\r\n".startswith(bytes(self._buffer)):
                    return out
                del self._buffer[:2]
                continue
            end = _HEADER_END.search(self._buffer)
            if end is None:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise SipFramingError(f"no end of headers within {MAX_HEADER_BYTES} bytes")
                return out
            if end.start() > MAX_HEADER_BYTES:
                raise SipFramingError(f"headers longer than {MAX_HEADER_BYTES} bytes")
            length = self._content_length(bytes(self._buffer[: end.start()]))
            total = end.end() + length
            if len(self._buffer) < total:
                return out
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]

    @staticmethod
    def _content_length(block: bytes) -> int:
        values = []
        for line in block.split(b"\n"):
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                values.append(value.strip())
        if not values:
            return 0  # mandatory on streams (§20.14); a message without it has no body
        if len(values) > 1 or not re.fullmatch(rb"[0-9]{1,9}", values[0]):
            raise SipFramingError("malformed Content-Length")
        length = int(values[0])
        if length > MAX_BODY_BYTES:
            raise SipFramingError(f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
        return length


def describe(message: Request | Response) -> str:
    """A one-line summary for logs."""
    if isinstance(message, Request):
        call_id = message.headers.get("Call-ID") or "?"
        return f"{message.method} (Call-ID {safe_text(call_id, 60)})"
    return f"{message.code} {safe_text(message.phrase, 40)} ({safe_text(message.headers.get('CSeq') or '?', 30)})"
