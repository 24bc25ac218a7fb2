"""The Twilio Media Streams WebSocket endpoint: wraps the sans-IO ``TwilioStreamProtocol``.

The stream token is checked once, when the WebSocket opens. Twilio's ``<Stream url>`` may not
carry a query string in every setup, so a token can also come as the ``token`` custom
parameter (``<Parameter name="token" value="…"/>``) of the ``start`` frame: it is then checked
on that frame, before any audio is accepted. Either way the start frame must come within
``start_timeout_s`` of the WebSocket opening (Twilio sends it at once): a WebSocket that sends
nothing, or only ``connected``, would otherwise hold its connection for as long as it answers
pings. Each accepted stream becomes a ``TwilioCall``
(a ``CallSession``) keyed by (tenant, "twilio", callSid) on its ``start`` frame. A malformed,
oversized or out-of-order frame closes that one WebSocket with a precise close code and
reason; the call's audio so far is kept and its open utterances are finished.

A draining gateway (its task is stopping, or its deployment was replaced) closes a new
WebSocket at once with 1013 (try again later) and the reason, before any call exists; its live
streams go on. A Twilio stream lives on its one WebSocket: a call cannot move to another
gateway, so it ends on the gateway that has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from callscribe.audio import TELEPHONE_RATE, ulaw_to_pcm16
from callscribe.auth import AuthError, StreamGrant, StreamTokens
from callscribe.calls import Calls, CallSession
from callscribe.config import TwilioSettings
from callscribe.connection_limits import LIMITS_LOG
from callscribe.model import Namespace, Role
from callscribe.store.base import CallKey, Store
from callscribe.twilio.protocol import (
    CloseCode,
    MediaReceived,
    StreamStarted,
    StreamStopped,
    TwilioProtocolError,
    TwilioStreamProtocol,
)

log = logging.getLogger(__name__)

DEFAULT_TRACK_ROLES = {"inbound": Role.CUSTOMER, "outbound": Role.AGENT}
DRAINING_REASON = "draining: this gateway takes no new streams"


class TwilioCall(CallSession):
    """A call as one Twilio stream carries it.

    A stream may fail and the customer start a new one for the same call (the documented
    recovery); Twilio's ``media.timestamp`` restarts at 0 on it. The call keeps one timeline:
    a new stream's audio is placed after the earlier stream's and no earlier than the wall-clock
    time since the call's first stream started, so message ``start``/``end`` keep counting from
    the call's start and never overlap an earlier stream's.
    """

    # A Twilio stream ends at hang-up, often just before the integration's stop-streaming.
    summary_after_end = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Where Twilio's timestamp 0 of this stream lies on the call's timeline (8 kHz samples).
        self.stream_offset_samples = 0
        # Wall-clock time of the call's timeline origin: the first stream's start.
        self.timeline_origin_s = time.time()

    def media(self, track: str, pcm16: np.ndarray, timestamp_ms: int) -> None:
        """Audio of this stream, at ``timestamp_ms`` since the stream started."""
        self.audio(track, pcm16, self.stream_offset_samples + timestamp_ms * TELEPHONE_RATE // 1000)

    def ingest_params(self) -> dict[str, Any]:
        timeline_end = max((stream.position for stream in self.streams.values()), default=0)
        return {
            "twilio": {
                "timelineOriginS": self.timeline_origin_s,
                "timelineEndSample": max(timeline_end, self.stream_offset_samples),
            }
        }

    def restore_params(self, params: dict[str, Any]) -> None:
        """A new stream of a call an earlier stream began: continue that stream's timeline."""
        timeline = params.get("twilio") or {}
        origin = timeline.get("timelineOriginS")
        if isinstance(origin, (int, float)) and origin <= self.timeline_origin_s:
            self.timeline_origin_s = float(origin)
        since_origin = round((time.time() - self.timeline_origin_s) * TELEPHONE_RATE)
        earlier_end = timeline.get("timelineEndSample")
        # Wall-clock time alone is not enough: a sender may run ahead of real time.
        self.stream_offset_samples = max(
            since_origin, earlier_end if isinstance(earlier_end, int) else 0
        )
        for stream in self.streams.values():
            stream.position = self.stream_offset_samples


