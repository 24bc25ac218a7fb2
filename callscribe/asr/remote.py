"""``RemoteAsrEngine``: the ``AsrEngine`` port as a client of the ASR worker service
(``callscribe.asr.worker``), which is how gateway tasks reach the GPU workers in AWS.

Each utterance is one ``POST /v1/transcribe`` carrying 16-bit little-endian PCM at 16 kHz,
and its vocabulary as repeated ``vocabulary`` query parameters.

In AWS the URL's host is a Cloud Map name with one A record per worker task. A connection kept
alive to whichever address the name gave first would tie a gateway to one worker, so the engine
looks the name up itself (every address it has; again at most every ``dns_refresh_s``, in a
thread) and chooses a worker for each utterance: the one with the fewest of this process's
requests outstanding, ties broken at random. The request goes to that worker's address with
the URL's own Host header. A worker that refuses the utterance (503: its queue is full, or it
is shutting down) or cannot be reached is passed over for a while, and the utterance goes to
the next one while ``retry_budget_s`` lasts: it is lost only when every worker refused it (or
the budget ran out). A URL whose host is an IP address or ``localhost`` is one worker.

Interim results (``start_interim``) go only to a worker with none of this process's requests
outstanding and not passed over, marked ``interim=true``: the worker takes one only if no
final waits for it, and otherwise answers 503 ``interim_shed`` at once, which sheds the
interim without passing the worker over (it still takes finals). An interim is never retried
on another worker: the next one falls due an interval of audio later.

Connections are kept alive and pooled per worker, with TCP_NODELAY so a small request is not
held back by Nagle's algorithm waiting for the previous one's acknowledgement.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from callscribe.asr.base import (
    AsrError,
    AsrInterimShedError,
    AsrOverloadedError,
    AsrRequest,
    AsrResult,
    AsrUnavailableError,
    AsrWord,
)
from callscribe.asr.vocabulary import within_bounds

log = logging.getLogger(__name__)

TRANSCRIBE_PATH = "/v1/transcribe"
# Utterances in flight from one gateway process at once, over all workers; beyond it they wait
# for a connection (within the request timeout). Far above what one gateway task produces.
MAX_CONNECTIONS = 256
# How long a worker that answered 503 without a Retry-After is passed over.
REFUSED_PASS_OVER_S = 1.0
# A Retry-After is the worker's rough guess at when its queue will have room, and that changes
# as every gateway passes it over: past this it is not waited out.
MAX_PASS_OVER_S = 30.0
# A worker that gave no answer (its task stopped or is being replaced) leaves the name within
# a DNS refresh or two; until then it costs at most one failed attempt this often.
UNANSWERED_PASS_OVER_S = 5.0

# Query parameters of one request: ``vocabulary`` is repeated, one term each.
_Query = dict[str, str | list[str]]

# A host name -> its addresses. Blocking: the engine calls it in a thread.
Resolver = Callable[[str], list[str]]


def resolve_addresses(host: str) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order, without repeats."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _query(request: AsrRequest, *, word_timestamps: bool) -> _Query:
    """The request's parameters; its vocabulary as the leading terms the worker accepts (one
    ``vocabulary`` parameter each), since the worker refuses a request beyond the bounds."""
    params: _Query = {"wordTimestamps": "true" if word_timestamps else "false"}
    if request.language:
        params["language"] = request.language
    vocabulary = within_bounds(request.vocabulary)
    if vocabulary:
        params["vocabulary"] = list(vocabulary)
    return params


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """float32 in -1..1 → 16-bit little-endian PCM, the worker's wire format."""
    scaled = np.clip(np.round(np.asarray(audio, dtype=np.float32) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


@dataclass(eq=False)
class _Worker:
    name: str  # in error messages and logs
    url: str  # its transcribe endpoint
    outstanding: int = 0  # this process's requests to it not yet answered
    passed_over_until: float = 0.0  # time.monotonic(): it refused or did not answer

    def passed_over(self, now: float) -> bool:
        return now < self.passed_over_until


@dataclass
class RemoteAsrStats:
    requests: int = 0  # attempts: requests sent to a worker
    retried: int = 0  # attempts on a further worker for an utterance another one refused
    refused: int = 0  # 503 answers (queue full, shutting down)
    unanswered: int = 0  # attempts with no answer: connection refused or reset, timeouts
    given_up: int = 0  # utterances no worker took (every one refused, or the budget ran out)
    interims: int = 0  # interim requests sent
    # Interims not decoded so that no final waits: no worker was idle here, or the worker
    # answered interim_shed.
    interims_shed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "retried": self.retried,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "givenUp": self.given_up,
            "interims": self.interims,
            "interimsShed": self.interims_shed,
        }


class _Refusal(Exception):
    """A worker did not take the utterance, and another one may."""

    def __init__(self, error: AsrError, pass_over_s: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.pass_over_s = pass_over_s


class RemoteAsrEngine:
    def __init__(
        self,
        url: str,
        timeout_s: float = 15.0,
        *,
        retry_budget_s: float = 2.0,
        dns_refresh_s: float = 5.0,
        connect_timeout_s: float = 0.5,
        resolve: Resolver = resolve_addresses,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.dns_refresh_s = dns_refresh_s
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        self.stats = RemoteAsrStats()
        self._resolve = resolve
        self._random = random.Random()

        parsed = httpx.URL(self.url)
        self._scheme = parsed.scheme
        self.host = parsed.host
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._path = parsed.path.rstrip("/") + TRANSCRIBE_PATH
        # The Host header the URL itself would send: a worker behind a name is reached at its
        # address, but the request still names the service it was meant for.
        self._headers = {
            "content-type": "application/octet-stream",
            "host": parsed.netloc.decode("ascii"),
        }
        # Over TLS the certificate is checked against the name, not the address.
        self._extensions = {"sni_hostname": self.host} if parsed.scheme == "https" else {}

        self._workers: dict[str, _Worker] = {}
        # Interim decodes in flight, held until they end (and cancelled by close).
        self._interims: set[asyncio.Task[AsrResult]] = set()
        self._resolved_at: float | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._resolves_host = not _is_one_worker(self.host)
        if not self._resolves_host:
            self._workers[self.host] = _Worker(self.url, self._worker_url(self.host))

        transport = httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            # No retries here: a failed connection is retried on another worker (below).
            retries=0,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=self.connect_timeout_s),
        )

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        params = _query(request, word_timestamps=request.word_timestamps)
        body = pcm16_bytes(request.audio)
        started = time.monotonic()
        workers = await self._current_workers()
        tried: list[_Worker] = []
        refusals: list[AsrError] = []
        while (worker := self._choose(workers, tried)) is not None:
            if tried:
                self.stats.retried += 1
            tried.append(worker)
            try:
                result = await self._send(worker, params, body)
            except _Refusal as refusal:
                worker.passed_over_until = time.monotonic() + refusal.pass_over_s
                refusals.append(refusal.error)
                if time.monotonic() - started >= self.retry_budget_s:
                    break
                continue
            worker.passed_over_until = 0.0
            return result
        self.stats.given_up += 1
        raise self._not_taken(refusals, tried=len(tried), workers=len(workers))

    def start_interim(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None:
        """The text so far of an utterance still being spoken, sent now to a worker with none
        of this process's requests outstanding (at random among them); None, the interim
        shed, when there is none: every worker is busy with this process's utterances or
        passed over, or none is known yet. Chosen and counted in one step on the event loop,
        so two streams asking at once do not both take the last idle worker. The future fails
        with ``AsrInterimShedError`` when the worker had a final waiting (503
        ``interim_shed``); nothing is retried."""
        if self._resolves_host and (
            self._resolved_at is None or time.monotonic() - self._resolved_at >= self.dns_refresh_s
        ):
            self._start_refresh()  # for the next one: this one goes to the workers known now
        now = time.monotonic()
        idle = [w for w in self._workers.values() if w.outstanding == 0 and not w.passed_over(now)]
        if not idle:
            self.stats.interims_shed += 1
            return None
        worker = self._random.choice(idle)
        params = _query(request, word_timestamps=False)
        params["interim"] = "true"
        self.stats.interims += 1
        worker.outstanding += 1
        decoding = asyncio.get_running_loop().create_task(
            self._send_interim(worker, params, pcm16_bytes(request.audio))
        )
        self._interims.add(decoding)
        decoding.add_done_callback(self._interims.discard)
        return decoding

    async def _send_interim(self, worker: _Worker, params: _Query, body: bytes) -> AsrResult:
        try:
            return await self._attempt(worker, params, body)
        except AsrInterimShedError:
            self.stats.interims_shed += 1
            raise
        except _Refusal as refusal:
            # Full, shutting down or not answering: finals pass it over too.
            worker.passed_over_until = time.monotonic() + refusal.pass_over_s
            raise refusal.error from refusal
        finally:
            worker.outstanding -= 1

    def worker_counters(self) -> dict[str, int]:
        """For ``/healthz``: how many workers the name gives, how many are passed over now,
        and what became of the requests."""
        now = time.monotonic()
        return {
            "workers": len(self._workers),
            "workersPassedOver": sum(w.passed_over(now) for w in self._workers.values()),
            **self.stats.as_dict(),
        }

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for decoding in list(self._interims):
            decoding.cancel()
        await self._client.aclose()

    # ------------------------------------------------------------------ choosing a worker

    def _choose(self, workers: list[_Worker], tried: list[_Worker]) -> _Worker | None:
        """The worker for the next attempt: of those this utterance has not tried and that
        are not passed over, one with the fewest requests outstanding (at random among
        equals). When every one left is passed over, the one whose pass ends first: each
        still gets its chance before the utterance is given up."""
        untried = [w for w in workers if w not in tried]
        if not untried:
            return None
        now = time.monotonic()
        ready = [w for w in untried if not w.passed_over(now)]
        if not ready:
            return min(untried, key=lambda w: w.passed_over_until)
        fewest = min(w.outstanding for w in ready)
        return self._random.choice([w for w in ready if w.outstanding == fewest])

    async def _current_workers(self) -> list[_Worker]:
        if self._resolves_host:
            stale = (
                self._resolved_at is None
                or time.monotonic() - self._resolved_at >= self.dns_refresh_s
            )
            if stale:
                refreshing = self._start_refresh()
                if not self._workers:
                    await asyncio.shield(refreshing)
                # Otherwise utterances go on to the workers known while the name is looked
                # up again: a slow lookup delays nothing.
            if not self._workers:
                raise AsrUnavailableError(f"no ASR worker: {self.host} resolved to no address")
        return list(self._workers.values())

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        try:
            addresses = await asyncio.to_thread(self._resolve, self.host)
        except OSError as exc:
            log.warning("could not resolve the ASR workers' name %s: %s", self.host, exc)
            addresses = []
        finally:
            self._resolved_at = time.monotonic()
        if not addresses:
            # A failed or empty answer is more likely a blip than every worker gone: the
            # known ones are kept, and any that are gone are passed over when they fail.
            return
        if set(addresses) != set(self._workers):
            log.info("ASR workers for %s: %s", self.host, ", ".join(addresses))
        # Known workers keep their counts and passes; new ones start fresh.
        self._workers = {
            address: self._workers.get(address)
            or _Worker(f"{self.url} at {address}", self._worker_url(address))
            for address in addresses
        }

    def _worker_url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self._scheme}://{host}:{self._port}{self._path}"

    # ------------------------------------------------------------------ one attempt

    async def _send(self, worker: _Worker, params: _Query, body: bytes) -> AsrResult:
        worker.outstanding += 1
        try:
            return await self._attempt(worker, params, body)
        finally:
            worker.outstanding -= 1

    async def _attempt(self, worker: _Worker, params: _Query, body: bytes) -> AsrResult:
        """One request to ``worker`` (the caller counts it outstanding)."""
        self.stats.requests += 1
        try:
            response = await self._client.post(
                worker.url,
                params=params,
                content=body,
                headers=self._headers,
                extensions=self._extensions,
            )
        except httpx.ConnectTimeout as exc:
            self.stats.unanswered += 1
            raise _unanswered(
                f"ASR worker {worker.name} unreachable: no connection within "
                f"{self.connect_timeout_s:g} s",
                exc,
            ) from exc
        except httpx.TimeoutException as exc:
            self.stats.unanswered += 1
            raise _unanswered(
                f"ASR worker {worker.name} did not answer within {self.timeout_s:g} s", exc
            ) from exc
        except httpx.TransportError as exc:
            self.stats.unanswered += 1
            raise _unanswered(f"ASR worker {worker.name} unreachable: {exc!r}", exc) from exc
        except httpx.HTTPError as exc:
            raise AsrUnavailableError(f"ASR worker {worker.name} failed: {exc!r}") from exc

        if response.status_code == 503 and _error_code(response) == "interim_shed":
            # Not a refusal of the worker: it had a final waiting, and still takes finals.
            raise AsrInterimShedError(
                f"ASR worker {worker.name} shed the interim: {_error_text(response)}"
            )
        if response.status_code == 503:
            # The worker's queue is full or it is shutting down (a load balancer with no
            # healthy worker answers 503 too): another worker may take the utterance.
            self.stats.refused += 1
            retry_after_s = _retry_after(response)
            raise _Refusal(
                AsrOverloadedError(
                    f"ASR worker {worker.name} refused the utterance: {_error_text(response)}",
                    retry_after_s=retry_after_s,
                ),
                min(retry_after_s or REFUSED_PASS_OVER_S, MAX_PASS_OVER_S),
            )
        # Any other answer is the same from every worker (bad input, a model failure): the
        # utterance is not sent again.
        if response.status_code != 200:
            raise AsrUnavailableError(
                f"ASR worker {worker.name} answered HTTP {response.status_code}: "
                f"{_error_text(response)}"
            )
        try:
            return _result(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise AsrUnavailableError(
                f"ASR worker {worker.name} sent an unreadable answer: {exc!r}"
            ) from exc

    def _not_taken(self, refusals: list[AsrError], *, tried: int, workers: int) -> AsrError:
        """The error for an utterance no worker took: overloaded when any worker said it was
        at capacity, unavailable when none answered."""
        if tried == workers == 1:
            return refusals[0]
        reasons = "; ".join(str(error) for error in refusals)
        if tried < workers:
            message = (
                f"the ASR retry budget of {self.retry_budget_s:g} s ran out after {tried} of "
                f"{workers} workers: {reasons}"
            )
        else:
            message = f"every ASR worker refused the utterance ({workers} tried): {reasons}"
        overloaded = [e for e in refusals if isinstance(e, AsrOverloadedError)]
        if overloaded:
            retry_after = [e.retry_after_s for e in overloaded if e.retry_after_s is not None]
            return AsrOverloadedError(message, retry_after_s=min(retry_after, default=None))
        return AsrUnavailableError(message)


def _is_one_worker(host: str) -> bool:
    """An IP address or localhost names one worker; any other host may name several."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unanswered(message: str, cause: Exception) -> _Refusal:
    error = AsrUnavailableError(message)
    error.__cause__ = cause
    return _Refusal(error, UNANSWERED_PASS_OVER_S)


def _result(body: dict[str, Any]) -> AsrResult:
    return AsrResult(
        text=str(body["text"]),
        words=tuple(
            AsrWord(
                text=str(w["text"]),
                start_ms=int(w["startMs"]),
                end_ms=int(w["endMs"]),
                confidence=float(w["confidence"]),
            )
            for w in body["words"]
        ),
        language=body.get("language"),
        audio_ms=int(body["audioMs"]),
        processing_ms=float(body["processingMs"]),
        queue_ms=float(body["queueMs"]),
        batch_size=int(body["batchSize"]),
    )


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not something our worker sends
