"""Kinesis Video Streams through boto3: a tenant's role, GetDataEndpoint, GetMedia.

Connect writes each contact's audio into a stream in the *tenant's* AWS account. The readers
assume the role that the tenant created for CallScribe (``infra/customer_account.py``), which
trusts CallScribe's reader role and demands the tenant's external id (so no one else can make
CallScribe read that account's streams: the confused-deputy guard). The role and external id
are the tenant's :class:`~callscribe.store.base.ConnectAccess` in the Store. Assumed
credentials are cached per role until five minutes before they expire; every GetMedia request
(a call start, a reconnect) signs with fresh ones, so a call may outlive any one session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callscribe.config import ConnectSettings
from callscribe.connect.reader import KvsAccessError, MediaBody, StartSelector
from callscribe.model import CallError, ErrorCode
from callscribe.store.base import ConnectAccess, Store

# Errors that the tenant's setup causes (and a retry cannot fix).
_ACCESS_ERRORS = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "NotAuthorizedException",
        "ResourceNotFoundException",
        "InvalidArgumentException",
        "UnrecognizedClientException",
        "ValidationError",
        "RegionDisabledException",
    }
)
_REFRESH_BEFORE_EXPIRY_S = 300
_CREDENTIALS_S = 3600

ClientFactory = Callable[..., Any]


@dataclass(frozen=True)
class StreamArn:
    partition: str
    region: str
    account: str
    name: str

    @classmethod
    def parse(cls, arn: str) -> StreamArn:
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[2] != "kinesisvideo" or not parts[5].startswith("stream/"):
            raise KvsAccessError(f"{arn!r} is not a Kinesis Video Streams stream ARN")
        return cls(parts[1], parts[3], parts[4], parts[5].split("/")[1])


def role_account(role_arn: str) -> str | None:
    parts = role_arn.split(":")
    return parts[4] if len(parts) >= 6 and parts[2] == "iam" else None


def boto3_client(
    service: str, *, region: str, credentials: dict[str, str] | None = None, **kwargs: Any
) -> Any:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"] if credentials else None,
        aws_secret_access_key=credentials["SecretAccessKey"] if credentials else None,
        aws_session_token=credentials["SessionToken"] if credentials else None,
        region_name=region,
    )
    return session.client(service, **kwargs)


class BotoMediaBody:
    """GetMedia's payload. ``read_some`` returns what the connection has delivered (urllib3's
    ``read1``): a plain ``read(n)`` would wait for n bytes, seconds of audio on a live stream."""

    def __init__(self, payload: Any) -> None:
        self._payload = payload
        raw = getattr(payload, "_raw_stream", None)
        self._read1 = getattr(raw, "read1", None)

    def read_some(self, max_bytes: int) -> bytes:
        if self._read1 is None:
            return self._payload.read(max_bytes)
        return self._read1(max_bytes)

    def close(self) -> None:
        self._payload.close()


class AssumedRole:
    """Credentials of one tenant role, renewed before they expire. Thread-safe."""

    def __init__(
        self,
        access: ConnectAccess,
        region: str,
        settings: ConnectSettings,
        client_factory: ClientFactory,
    ) -> None:
        self.access = access
        self.region = region
        self.settings = settings
        self.client_factory = client_factory
        self._credentials: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def credentials(self) -> dict[str, str]:
        with self._lock:
            current = self._credentials
            if current is None or current["Expiration"] - time.time() < _REFRESH_BEFORE_EXPIRY_S:
                current = self._assume()
                self._credentials = current
            return current

    def _assume(self) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        sts = self.client_factory("sts", region=self.region)
        params: dict[str, Any] = {
            "RoleArn": self.access.role_arn,
            "RoleSessionName": self.settings.role_session_name,
            "DurationSeconds": _CREDENTIALS_S,
        }
        if self.access.external_id:
            params["ExternalId"] = self.access.external_id
        try:
            answer = sts.assume_role(**params)["Credentials"]
        except ClientError as exc:
            raise KvsAccessError(
                f"cannot assume {self.access.role_arn}: {exc.response['Error'].get('Message', exc)}"
            ) from None
        expiration = answer["Expiration"]
        return {
            "AccessKeyId": answer["AccessKeyId"],
            "SecretAccessKey": answer["SecretAccessKey"],
            "SessionToken": answer["SessionToken"],
            "Expiration": expiration.timestamp()
            if hasattr(expiration, "timestamp")
            else time.time() + _CREDENTIALS_S,
        }


class BotoKvsMediaSource:
    """GetMedia on a tenant's streams, as its role (or CallScribe's own credentials)."""

    def __init__(
        self,
        access: ConnectAccess,
        settings: ConnectSettings,
        client_factory: ClientFactory = boto3_client,
    ) -> None:
        self.access = access
        self.settings = settings
        self.client_factory = client_factory
        self._roles: dict[str, AssumedRole] = {}
        self._lock = threading.Lock()

    def _credentials(self, region: str) -> dict[str, str] | None:
        if self.access.role_arn is None:
            return None
        with self._lock:
            role = self._roles.get(region)
            if role is None:
                role = AssumedRole(self.access, region, self.settings, self.client_factory)
                self._roles[region] = role
        return role.credentials()

    def get_media(self, stream_arn: str, selector: StartSelector) -> MediaBody:
        from botocore.config import Config
        from botocore.exceptions import ClientError

        stream = StreamArn.parse(stream_arn)
        if self.access.role_arn is not None:
            account = role_account(self.access.role_arn)
            if account is not None and account != stream.account:
                raise KvsAccessError(
                    f"stream {stream.name} is in account {stream.account}; this tenant's Connect "
                    f"role is in account {account}"
                )
        credentials = self._credentials(stream.region)
        try:
            video = self.client_factory(
                "kinesisvideo", region=stream.region, credentials=credentials
            )
            endpoint = video.get_data_endpoint(StreamARN=stream_arn, APIName="GET_MEDIA")[
                "DataEndpoint"
            ]
            media = self.client_factory(
                "kinesis-video-media",
                region=stream.region,
                credentials=credentials,
                endpoint_url=endpoint,
                config=Config(
                    read_timeout=self.settings.read_timeout_s,
                    connect_timeout=5,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
            answer = media.get_media(StreamARN=stream_arn, StartSelector=selector.as_request())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", str(exc))
            if code in _ACCESS_ERRORS:
                raise KvsAccessError(
                    f"cannot read stream {stream.name}: {code}: {message}"
                ) from None
            raise
        return BotoMediaBody(answer["Payload"])


class BotoMediaSources:
    """Per tenant, the media source its Store entry describes."""

    def __init__(
        self, store: Store, settings: ConnectSettings, client_factory: ClientFactory = boto3_client
    ) -> None:
        self.store = store
        self.settings = settings
        self.client_factory = client_factory
        self._sources: dict[str, BotoKvsMediaSource] = {}
        self._lock = threading.Lock()

    def for_tenant(self, tenant: str) -> BotoKvsMediaSource:
        """Blocking (reads the Store). CallError 400-202 when the tenant has no access set up."""
        access = self.store.get_connect_access(tenant)
        if access is None:
            raise CallError(
                ErrorCode.TRANSCRIPTION_PARAMETER,
                "Amazon Connect is not set up for this tenant: its operator must register the "
                "tenant's Connect role (callscribe connect-access set)",
            )
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise CallError(
                ErrorCode.INTERNAL, "reading Amazon Connect media needs callscribe[aws] (boto3)"
            ) from None
        with self._lock:
            source = self._sources.get(tenant)
            if source is None or source.access != access:
                source = BotoKvsMediaSource(access, self.settings, self.client_factory)
                self._sources[tenant] = source
            return source
