"""The wire contract (autotranscribe-api.md): request and response bodies, error codes.

Requests are validated in two steps so that each failure gets the contract's code: the API
envelope (``namespace``, ``guid``, participant ids) → 400-201; the transcription settings and
their combination with the namespace → 400-202. Fields this server does not know, at the top
level or inside the parameter objects, are ignored (and logged): a client that sends a field
added to the contract later keeps working.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Set
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from callscribe.asr.base import whisper_language

log = logging.getLogger(__name__)

# Used with fullmatch: "$" alone would let a trailing newline through.
GUID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


class ErrorCode(StrEnum):
    PARAMETER = "400-201"
    TRANSCRIPTION_PARAMETER = "400-202"
    NO_SUCH_CALL = "400-203"
    ALREADY = "409-201"
    PENDING = "409-202"
    BYE_IN_PROGRESS = "409-203"
    INTERNAL = "500-201"
    # Beyond the reference table (which covers start and stop only):
    UNAUTHENTICATED = "401-201"
    LINK_REFUSED = "403-201"  # a download link expired or was altered
    GONE = "404-201"  # a linked file was removed by retention


_HTTP_STATUS = {
    ErrorCode.PARAMETER: 400,
    ErrorCode.TRANSCRIPTION_PARAMETER: 400,
    ErrorCode.NO_SUCH_CALL: 400,
    ErrorCode.ALREADY: 409,
    ErrorCode.PENDING: 409,
    ErrorCode.BYE_IN_PROGRESS: 409,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.LINK_REFUSED: 403,
    ErrorCode.GONE: 404,
}


class ApiError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return {"isOk": False, "error": {"code": self.code.value, "message": self.message}}


class Namespace(StrEnum):
    TWILIO = "twilio"
    SIPREC = "siprec"
    AMAZON_CONNECT = "amazonconnect"


class Role(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"


class RedactionOutput(StrEnum):
    REDACTED = "redacted"
    UNREDACTED = "unredacted"
    BOTH = "redacted_and_unredacted"


LANGUAGE_PATTERN = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# Validation context key: the ISO 639 codes the ASR accepts. Which those are is the
# deployment's to say (the API passes them in when it reads a start request); a request read
# without them, as the task holding the call re-reads what the API already checked, is
# checked for the locale's shape only.
ACCEPTED_LANGUAGES = "accepted_languages"


class AutotranscribeParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    language: str = Field("en-US", description="BCP-47 locale, e.g. en-US, es-US")
    detailedToken: bool = Field(False, description="Add word tokens with times and confidence")
    audioRecordingAllowed: bool = Field(
        False,
        description="Keep the call's audio (WAV, 8 kHz, 16-bit, customer and agent channels) "
        "for the windows this start opens; see GET /conversation/v1/conversation/recording",
    )
    redactionOutput: RedactionOutput = Field(
        RedactionOutput.REDACTED,
        description=(
            "redacted: utterance[].text is redacted. unredacted: the raw text. "
            "redacted_and_unredacted: utterance[].text is redacted and "
            "utterance[].unredactedText holds the raw text (tokens likewise: tokens / "
            "unredactedTokens)."
        ),
    )

    @field_validator("language")
    @classmethod
    def _supported_language(cls, value: str, info: ValidationInfo) -> str:
        if not LANGUAGE_PATTERN.match(value):
            raise ValueError(f"language {value!r} is not a BCP-47 locale such as en-US")
        accepted = (info.context or {}).get(ACCEPTED_LANGUAGES)
        if accepted is not None and whisper_language(value) not in accepted:
            raise ValueError(f"language {value!r} is not supported")
        return value


class TwilioParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    trackMap: dict[Literal["inbound", "outbound"], Role] = Field(
        default_factory=lambda: {"inbound": Role.CUSTOMER, "outbound": Role.AGENT}
    )

    @field_validator("trackMap")
    @classmethod
    def _one_role_per_track(cls, value: dict[str, Role]) -> dict[str, Role]:
        if len(set(value.values())) != len(value):
            raise ValueError("trackMap must map each track to a different role")
        return value


class AmazonConnectParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    streamArn: str = Field(pattern=r"^arn:aws[a-z-]*:kinesisvideo:[a-z0-9-]+:\d{12}:stream/.+")
    startSelectorType: Literal["NOW", "FRAGMENT_NUMBER"] = "NOW"
    afterFragmentNumber: str | None = Field(None, pattern=r"^\d{1,128}$")

    @model_validator(mode="after")
    def _fragment_number_when_asked(self) -> AmazonConnectParams:
        if self.startSelectorType == "FRAGMENT_NUMBER" and not self.afterFragmentNumber:
            raise ValueError("startSelectorType FRAGMENT_NUMBER needs afterFragmentNumber")
        return self


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    namespace: Namespace
    guid: str = Field(min_length=1, max_length=128)

    @field_validator("guid")
    @classmethod
    def _guid_shape(cls, value: str) -> str:
        if not GUID_PATTERN.fullmatch(value):
            raise ValueError("guid must be 1-128 letters, digits, '.', '_', ':' or '-'")
        return value


class StopRequest(_Envelope):
    pass


class StartEnvelope(_Envelope):
    customerId: str | None = Field(None, min_length=1, max_length=256)
    agentId: str | None = Field(None, min_length=1, max_length=256)
    autotranscribeParams: dict[str, Any] | None = None
    twilioParams: dict[str, Any] | None = None
    amazonConnectParams: dict[str, Any] | None = None


class StartRequest(BaseModel):
    """A validated start-streaming request (what the ingest side receives)."""

    namespace: Namespace
    guid: str
    customerId: str | None = None
    agentId: str | None = None
    autotranscribeParams: AutotranscribeParams = Field(default_factory=AutotranscribeParams)
    twilioParams: TwilioParams | None = None
    amazonConnectParams: AmazonConnectParams | None = None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# The parameter objects of a start request and the model each is read with.
_PARAMETER_MODELS: dict[str, type[BaseModel]] = {
    "autotranscribeParams": AutotranscribeParams,
    "twilioParams": TwilioParams,
    "amazonConnectParams": AmazonConnectParams,
}
_LOGGED_NAMES = 10
_LOGGED_NAME_CHARS = 64


def _log_ignored_fields(what: str, body: dict[str, Any], model: type[BaseModel]) -> None:
    """One log line per request naming the fields ignored (the first few, clipped: the names
    come from the client)."""
    ignored = [name for name in body if name not in model.model_fields]
    for name, params_model in _PARAMETER_MODELS.items():
        params = body.get(name) if name in model.model_fields else None
        if isinstance(params, dict):
            ignored += [f"{name}.{key}" for key in params if key not in params_model.model_fields]
    if ignored:
        shown = ", ".join(repr(name[:_LOGGED_NAME_CHARS]) for name in ignored[:_LOGGED_NAMES])
        more = f" and {len(ignored) - _LOGGED_NAMES} more" if len(ignored) > _LOGGED_NAMES else ""
        log.info("%s: ignoring fields this server does not know: %s%s", what, shown, more)


def parse_stop(body: Any) -> StopRequest:
    try:
        request = StopRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(ErrorCode.PARAMETER, _describe(exc)) from None
    _log_ignored_fields("stop-streaming", body, StopRequest)
    return request


def parse_start(body: Any, accepted_languages: Set[str]) -> StartRequest:
    """``accepted_languages``: the ISO 639 codes the deployment's ASR accepts
    (``ApiServices.accepted_languages``)."""
    try:
        envelope = StartEnvelope.model_validate(body)
    except ValidationError as exc:
        raise ApiError(ErrorCode.PARAMETER, _describe(exc)) from None
    try:
        request = StartRequest(
            namespace=envelope.namespace,
            guid=envelope.guid,
            customerId=envelope.customerId,
            agentId=envelope.agentId,
            autotranscribeParams=AutotranscribeParams.model_validate(
                envelope.autotranscribeParams or {},
                context={ACCEPTED_LANGUAGES: accepted_languages},
            ),
            twilioParams=(
                TwilioParams.model_validate(envelope.twilioParams)
                if envelope.twilioParams is not None
                else None
            ),
            amazonConnectParams=(
                AmazonConnectParams.model_validate(envelope.amazonConnectParams)
                if envelope.amazonConnectParams is not None
                else None
            ),
        )
    except ValidationError as exc:
        raise ApiError(ErrorCode.TRANSCRIPTION_PARAMETER, _describe(exc)) from None
    if request.twilioParams is not None and request.namespace is not Namespace.TWILIO:
        raise ApiError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"twilioParams cannot be used with namespace {request.namespace.value}",
        )
    if request.amazonConnectParams is not None and (
        request.namespace is not Namespace.AMAZON_CONNECT
    ):
        raise ApiError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"amazonConnectParams cannot be used with namespace {request.namespace.value}",
        )
    if request.namespace is Namespace.AMAZON_CONNECT and request.amazonConnectParams is None:
        raise ApiError(
            ErrorCode.TRANSCRIPTION_PARAMETER, "namespace amazonconnect needs amazonConnectParams"
        )
    _log_ignored_fields("start-streaming", body, StartEnvelope)
    return request


# Query parameters.

# A day short of the calendar's end, so that the hours and days counted from a time (feed
# files are hourly) stay within it.
LATEST_QUERY_TIME = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def _in_utc(value: datetime) -> datetime:
    """A query's time in UTC (UTC when it has no offset). A time valid as written may not be
    once converted (0001-01-01T00:00:00+14:00 is in year 0): a bad parameter, not an
    internal error."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 once converted to UTC") from None
    if utc > LATEST_QUERY_TIME:
        raise ValueError(f"must be before {LATEST_QUERY_TIME.isoformat()}")
    return utc