class RealTimePacer:
    """Keeps one stream's intake within ``max_speed`` times real time plus ``burst_s`` of audio.

    Sans-IO: the caller passes the clock. A track's position is how far its audio reaches on
    the stream's timeline: each frame's audio, placed at its timestamp when that is later (a
    forward jump the call fills with silence). Both count, because both are work for the
    endpointer: timestamps alone would let a sender repeat timestamp 0 with ever more audio.
    """

    def __init__(self, max_speed: float, burst_s: float, started_at: float) -> None:
        self.max_speed = max_speed
        self.burst_s = burst_s
        self.started_at = started_at
        self._track_end_s: dict[str, float] = {}

    @property
    def position_s(self) -> float:
        """How far the furthest track's audio reaches, in seconds since the stream started."""
        return max(self._track_end_s.values(), default=0.0)

    def media(self, track: str, timestamp_ms: int, samples: int) -> None:
        start = max(self._track_end_s.get(track, 0.0), timestamp_ms / 1000)
        self._track_end_s[track] = start + samples / TELEPHONE_RATE

    def wait_s(self, now: float) -> float:
        """How long to leave the stream unread before its next frame (0: read on)."""
        allowed_s = self.burst_s + self.max_speed * (now - self.started_at)
        return max(0.0, (self.position_s - allowed_s) / self.max_speed)


@dataclass
class GatewayServices:
    store: Store
    tokens: StreamTokens
    calls: Calls
    intake: TwilioSettings = field(default_factory=TwilioSettings)
    max_frame_bytes: int = 16_384
    # The start frame (which carries the token when the URL has none) must come this long
    # after the WebSocket opens.
    start_timeout_s: float = 10.0


class TwilioGateway:
    def __init__(self, services: GatewayServices) -> None:
        self.services = services
        self.streams_opened = 0
        self.streams_rejected = 0
        self.streams_timed_out = 0  # closed for want of a start frame (with a token)
        # Streams that ran ahead of real time beyond the burst and were read more slowly.
        self.streams_paced = 0
        self.streams_refused_draining = 0
        # From this time.monotonic() on, new streams are refused (None: never).
        self._refuse_from: float | None = None

    def begin_draining(self, grace_s: float = 0.0) -> None:
        """Refuse new streams ``grace_s`` from now (or sooner, if asked before); live streams
        go on to their end."""
        refuse_from = time.monotonic() + grace_s
        if self._refuse_from is None or refuse_from < self._refuse_from:
            self._refuse_from = refuse_from
            log.info("twilio gateway draining: new streams refused in %.0f s", grace_s)

    @property
    def refusing(self) -> bool:
        return self._refuse_from is not None and time.monotonic() >= self._refuse_from

    async def __call__(self, websocket: WebSocket) -> None:
        if self.refusing:
            self.streams_refused_draining += 1
            await refuse_while_draining(websocket)
            return
        await websocket.accept()
        token = websocket.query_params.get("token")
        grant = None
        if token is not None:
            try:
                grant = await self.verify(token)
            except AuthError as exc:
                self.reject(websocket, exc)
                await close_quietly(websocket, CloseCode.POLICY_VIOLATION, str(exc))
                return
        await _TwilioStream(self, websocket, grant).run()

    async def verify(self, token: str | None) -> StreamGrant:
        return await asyncio.to_thread(self.services.tokens.verify, token, self.services.store)

    def reject(self, websocket: WebSocket, exc: AuthError) -> None:
        self.streams_rejected += 1
        log.warning("twilio stream from %s rejected: %s", websocket.client, exc)


async def refuse_while_draining(websocket: WebSocket) -> None:
    """Accepted, then closed at once with 1013 and the reason. (An HTTP 503 in place of the
    upgrade would say as much, but uvicorn then logs every refusal as an application error.)"""
    await websocket.accept()
    await close_quietly(websocket, CloseCode.TRY_AGAIN_LATER, DRAINING_REASON)


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close from our side, unless the peer went away first: Twilio closes right after its
    stop frame, often before the call has completed and our close frame is sent."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.close(code, reason)


class _NoStartInTime(Exception):
    def __init__(self, without_token: bool) -> None:
        super().__init__("no start frame in time")
        self.without_token = without_token


