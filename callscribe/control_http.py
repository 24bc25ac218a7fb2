"""``Control`` over private HTTP: the API (a Lambda in the VPC) reaches the gateway task that
holds a call's media.

The gateway task records its control URL (``http://<private ip>:8081``) as the call's owner in
the Store. Requests carry an HMAC-SHA256 signature over a timestamp and the body, made with a
secret shared by the API and the gateways (Secrets Manager); the gateway refuses unsigned,
mis-signed or stale (> 60 s) requests, so the control port is never an open door even inside
the VPC.

Answers: 200 with ``{"isOk": true, "autotranscribeResponse": …}``; otherwise the contract's
error body, ``{"isOk": false, "error": {"code", "message"}}``, with 401 for a bad signature,
404 for an unknown action, 400 for a malformed request, and ``REFUSED_STATUS`` for an action
the call refused (or the task failed at). The API side re-raises the code, and the API answers
it with the contract's status for that code: that table is the API's alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callscribe.calls import CallRegistry
from callscribe.control import CallOpener, LocalControl
from callscribe.model import AutotranscribeResult, CallError, ErrorCode, StartRequest
from callscribe.store.base import CallKey, CallRecord

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-CallScribe-Timestamp"
SIGNATURE_HEADER = "X-CallScribe-Signature"
MAX_SKEW_S = 60
MAX_BODY_BYTES = 64 * 1024
REFUSED_STATUS = 422


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _error_answer(error: CallError, status: int) -> JSONResponse:
    return JSONResponse(
        {"isOk": False, "error": {"code": error.code.value, "message": error.message}}, status
    )


def _key_json(key: CallKey) -> dict[str, str]:
    return {"tenant": key.tenant, "namespace": key.namespace, "guid": key.guid}


async def _signed_post(
    secret: str, timeout_s: float, url: str, payload: dict[str, Any], unreachable: CallError
) -> AutotranscribeResult:
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    try:
        # A client per request: control calls are rare, and a Lambda may run each
        # invocation on a fresh event loop, which a pooled client must not outlive.
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    TIMESTAMP_HEADER: timestamp,
                    SIGNATURE_HEADER: sign(secret, timestamp, body),
                },
            )
    except httpx.TransportError as exc:
        log.warning("control POST %s failed: %s", url, exc)
        raise unreachable from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.is_success:
        return AutotranscribeResult.model_validate(answer["autotranscribeResponse"])
    error = answer.get("error") if isinstance(answer, dict) else None
    if response.status_code == 401:
        # Our own deployment's secrets disagree: the customer's request was fine.
        raise CallError(ErrorCode.INTERNAL, "the gateway refused the control signature")
    if isinstance(error, dict) and error.get("code") in {c.value for c in ErrorCode}:
        raise CallError(ErrorCode(error["code"]), str(error.get("message", "")))
    raise CallError(ErrorCode.INTERNAL, f"gateway answered HTTP {response.status_code}")


class HttpControl:
    """The API side: implements the ``Control`` port by calling the owning gateway."""

    def __init__(self, secret: str, timeout_s: float = 25.0) -> None:
        self._secret = secret
        self._timeout_s = timeout_s

    async def start(self, call: CallRecord, request: StartRequest) -> AutotranscribeResult:
        payload = {"key": _key_json(call.key), "request": request.model_dump(mode="json")}
        return await self._post(call, "start", payload)

    async def stop(self, call: CallRecord) -> AutotranscribeResult:
        return await self._post(call, "stop", {"key": _key_json(call.key)})

    async def _post(
        self, call: CallRecord, action: str, payload: dict[str, Any]
    ) -> AutotranscribeResult:
        if not call.owner.startswith(("http://", "https://")):
            raise CallError(ErrorCode.NO_SUCH_CALL, f"call {call.key.guid} has no live media")
        unreachable = CallError(
            ErrorCode.NO_SUCH_CALL, f"call {call.key.guid} has no live media (owner unreachable)"
        )
        return await _signed_post(
            self._secret,
            self._timeout_s,
            f"{call.owner.rstrip('/')}/control/{action}",
            payload,
            unreachable,
        )


class HttpCallOpener:
    """The API side of ``CallOpener`` in AWS: asks a KVS reader task (any of them, through the
    service's private DNS name) to open an Amazon Connect call; the task that opens it records
    itself as the call's owner, and later stops and starts go there."""

    def __init__(self, secret: str, url: str, timeout_s: float = 25.0) -> None:
        self._secret = secret
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s

    async def open(self, key: CallKey, request: StartRequest) -> AutotranscribeResult:
        payload = {"key": _key_json(key), "request": request.model_dump(mode="json")}
        unreachable = CallError(ErrorCode.INTERNAL, "the Amazon Connect readers are unreachable")
        return await _signed_post(
            self._secret, self._timeout_s, f"{self._url}/control/open", payload, unreachable
        )


def create_control_app(
    registry: CallRegistry, secret: str, opener: CallOpener | None = None
) -> Starlette:
    """The gateway side: the private control endpoint of a gateway task (and, with an
    ``opener``, of a KVS reader task, which also opens new Amazon Connect calls)."""

    actions = ("start", "stop", "open") if opener is not None else ("start", "stop")
    local = LocalControl(registry)

    async def control(request: Request) -> JSONResponse:
        action = request.path_params["action"]
        if action not in actions:
            return _error_answer(CallError(ErrorCode.PARAMETER, "unknown action"), 404)
        body = await request.body()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        try:
            fresh = abs(time.time() - int(timestamp)) <= MAX_SKEW_S
        except ValueError:
            fresh = False
        if (
            len(body) > MAX_BODY_BYTES
            or not fresh
            or not hmac.compare_digest(sign(secret, timestamp, body), signature)
        ):
            log.warning("control request from %s refused: bad signature", request.client)
            return _error_answer(CallError(ErrorCode.UNAUTHENTICATED, "bad control signature"), 401)
        try:
            payload = json.loads(body)
            key = CallKey(**payload["key"])
            if action == "open":
                assert opener is not None
                result = await opener.open(key, StartRequest.model_validate(payload["request"]))
            elif action == "start":
                request_body = StartRequest.model_validate(payload["request"])
                result = await local.start_live(key, request_body)
            else:
                result = await local.stop_live(key)
        except CallError as exc:
            return _error_answer(exc, REFUSED_STATUS)
        except (ValueError, KeyError, TypeError) as exc:
            return _error_answer(CallError(ErrorCode.PARAMETER, f"bad control request: {exc}"), 400)
        return JSONResponse(
            {
                "isOk": True,
                "autotranscribeResponse": result.model_dump(mode="json", exclude_none=True),
            }
        )

    return Starlette(
        routes=[Route("/control/{action:str}", control, methods=["POST"])],
    )
