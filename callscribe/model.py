"""The domain vocabulary: what a call is keyed by, who speaks in it, how its transcription is
started, what starting and stopping it report, and how an action on it is refused.

Ingest (Twilio, SIPREC, Amazon Connect), call handling, transcription, recording and the
``Control`` port speak these terms; ``callscribe.api`` wraps them in the HTTP contract
(request envelopes, response bodies, HTTP statuses). The field names are the contract's
(``customerId``, ``autotranscribeParams``…): a start request travels unchanged from the API to
the task that holds the call's media.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from callscribe.asr.base import whisper_language
from callscribe.vocabulary import BOUNDS as VOCABULARY_BOUNDS
from callscribe.vocabulary import vocabulary_terms

# Used with fullmatch: "$" alone would let a trailing newline through.
GUID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# A tenant's name (API keys, webhook configurations, SIPREC source mappings); fullmatch too.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
TENANT_RULE = "tenant must be 1-128 letters, digits, '-' or '_'"

LANGUAGE_PATTERN = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# Validation context key: the ISO 639 codes the ASR accepts. Which those are is the
# deployment's to say (the API passes them in when it reads a start request); a request read
# without them, as the task holding the call re-reads what the API already checked, is
# checked for the locale's shape only.
ACCEPTED_LANGUAGES = "accepted_languages"


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
    CROSS_SITE = "403-202"  # a browser request from another site (its Origin is not ours)


class CallError(Exception):
    """A request refused, or an action on a call that could not be done, with the contract's
    code for it. The API answers it with the code's HTTP status (``callscribe.api.errors``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


# Start options -------------------------------------------------------------------------


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
    # Not in the AutoTranscribe contract: CallScribe's own, and off unless asked for, so a
    # call started as the contract describes costs no interim decoding.
    interimResults: bool = Field(
        False,
        description="CallScribe extension (not in the AutoTranscribe contract): while a "
        "participant speaks, the live event stream and page also get `interim` events with "
        "the utterance's text so far, redacted as redactionOutput asks; its `final` replaces "
        "them. The after-call API gets finished utterances only, and so does the webhook unless "
        "the tenant's webhook configuration opts into interim messages (local mode). "
        "Interim results are shed first when the speech recogniser is busy.",
    )

    # Not in the AutoTranscribe contract either: CallScribe's own (callscribe.vocabulary).
    vocabulary: list[str] = Field(
        default_factory=list,
        description="CallScribe extension (not in the AutoTranscribe contract): words this "
        "call's speakers may say that the speech recogniser should spell as given (product, "
        "plan and agent names), merged with the tenant's vocabulary (PUT "
        "/callscribe/v1/vocabulary, or `callscribe vocabulary set`): the call's terms "
        "first, then each of the tenant's that still fits. "
        f"{VOCABULARY_BOUNDS[0].upper()}{VOCABULARY_BOUNDS[1:]} (joined with ', '); printable "
        "characters only; repeats differing only in case are dropped. For this start's "
        "window: a later start gives its own.",
    )

    @field_validator("vocabulary")
    @classmethod
    def _bounded_vocabulary(cls, value: list[str]) -> list[str]:
        return list(vocabulary_terms(value))

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
        default_factory=lambda: {"inbound": Role.CUSTOMER, "outbound": Role.AGENT}  # type: ignore[arg-type,dict-item]
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


class StartRequest(BaseModel):
    """A validated start-streaming request (what the ingest side receives)."""

    namespace: Namespace
    guid: str
    customerId: str | None = None
    agentId: str | None = None
    autotranscribeParams: AutotranscribeParams = Field(default_factory=AutotranscribeParams)
    twilioParams: TwilioParams | None = None
    amazonConnectParams: AmazonConnectParams | None = None


# What start and stop report ------------------------------------------------------------


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