class _TwilioStream:
    def __init__(self, gateway: TwilioGateway, websocket: WebSocket, grant: StreamGrant | None):
        self.gateway = gateway
        self.services = gateway.services
        self.websocket = websocket
        self.grant = grant
        self.protocol = TwilioStreamProtocol(max_frame_bytes=self.services.max_frame_bytes)
        self.session: TwilioCall | None = None
        self.pacer: RealTimePacer | None = None  # from the start frame on
        self._paced = False

    async def run(self) -> None:
        close: tuple[int, str] | None = (CloseCode.NORMAL, "stream stopped")
        # One deadline for the whole wait, not one per frame: frames other than start (a
        # connected frame every few seconds) must not keep a stream waiting.
        start_deadline = asyncio.get_running_loop().time() + self.services.start_timeout_s
        try:
            while True:
                if self.session is None:
                    try:
                        async with asyncio.timeout_at(start_deadline):
                            message = await self.websocket.receive()
                    except TimeoutError:
                        raise _NoStartInTime(without_token=self.grant is None) from None
                else:
                    message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    close = None
                    break
                frame = message.get("text")
                if frame is None:
                    frame = message.get("bytes") or b""
                if await self._handle(self.protocol.receive(frame)):
                    break
                await self._keep_to_real_time()
        except _NoStartInTime as exc:
            if exc.without_token:
                self.gateway.streams_rejected += 1
                reason = "missing token"
            else:
                self.gateway.streams_timed_out += 1
                reason = f"no start frame within {self.services.start_timeout_s:g} s"
            # Rate-limited: idle WebSockets come in floods.
            LIMITS_LOG.warning("closed a Twilio media stream: %s", reason)
            close = (CloseCode.POLICY_VIOLATION, reason)
        except AuthError as exc:
            self.gateway.reject(self.websocket, exc)
            close = (CloseCode.POLICY_VIOLATION, str(exc))
        except TwilioProtocolError as exc:
            close = (exc.close_code, exc.reason)
            log.warning(
                "twilio stream %s (call %s) closed: %s",
                self.protocol.stream_sid,
                self.protocol.call_sid,
                exc.reason,
            )
        except WebSocketDisconnect:
            close = None
        except Exception:
            log.exception("twilio stream %s failed", self.protocol.stream_sid)
            close = (CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if self.session is not None:
                await self.session.complete()
                self.services.calls.forget(self.session)
        if close is not None:
            await close_quietly(self.websocket, *close)

    async def _keep_to_real_time(self) -> None:
        """Between two frames: give the event loop to everything else, and stop reading a
        stream that is too far ahead of real time until real time catches up.

        A WebSocket's frames that have already arrived are handed over without suspending,
        so without this a sender that floods would have the loop to itself (its endpointing
        runs on it) for as long as its backlog lasts: other calls' frames and API requests
        would wait seconds. One frame per turn of the loop bounds what a stream takes in one
        go; not reading leaves its frames in the socket, so TCP slows the sender down.
        """
        if self.pacer is None:
            await asyncio.sleep(0)
            return
        wait_s = self.pacer.wait_s(asyncio.get_running_loop().time())
        if wait_s <= 0:
            await asyncio.sleep(0)
            return
        if not self._paced:
            self._paced = True
            self.gateway.streams_paced += 1
            log.warning(
                "twilio stream %s (call %s) runs ahead of real time (%.1f s of audio in %.1f s):"
                " reading it at %g x real time",
                self.protocol.stream_sid,
                self.protocol.call_sid,
                self.pacer.position_s,
                asyncio.get_running_loop().time() - self.pacer.started_at,
                self.pacer.max_speed,
            )
        await asyncio.sleep(wait_s)

    async def _handle(self, events: Sequence[object]) -> bool:
        """Apply a frame's events; True once the stream has stopped."""
        for event in events:
            if isinstance(event, MediaReceived):
                assert self.session is not None  # the protocol refuses media before start
                assert self.pacer is not None
                pcm16 = ulaw_to_pcm16(event.payload)
                self.pacer.media(event.track, event.timestamp_ms, len(pcm16))
                self.session.media(event.track, pcm16, event.timestamp_ms)
            elif isinstance(event, StreamStarted):
                await self._open(event)
            elif isinstance(event, StreamStopped):
                return True
        return False

    async def _open(self, started: StreamStarted) -> None:
        if self.grant is None:
            self.grant = await self.gateway.verify(started.custom_parameters.get("token"))
        self.gateway.streams_opened += 1
        key = CallKey(self.grant.tenant, Namespace.TWILIO.value, started.call_sid)
        if self.services.calls.get(key) is not None:
            raise TwilioProtocolError(
                CloseCode.POLICY_VIOLATION, f"call {started.call_sid} already has a live stream"
            )
        self.session = await self.services.calls.open(
            TwilioCall,
            key,
            channels=started.tracks,
            channel_roles={t: DEFAULT_TRACK_ROLES[t] for t in started.tracks},
        )
        intake = self.services.intake
        self.pacer = RealTimePacer(
            intake.max_speed, intake.burst_s, asyncio.get_running_loop().time()
        )
        log.info(
            "twilio stream %s opened call %s (tracks %s)",
            started.stream_sid,
            key,
            ",".join(started.tracks),
        )
