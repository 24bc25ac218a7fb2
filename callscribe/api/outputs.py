"""The API beyond the reference's four endpoints: delivery failures, feed-file links, call
recordings, and (local mode) the signed download links themselves. Every endpoint but the
download is authenticated with the tenant's asapp-api-id / asapp-api-secret."""

from __future__ import annotations

import asyncio
import mimetypes
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from callscribe.api.deps import (
    ERROR_RESPONSES,
    Authenticated,
    OutputServices,
    api_services,
    find_tenant_call,
)
from callscribe.api.schemas import UtcDatetime
from callscribe.blobs.base import BlobNotFound
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore, LinkError
from callscribe.export import FEEDS, MAX_INTERVAL, feed_files, iso
from callscribe.model import CallError, ErrorCode, Namespace
from callscribe.store.base import CallKey

KNOWN_MEDIA_TYPES = {".wav": "audio/wav", ".gz": "application/gzip"}


def _outputs(request: Request) -> OutputServices:
    outputs = api_services(request).outputs
    assert outputs is not None
    return outputs


def _absolute(request: Request, url: str) -> str:
    """Directory-store links are paths on this server; S3 links are absolute already."""
    if not url.startswith("/"):
        return url
    base = _outputs(request).public_url or str(request.base_url)
    return base.rstrip("/") + url


# Response bodies -----------------------------------------------------------------------


class DeliveryFailureEntry(BaseModel):
    messageId: str = Field(description="The message's webhook-id (and X-CallScribe-Message-Id)")
    externalConversationId: str
    reason: str = Field(
        description='"http 503", "timeout after 5 s", "dropped: more than '
        '100 pending", "ConnectError: …", "oauth2 token endpoint: http 401"…'
    )
    statusCode: int | None = Field(description="The target's HTTP status, if it answered")
    at: str = Field(description="When the message was given up, ISO 8601 UTC")


class DeliveryFailuresResponse(BaseModel):
    failures: list[DeliveryFailureEntry]


class FeedFileEntry(BaseModel):
    hourStart: str = Field(description="The hour (UTC) whose utterances the file holds")
    hourEnd: str
    bytes: int
    url: str = Field(description="GET it with no other credentials until expiresAt")
    expiresAt: str


class FeedFilesResponse(BaseModel):
    feed: str
    start: str
    end: str
    complete: bool = Field(
        description="Every hour of the interval has a file (false while a day awaits its "
        "02:00 UTC export, or after retention removed files)"
    )
    files: list[FeedFileEntry]


class RecordingEntry(BaseModel):
    url: str = Field(description="GET the WAV with no other credentials until expiresAt")
    expiresAt: str
    format: str = "audio/wav; codec=pcm_s16le; rate=8000; channels=2"
    channels: list[str] = Field(default=["customer", "agent"], description="Channel order")
    offsetMs: int = Field(
        description="Position of the WAV's first sample on the call's audio timeline (the "
        "timeline of messages' start and end)"
    )
    durationMs: int
    bytes: int
    recordedAt: str = Field(description="When the recording was stored (the call's end)")
    redacted: bool = Field(
        False,
        description="The audio of every redacted span (card numbers, PINs, ...) is silence "
        "in the speaker's channel, with a margin around it: the start request asked for a "
        "redacted output (redacted or redacted_and_unredacted). No unsilenced copy is kept",
    )


class RecordingsResponse(BaseModel):
    externalConversationId: str
    namespace: Namespace
    recordings: list[RecordingEntry] = Field(
        description="Empty unless audioRecordingAllowed was true; in timeline order. One "
        "per media session (a stream that reconnected has several), and a session's audio may "
        "be in consecutive parts: a long call is split (each part at most 1 GiB by default), "
        "and a jump in the source's timestamps beyond a few seconds starts a new part rather "
        "than being filled with silence. Each part's offsetMs places it on the call's timeline"
    )