UtcDatetime = Annotated[datetime, AfterValidator(_in_utc)]


# Bodies documented in OpenAPI.


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI requestBody for endpoints that read the raw body (to map each validation
    failure to its contract code) but still document what they take."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class Token(BaseModel):
    text: str
    start: int = Field(description="ms from the start of the call's audio")
    end: int
    confidence: float = Field(ge=0, le=1)


class UtteranceEntry(BaseModel):
    text: str = Field(description="Redacted unless redactionOutput is unredacted")
    unredactedText: str | None = Field(None, description="Only with redacted_and_unredacted")
    tokens: list[Token] | None = Field(None, description="Only with detailedToken")
    unredactedTokens: list[Token] | None = Field(
        None, description="Only with detailedToken and redacted_and_unredacted"
    )


class TranscriptBody(BaseModel):
    message: Literal["transcript"] = "transcript"
    start: int = Field(description="ms from the start of the call's audio")
    end: int
    utterance: list[UtteranceEntry]


class Sender(BaseModel):
    externalId: str = Field(description="customerId or agentId from start-streaming")
    role: Role


class TranscriptMessage(BaseModel):
    """What the webhook receives for each finished utterance (and the after-call API returns)."""

    type: Literal["transcript"] = "transcript"
    externalConversationId: str = Field(description="The call's guid")
    streamId: str
    sender: Sender
    autotranscribeResponse: TranscriptBody



