"""The tenant's custom vocabulary over HTTP: ``GET``, ``PUT`` and ``DELETE
/callscribe/v1/vocabulary``, what ``callscribe vocabulary show|set|clear`` does, for the tenant
of the API key alone (a CallScribe extension; see ``callscribe.vocabulary``)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from callscribe.api.deps import ERROR_RESPONSES, Authenticated, api_services, json_body
from callscribe.api.schemas import (
    VocabularyBody,
    VocabularyResponse,
    parse_vocabulary,
    request_body_schema,
)
from callscribe.export import iso
from callscribe.model import CallError, ErrorCode
from callscribe.store.base import TenantVocabulary, tenant_vocabulary
from callscribe.vocabulary import total_chars

PATH = "/callscribe/v1/vocabulary"


def _response(vocabulary: TenantVocabulary | None) -> VocabularyResponse:
    if vocabulary is None:
        return VocabularyResponse(terms=[], characters=0, updatedAt=None)
    return VocabularyResponse(
        terms=list(vocabulary.terms),
        characters=total_chars(vocabulary.terms),
        updatedAt=iso(vocabulary.updated_at),
    )


def build_vocabulary_router() -> APIRouter:
    router = APIRouter()
    summary_note = (
        " A CallScribe extension. Each start-streaming of the tenant's calls reads it and "
        "merges it with the request's own `autotranscribeParams.vocabulary` (the call's terms "
        "first, then each of these that still fits): a change applies from each call's next "
        "start."
    )

    @router.get(
        PATH,
        response_model=VocabularyResponse,
        responses=ERROR_RESPONSES,
        summary="Your tenant's custom vocabulary",
        description="Words your calls' speakers may say (product, plan and agent names) that "
        "the speech recogniser should spell as given." + summary_note,
    )
    async def get_vocabulary(request: Request, key: Authenticated) -> VocabularyResponse:
        store = api_services(request).store
        return _response(await asyncio.to_thread(store.get_tenant_vocabulary, key.tenant))

    @router.put(
        PATH,
        response_model=VocabularyResponse,
        responses=ERROR_RESPONSES,
        summary="Replace your tenant's custom vocabulary",
        description="A bad or oversized vocabulary is refused with 400-201 naming the term "
        "and changes nothing; an empty one too (DELETE removes it)." + summary_note,
        openapi_extra=request_body_schema(VocabularyBody),
    )
    async def put_vocabulary(request: Request, key: Authenticated) -> VocabularyResponse:
        body = parse_vocabulary(await json_body(request))
        try:
            vocabulary = tenant_vocabulary(
                TenantVocabulary(key.tenant, tuple(body.terms), time.time())
            )
        except ValueError as exc:
            raise CallError(ErrorCode.PARAMETER, f"terms: {exc}") from None
        store = api_services(request).store
        await asyncio.to_thread(store.put_tenant_vocabulary, vocabulary)
        return _response(vocabulary)

    @router.delete(
        PATH,
        response_model=VocabularyResponse,
        responses=ERROR_RESPONSES,
        summary="Remove your tenant's custom vocabulary",
        description="Answers the vocabulary as it is now (none), whether there was one or not."
        + summary_note,
    )
    async def delete_vocabulary(request: Request, key: Authenticated) -> VocabularyResponse:
        store = api_services(request).store
        await asyncio.to_thread(store.delete_tenant_vocabulary, key.tenant)
        return _response(None)

    return router
