"""The wire contract (autotranscribe-api.md): request and response bodies around the domain's
terms (``callscribe.model``).

Requests are validated in two steps so that each failure gets the contract's code: the API
envelope (``namespace``, ``guid``, participant ids) → 400-201; the transcription settings and
their combination with the namespace → 400-202. Fields this server does not know, at the top
level or inside the parameter objects, are ignored (and logged): a client that sends a field
added to the contract later keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from callscribe.model import (
    ACCEPTED_LANGUAGES,
    GUID_PATTERN,
    AmazonConnectParams,
    AutotranscribeParams,
    AutotranscribeResult,
    CallError,
    ErrorCode,
    Namespace,
    Role,
    StartRequest,
    TwilioParams,
)
from callscribe.vocabulary import BOUNDS as VOCABULARY_BOUNDS

log = logging.getLogger(__name__)


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
        raise CallError(ErrorCode.PARAMETER, _describe(exc)) from None
    _log_ignored_fields("stop-streaming", body, StopRequest)
    return request


def parse_start(body: Any, accepted_languages: Set[str]) -> StartRequest:
    """``accepted_languages``: the ISO 639 codes the deployment's ASR accepts
    (``ApiServices.languages``)."""
    try:
        envelope = StartEnvelope.model_validate(body)
    except ValidationError as exc:
        raise CallError(ErrorCode.PARAMETER, _describe(exc)) from None
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
        raise CallError(ErrorCode.TRANSCRIPTION_PARAMETER, _describe(exc)) from None
    if request.twilioParams is not None and request.namespace is not Namespace.TWILIO:
        raise CallError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"twilioParams cannot be used with namespace {request.namespace.value}",
        )
    if request.amazonConnectParams is not None and (
        request.namespace is not Namespace.AMAZON_CONNECT
    ):
        raise CallError(
            ErrorCode.TRANSCRIPTION_PARAMETER,
            f"amazonConnectParams cannot be used with namespace {request.namespace.value}",
        )
    if request.namespace is Namespace.AMAZON_CONNECT and request.amazonConnectParams is None:
        raise CallError(
            ErrorCode.TRANSCRIPTION_PARAMETER, "namespace amazonconnect needs amazonConnectParams"
        )
    _log_ignored_fields("start-streaming", body, StartEnvelope)
    return request


def parse_vocabulary(body: Any) -> VocabularyBody:
    try:
        return VocabularyBody.model_validate(body)
    except ValidationError as exc:
        raise CallError(ErrorCode.PARAMETER, _describe(exc)) from None


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


class InterimSender(BaseModel):
    externalId: str | None = Field(
        default=None, description="customerId or agentId, as the speaker's transcripts carry it"
    )
    role: Role


class InterimMessage(BaseModel):
    """The text so far of an utterance still being spoken: POSTed only to tenants whose webhook
    configuration opts in (``callscribe webhook set --interim-results``), for calls that ask
    for interim results (a CallScribe extension; the contract's webhook is final-only)."""

    type: Literal["interim"] = "interim"
    externalConversationId: str = Field(description="The call's guid")
    streamId: str | None = Field(
        default=None, description="The speaker's stream, as its transcript messages carry it"
    )
    sender: InterimSender
    utteranceId: str = Field(
        description="`{role}-{start}`: the final that replaces this text is the transcript "
        "message whose sender.role and autotranscribeResponse.start are these"
    )
    start: int = Field(description="ms from the start of the call's audio")
    text: str = Field(description="Redacted as the call's redactionOutput asks")
    stablePrefix: int = Field(
        description="How many of text's first characters the utterance's previous interim had "
        "too, to the end of a word in both (0 on its first)"
    )
    unredactedText: str | None = Field(
        default=None, description="Only with redactionOutput redacted_and_unredacted"
    )


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


class VocabularyBody(BaseModel):
    """PUT /callscribe/v1/vocabulary: the tenant's vocabulary (checked against the bounds by
    ``store.base.tenant_vocabulary``). Fields it does not know are ignored, as elsewhere."""

    model_config = ConfigDict(extra="ignore")

    terms: list[str] = Field(
        description=f"In order of preference. {VOCABULARY_BOUNDS[0].upper()}"
        f"{VOCABULARY_BOUNDS[1:]} (joined with "
        "', '); printable characters only; surrounding spaces are dropped, and repeats that "
        "differ only in case (the first spelling is kept)."
    )


class VocabularyResponse(BaseModel):
    terms: list[str] = Field(description="As stored; empty when the tenant has none")
    characters: int = Field(description="Counted against the bound: the terms joined with ', '")
    updatedAt: str | None = Field(description="ISO 8601, UTC; null when the tenant has none")
