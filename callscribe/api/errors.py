"""How the API answers an error: the HTTP status of each error code and the contract's body
(``{"isOk": false, "error": {"code", "message"}}``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from callscribe.model import CallError, ErrorCode

log = logging.getLogger(__name__)

HTTP_STATUS = {
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
    ErrorCode.CROSS_SITE: 403,
}


def error_body(error: CallError) -> dict[str, Any]:
    return {"isOk": False, "error": {"code": error.code.value, "message": error.message}}


def error_response(error: CallError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=HTTP_STATUS[error.code], headers=headers)


async def answer_call_error(_: Request, exc: Exception) -> JSONResponse:
    """The API app's handler of ``CallError``."""
    assert isinstance(exc, CallError)
    if exc.code is not ErrorCode.UNAUTHENTICATED:
        log.info("API error %s: %s", exc.code.value, exc.message)
    return error_response(exc)


def _validation_message(exc: Exception) -> str:
    """What was wrong, field by field ("query.externalConversationId: Field required"); never
    the exception's text, which names the endpoint's source file and line."""
    errors_of = getattr(exc, "errors", None)
    errors = errors_of() if callable(errors_of) else []
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


async def answer_validation_error(_: Request, exc: Exception) -> JSONResponse:
    """The API app's handler of FastAPI's ``RequestValidationError`` (a query parameter or
    header the endpoint declares): 400-201, as for the bodies the endpoints read themselves."""
    return error_response(CallError(ErrorCode.PARAMETER, _validation_message(exc)))