class Status(BaseModel):
    code: int = Field(1000, description="1000 = OK")
    description: str = "OK"


class StreamSummary(BaseModel):
    totalAudioBytes: int = Field(description="16-bit PCM at 8 kHz received: 16,000 bytes a second")
    audioDurationMs: int
    streamingSeconds: int = Field(description="Wall-clock seconds since the media connected")
    transcripts: int = Field(description="Messages produced for this participant")


class ParticipantResult(BaseModel):
    streamId: str
    status: Status = Field(default_factory=Status)
    summary: StreamSummary | None = None


class AutotranscribeResult(BaseModel):
    customer: ParticipantResult | None = None
    agent: ParticipantResult | None = None


class StreamingResponse(BaseModel):
    isOk: bool = True
    autotranscribeResponse: AutotranscribeResult


class ErrorDetail(BaseModel):
    code: str = Field(description="400-201, 400-202, 400-203, 409-201, 409-202, 409-203, 500-201")
    message: str


class ErrorResponse(BaseModel):
    isOk: Literal[False] = False
    error: ErrorDetail


class StreamUrlResponse(BaseModel):
    streamingUrl: str


class MessagesResponse(BaseModel):
    externalConversationId: str
    namespace: Namespace
    complete: bool = Field(description="True once the call's media has ended")
    messages: list[dict[str, Any]] = Field(
        description="Every message of the call (all legs), in the order transcribed, exactly "
        "as POSTed to the webhook; at most 1,000"
    )