# Endpoints -----------------------------------------------------------------------------


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/callscribe/v1/webhook-failures",
        response_model=DeliveryFailuresResponse,
        responses=ERROR_RESPONSES,
        summary="Webhook deliveries given up (errors, timeouts, drops)",
        description="Each failed or dropped webhook POST of your tenant, oldest first: the "
        "message is not retried (unless your webhook configuration has a retry policy) and "
        "stays available from the after-call API.",
    )
    async def webhook_failures(
        request: Request,
        key: Authenticated,
        externalConversationId: Annotated[str | None, Query(max_length=128)] = None,
        since: Annotated[
            UtcDatetime | None, Query(description="ISO 8601; UTC if no offset")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> DeliveryFailuresResponse:
        store = api_services(request).store
        failures = await asyncio.to_thread(
            store.list_delivery_failures,
            key.tenant,
            externalConversationId,
            limit,
            since.timestamp() if since else None,
        )
        return DeliveryFailuresResponse(
            failures=[
                DeliveryFailureEntry(
                    messageId=f.message_id,
                    externalConversationId=f.conversation_id,
                    reason=f.reason,
                    statusCode=f.status_code,
                    at=iso(f.at),
                )
                for f in failures
            ]
        )

    @router.get(
        "/fileexporter/v1/feeds/{feed}/files",
        response_model=FeedFilesResponse,
        responses=ERROR_RESPONSES,
        summary="Expiring links to the feed files covering a time interval",
        description="Feed `utterances`: one gzip JSON Lines file per hour (UTC) of each day, "
        "written by the daily 02:00 UTC export of the previous day. Each row: "
        "externalConversationId, namespace, streamId, role, participantId, startMs, endMs "
        "(on the call's audio timeline), text (redacted per the call's redactionOutput), "
        "unredactedText (only for redacted_and_unredacted), language, transcribedAt (ISO "
        "8601 UTC, within about a second of the utterance's end) and messageId. Files are "
        "kept 7 days by default. The interval is at most 31 days.",
    )
    async def feed_file_links(
        request: Request,
        key: Authenticated,
        feed: Annotated[str, Path(description="utterances")],
        start: Annotated[UtcDatetime, Query(description="ISO 8601; UTC if no offset")],
        end: Annotated[UtcDatetime, Query(description="exclusive")],
    ) -> FeedFilesResponse:
        if feed not in FEEDS:
            raise CallError(
                ErrorCode.PARAMETER, f"unknown feed {feed!r}; feeds: {', '.join(FEEDS)}"
            )
        if end <= start:
            raise CallError(ErrorCode.PARAMETER, "end must be after start")
        if end - start > MAX_INTERVAL:
            raise CallError(ErrorCode.PARAMETER, "the interval may span at most 31 days")
        outputs = _outputs(request)
        found = await asyncio.to_thread(
            feed_files,
            outputs.blobs,
            feed,
            key.tenant,
            start,
            end,
            retention_s=outputs.export_retention_s,
            link_ttl_s=outputs.link_ttl_s,
            now=time.time(),
        )
        return FeedFilesResponse(
            feed=feed,
            start=start.isoformat().replace("+00:00", "Z"),
            end=end.isoformat().replace("+00:00", "Z"),
            complete=found.complete,
            files=[
                FeedFileEntry(
                    hourStart=iso(f.hour_start.timestamp()),
                    hourEnd=iso(f.hour_start.timestamp() + 3600),
                    bytes=f.bytes,
                    url=_absolute(request, f.url),
                    expiresAt=iso(f.expires_at),
                )
                for f in found.files
            ],
        )

    @router.get(
        "/conversation/v1/conversation/recording",
        response_model=RecordingsResponse,
        responses=ERROR_RESPONSES,
        summary="The call's audio recording (after-call)",
        description="When start-streaming had audioRecordingAllowed true: an uncompressed WAV, "
        "8 kHz, 16-bit PCM, channel 1 the customer, channel 2 the agent, holding the audio of "
        "the windows in which transcription was on and recording allowed (never the IVR "
        "before the first start nor a hold after a stop: those stay silent). When the start "
        "request asked for a redacted output (redacted, the default, or "
        "redacted_and_unredacted), what redaction masked is silence in the recording too "
        "(redacted: true); an utterance that could not be transcribed is silenced whole. Kept "
        "as long as the call's transcripts (7 days by default). Available once the call is "
        "complete.",
    )
    async def call_recording(
        request: Request,
        key: Authenticated,
        externalConversationId: Annotated[str, Query(min_length=1, max_length=128)],
        namespace: Annotated[Namespace | None, Query()] = None,
    ) -> RecordingsResponse:
        call = await find_tenant_call(
            api_services(request).store, key.tenant, externalConversationId, namespace
        )
        call_key: CallKey = call.key
        outputs = _outputs(request)
        now = time.time()
        found = await asyncio.to_thread(outputs.recordings.for_call, call_key, now)
        entries = []
        for info in found:
            name = f"{externalConversationId}-{info.offset_ms}.wav"
            url = outputs.blobs.signed_url(info.key, outputs.link_ttl_s, name)
            entries.append(
                RecordingEntry(
                    url=_absolute(request, url),
                    expiresAt=iso(now + outputs.link_ttl_s),
                    offsetMs=info.offset_ms,
                    durationMs=info.duration_ms,
                    bytes=info.bytes,
                    recordedAt=iso(info.recorded_at),
                    redacted=info.redacted,
                )
            )
        return RecordingsResponse(
            externalConversationId=externalConversationId,
            namespace=Namespace(call_key.namespace),
            recordings=entries,
        )

    return router


def build_download_router(blobs: DirectoryBlobStore, signer: BlobLinkSigner) -> APIRouter:
    """Local mode: serves a blob to whoever holds an unexpired signed link."""
    router = APIRouter()

    @router.get(
        "/callscribe/v1/files/{token}",
        summary="Download a recording or feed file (signed, expiring link)",
        description="The link itself is the credential; 403 once it has expired or if it "
        "was altered, 404 if the file is gone (retention).",
        responses={403: {"description": "link expired or invalid"}, 404: {"description": "gone"}},
        response_class=FileResponse,
    )
    async def download(token: str) -> FileResponse:
        try:
            grant = signer.verify(token)
        except LinkError as exc:
            raise CallError(ErrorCode.LINK_REFUSED, str(exc)) from None
        try:
            path = await asyncio.to_thread(blobs.open_path, grant.key)
        except (BlobNotFound, ValueError):
            raise CallError(ErrorCode.GONE, "this file no longer exists") from None
        media_type = KNOWN_MEDIA_TYPES.get(path.suffix, mimetypes.guess_type(path.name)[0])
        return FileResponse(
            path,
            media_type=media_type or "application/octet-stream",
            filename=grant.download_name or path.name,
        )

    return router
