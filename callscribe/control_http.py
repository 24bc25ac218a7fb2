"""``Control`` over private HTTP: the API (a Lambda in the VPC) reaches the gateway task that
holds a call's media.

The gateway task records its control URL (``http://<private ip>:8081``) as the call's owner in
the Store. Requests carry an HMAC-SHA256 signature over a timestamp and the body, made with a
secret shared by the API and the gateways (Secrets Manager); the gateway refuses unsigned,
mis-signed or stale (> 60 s) requests, so the control port is never an open door even inside
the VPC.

Answers: 200 with ``{"isOk": true, "autotranscribeResponse": …}``; otherwise the contract's
error body, ``{"isOk": false, "error": {"code", "message"}}``, with 401 for a bad signature,
404 for an unknown action, 400 for a malformed request, ``NOT_TAKING_CALLS_STATUS`` (503) from a
task that takes no new call (it is draining: ask another), and ``REFUSED_STATUS`` for an action
the call refused (or the task failed at). The API side re-raises the code, and the API answers
it with the contract's status for that code: that table is the API's alone.

The KVS reader tasks are one service behind one private DNS name with an A record per task
(Cloud Map). ``ReaderPeers`` resolves it and asks the tasks one by one, in random order, until
one takes the request: the API opens a contact so (``open``), and a draining reader hands its
calls over so (``ready``, then ``resume``), leaving itself out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callscribe.calls import CallRegistry
from callscribe.control import CallOpener, CallReceiver, LocalControl, NotTakingCalls
from callscribe.model import AutotranscribeResult, CallError, ErrorCode, StartRequest
from callscribe.store.base import CallKey, CallRecord

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-CallScribe-Timestamp"
SIGNATURE_HEADER = "X-CallScribe-Signature"
MAX_SKEW_S = 60
MAX_BODY_BYTES = 64 * 1024
REFUSED_STATUS = 422
NOT_TAKING_CALLS_STATUS = 503
# A task asked to continue a handed-over call connects to its stream before it answers.
HANDOVER_TIMEOUT_S = 20.0


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
    if response.status_code == NOT_TAKING_CALLS_STATUS:
        message = error.get("message", "") if isinstance(error, dict) else ""
        raise NotTakingCalls(str(message) or f"{url} takes no new calls")
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


class PeerUnreachable(CallError):
    """One task did not answer (connection refused, timed out): another may."""

    def __init__(self, url: str) -> None:
        super().__init__(ErrorCode.INTERNAL, f"{url} is unreachable")


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every IPv4 address of ``host`` (an IP literal: itself), each once."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class ReaderPeers:
    """The KVS reader tasks behind one control URL (``http://kvs-reader.<stage>…:8081``),
    asked one at a time in random order until one takes the request; ``exclude`` (a task's own
    owner URL) is never asked."""

    def __init__(
        self,
        secret: str,
        url: str,
        *,
        exclude: str | None = None,
        timeout_s: float = 25.0,
        resolve: Resolver = resolve_addresses,
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"{url!r} names no host")
        self._secret = secret
        self._scheme = parts.scheme or "http"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._scheme == "https" else 80)
        self._excluded = urlsplit(exclude).hostname if exclude else None
        self._timeout_s = timeout_s
        self._resolve = resolve

    async def task_urls(self) -> list[str]:
        try:
            addresses = await self._resolve(self._host, self._port)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", self._host, exc)
            return []
        urls = [
            f"{self._scheme}://{address}:{self._port}"
            for address in addresses
            if address != self._excluded
        ]
        random.shuffle(urls)
        return urls

    async def post_to_one(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> tuple[str, AutotranscribeResult]:
        """(the task that took it, its answer). A task that is draining or unreachable is
        passed over; any other refusal is the answer. NotTakingCalls when no task took it,
        PeerUnreachable when none answered at all."""
        urls = await self.task_urls()
        refused = 0
        for url in urls:
            try:
                result = await _signed_post(
                    self._secret,
                    timeout_s or self._timeout_s,
                    f"{url}/control/{action}",
                    payload,
                    PeerUnreachable(url),
                )
            except NotTakingCalls:
                refused += 1
                continue
            except PeerUnreachable:
                continue
            return url, result
        if refused:
            raise NotTakingCalls(f"none of the {len(urls)} readers takes new calls")
        raise PeerUnreachable(f"{self._scheme}://{self._host}:{self._port}")


class HttpCallOpener:
    """The API side of ``CallOpener`` in AWS: asks a KVS reader task (any that takes new calls,
    found through the service's private DNS name) to open an Amazon Connect call; the task that
    opens it records itself as the call's owner, and later stops and starts go there."""

    def __init__(
        self, secret: str, url: str, timeout_s: float = 25.0, resolve: Resolver = resolve_addresses
    ) -> None:
        self._readers = ReaderPeers(secret, url, timeout_s=timeout_s, resolve=resolve)

    async def open(self, key: CallKey, request: StartRequest) -> AutotranscribeResult:
        payload = {"key": _key_json(key), "request": request.model_dump(mode="json")}
        try:
            _, result = await self._readers.post_to_one("open", payload)
        except PeerUnreachable:
            raise CallError(
                ErrorCode.INTERNAL, "the Amazon Connect readers are unreachable"
            ) from None
        except NotTakingCalls:
            raise CallError(
                ErrorCode.INTERNAL, "no Amazon Connect reader takes new calls now"
            ) from None
        return result


class HttpCallHandover:
    """``CallHandover`` between KVS reader tasks: a draining reader asks the others (never
    itself) whether one takes calls (``ready``), then asks one to continue a call from the
    resume point it recorded in the Store (``resume``)."""

    def __init__(
        self,
        secret: str,
        readers_url: str,
        own_owner: str,
        resolve: Resolver = resolve_addresses,
    ) -> None:
        self._readers = ReaderPeers(
            secret, readers_url, exclude=own_owner, timeout_s=HANDOVER_TIMEOUT_S, resolve=resolve
        )

    async def available(self) -> bool:
        try:
            await self._readers.post_to_one("ready", {"key": None}, timeout_s=5.0)
        except CallError:
            return False
        return True

    async def hand_over(self, key: CallKey) -> str:
        url, _ = await self._readers.post_to_one("resume", {"key": _key_json(key)})
        return url


def create_control_app(
    registry: CallRegistry,
    secret: str,
    opener: CallOpener | None = None,
    receiver: CallReceiver | None = None,
) -> Starlette:
    """The gateway side: the private control endpoint of a gateway task (and, with an
    ``opener``, of a KVS reader task, which also opens new Amazon Connect calls; with a
    ``receiver``, one that continues calls other readers hand over: ``ready``, ``resume``)."""

    actions = ["start", "stop"]
    if opener is not None:
        actions.append("open")
    if receiver is not None:
        actions += ["ready", "resume"]
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
            if action == "ready":
                assert receiver is not None
                if not receiver.ready():
                    raise NotTakingCalls("this reader takes no new calls (draining)")
                return JSONResponse({"isOk": True, "autotranscribeResponse": {}})
            key = CallKey(**payload["key"])
            if action == "resume":
                assert receiver is not None
                result = await receiver.resume(key)
            elif action == "open":
                assert opener is not None
                result = await opener.open(key, StartRequest.model_validate(payload["request"]))
            elif action == "start":
                request_body = StartRequest.model_validate(payload["request"])
                result = await local.start_live(key, request_body)
            else:
                result = await local.stop_live(key)
        except NotTakingCalls as exc:
            return _error_answer(exc, NOT_TAKING_CALLS_STATUS)
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
