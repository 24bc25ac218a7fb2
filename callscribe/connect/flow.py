"""The Amazon Connect contact-flow Lambdas' logic: ``connect_start`` and ``connect_stop``.

A contact flow invokes ``connect_start`` right after its "Start media streaming" block and
``connect_stop`` right before "Stop media streaming". Each reads the contact from the flow's
event, calls CallScribe's start-streaming / stop-streaming with the application's credentials
(kept in Secrets Manager), and answers the flow with a flat map of strings, which is all that a
flow can read from a Lambda (``$.External.callscribeResult`` …). They never raise into the
flow: an error is logged and reported as ``callscribeResult = error`` with
``callscribeErrorCode`` and ``callscribeError``, so the flow can branch on it and the call goes
on either way.

Stdlib only (plus the boto3 of Lambda's Python runtime, for Secrets Manager): the functions
ship as a small zip, because Connect waits for them (at most 8 seconds) on every contact.

Settings (environment variables):

| variable | default | meaning |
| --- | --- | --- |
| ``CALLSCRIBE_API_URL`` | required | CallScribe's API base URL, https://… |
| ``CALLSCRIBE_CREDENTIALS_SECRET_ARN`` | required | secret ``{"apiId": …, "apiSecret": …}`` |
| ``CALLSCRIBE_CONTACT_ID_FIELD`` | ``ContactId`` | or ``InitialContactId`` (one call across transfers), ``PreviousContactId`` |
| ``CALLSCRIBE_CUSTOMER_ID_ATTRIBUTE`` | ``customerId`` | Lambda parameter or contact attribute holding the customer's id |
| ``CALLSCRIBE_AGENT_ID_ATTRIBUTE`` | ``agentId`` | likewise for the agent's id |
| ``CALLSCRIBE_LANGUAGE`` | the contact's ``LanguageCode``, else ``en-US`` | transcription language |
| ``CALLSCRIBE_REDACTION_OUTPUT`` | ``redacted`` | ``unredacted``, ``redacted_and_unredacted`` |
| ``CALLSCRIBE_DETAILED_TOKEN`` | ``false`` | word-level tokens |
| ``CALLSCRIBE_API_TIMEOUT_S`` | ``6`` | Connect gives a Lambda at most 8 s |

The Lambda block's parameters (``Details.Parameters``) override the contact attributes of the
same names, and may carry ``language``, ``redactionOutput`` and ``detailedToken``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("callscribe.connect.flow")

CONTACT_ID_FIELDS = ("ContactId", "InitialContactId", "PreviousContactId")
REDACTION_OUTPUTS = ("redacted", "unredacted", "redacted_and_unredacted")
START_PATH = "/mg-autotranscribe/v1/start-streaming"
STOP_PATH = "/mg-autotranscribe/v1/stop-streaming"
NAMESPACE = "amazonconnect"


class FlowError(Exception):
    """Something the flow's event or the Lambda's settings lack; reported, never raised."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FlowSettings:
    api_url: str
    credentials_secret_arn: str
    contact_id_field: str = "ContactId"
    customer_id_attribute: str = "customerId"
    agent_id_attribute: str = "agentId"
    language: str | None = None
    redaction_output: str = "redacted"
    detailed_token: bool = False
    timeout_s: float = 6.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> FlowSettings:
        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise FlowError("configuration", f"{name} is not set")
            return value

        field = environ.get("CALLSCRIBE_CONTACT_ID_FIELD", "ContactId")
        if field not in CONTACT_ID_FIELDS:
            raise FlowError(
                "configuration",
                f"CALLSCRIBE_CONTACT_ID_FIELD must be one of {', '.join(CONTACT_ID_FIELDS)}",
            )
        redaction = environ.get("CALLSCRIBE_REDACTION_OUTPUT", "redacted")
        if redaction not in REDACTION_OUTPUTS:
            raise FlowError(
                "configuration",
                f"CALLSCRIBE_REDACTION_OUTPUT must be one of {', '.join(REDACTION_OUTPUTS)}",
            )
        try:
            timeout_s = float(environ.get("CALLSCRIBE_API_TIMEOUT_S", "6"))
        except ValueError:
            raise FlowError("configuration", "CALLSCRIBE_API_TIMEOUT_S is not a number") from None
        return cls(
            api_url=required("CALLSCRIBE_API_URL").rstrip("/"),
            credentials_secret_arn=required("CALLSCRIBE_CREDENTIALS_SECRET_ARN"),
            contact_id_field=field,
            customer_id_attribute=environ.get("CALLSCRIBE_CUSTOMER_ID_ATTRIBUTE", "customerId"),
            agent_id_attribute=environ.get("CALLSCRIBE_AGENT_ID_ATTRIBUTE", "agentId"),
            language=environ.get("CALLSCRIBE_LANGUAGE") or None,
            redaction_output=redaction,
            detailed_token=_truthy(environ.get("CALLSCRIBE_DETAILED_TOKEN", "false")),
            timeout_s=timeout_s,
        )


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


# Reading the flow's event ----------------------------------------------------------------------


def _contact_data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    details = event.get("Details") if isinstance(event, Mapping) else None
    data = details.get("ContactData") if isinstance(details, Mapping) else None
    if not isinstance(data, Mapping):
        raise FlowError("event", "the event has no Details.ContactData: is this a contact flow?")
    return data


def _parameters(event: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = (event.get("Details") or {}).get("Parameters")
    return parameters if isinstance(parameters, Mapping) else {}


def contact_guid(event: Mapping[str, Any], settings: FlowSettings) -> str:
    """The call's guid: the configured contact id, or the contact's own when that one is empty
    (PreviousContactId of a first contact)."""
    data = _contact_data(event)
    value = data.get(settings.contact_id_field) or data.get("ContactId")
    if not isinstance(value, str) or not value:
        raise FlowError("event", "the contact has no ContactId")
    return value


def _attribute(event: Mapping[str, Any], name: str) -> str | None:
    for source in (_parameters(event), _contact_data(event).get("Attributes") or {}):
        value = source.get(name) if isinstance(source, Mapping) else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def start_request(event: Mapping[str, Any], settings: FlowSettings) -> dict[str, Any]:
    data = _contact_data(event)
    audio = ((data.get("MediaStreams") or {}).get("Customer") or {}).get("Audio") or {}
    stream_arn = audio.get("StreamARN")
    if not stream_arn:
        raise FlowError(
            "event",
            "the contact has no media stream: put this Lambda after a Start media streaming block",
        )
    customer_id = _attribute(event, settings.customer_id_attribute) or data.get("CustomerId")
    agent_id = _attribute(event, settings.agent_id_attribute)
    missing = [
        name
        for name, value in (
            (settings.customer_id_attribute, customer_id),
            (settings.agent_id_attribute, agent_id),
        )
        if not value
    ]
    if missing:
        raise FlowError(
            "event",
            f"no {' or '.join(missing)} in the Lambda's parameters or the contact's attributes",
        )
    parameters = _parameters(event)
    language = (
        parameters.get("language") or settings.language or data.get("LanguageCode") or "en-US"
    )
    redaction = parameters.get("redactionOutput") or settings.redaction_output
    detailed = (
        _truthy(parameters["detailedToken"])
        if "detailedToken" in parameters
        else settings.detailed_token
    )
    connect_params: dict[str, Any] = {"streamArn": stream_arn, "startSelectorType": "NOW"}
    fragment = audio.get("StartFragmentNumber")
    if fragment:
        # The fragment where "Start media streaming" began: nothing said since is missed.
        connect_params = {
            "streamArn": stream_arn,
            "startSelectorType": "FRAGMENT_NUMBER",
            "afterFragmentNumber": str(fragment),
        }
    return {
        "namespace": NAMESPACE,
        "guid": contact_guid(event, settings),
        "customerId": customer_id,
        "agentId": agent_id,
        "autotranscribeParams": {
            "language": language,
            "detailedToken": detailed,
            "redactionOutput": redaction,
        },
        "amazonConnectParams": connect_params,
    }


def stop_request(event: Mapping[str, Any], settings: FlowSettings) -> dict[str, Any]:
    return {"namespace": NAMESPACE, "guid": contact_guid(event, settings)}


# Calling CallScribe ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCredentials:
    api_id: str
    api_secret: str


class SecretsManagerCredentials:
    """The application's key, read once per Lambda container (again after a 401: rotated)."""

    def __init__(self, secret_arn: str, client: Any | None = None) -> None:
        self.secret_arn = secret_arn
        self._client = client
        self._cached: ApiCredentials | None = None
        self._lock = threading.Lock()

    def get(self, refresh: bool = False) -> ApiCredentials:
        with self._lock:
            if self._cached is None or refresh:
                self._cached = self._read()
            return self._cached

    def _read(self) -> ApiCredentials:
        if self._client is None:
            import boto3

            self._client = boto3.client("secretsmanager")
        try:
            raw = self._client.get_secret_value(SecretId=self.secret_arn)["SecretString"]
            value = json.loads(raw)
            return ApiCredentials(str(value["apiId"]), str(value["apiSecret"]))
        except (KeyError, TypeError, ValueError):
            raise FlowError(
                "configuration", 'the credentials secret must be {"apiId": …, "apiSecret": …}'
            ) from None


Post = Callable[[str, dict[str, Any], ApiCredentials, float], tuple[int, dict[str, Any]]]


def http_post(
    url: str, body: dict[str, Any], credentials: ApiCredentials, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "asapp-api-id": credentials.api_id,
            "asapp-api-secret": credentials.api_secret,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FlowError("unreachable", f"CallScribe did not answer: {reason}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class ContactFlowHandler:
    def __init__(
        self, settings: FlowSettings, credentials: SecretsManagerCredentials, post: Post = http_post
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.post = post

    @classmethod
    def from_environ(cls) -> ContactFlowHandler:
        settings = FlowSettings.from_environ()
        return cls(settings, SecretsManagerCredentials(settings.credentials_secret_arn))

    def start(self, event: Mapping[str, Any]) -> dict[str, str]:
        return self._run("start", event, lambda: start_request(event, self.settings), START_PATH)

    def stop(self, event: Mapping[str, Any]) -> dict[str, str]:
        return self._run("stop", event, lambda: stop_request(event, self.settings), STOP_PATH)

    def _run(
        self, action: str, event: Mapping[str, Any], build: Callable[[], dict[str, Any]], path: str
    ) -> dict[str, str]:
        guid = ""
        try:
            body = build()
            guid = body["guid"]
            status, answer = self._call(path, body)
            if 200 <= status < 300 and answer.get("isOk") is True:
                result = flatten_result(answer.get("autotranscribeResponse") or {})
                log.info(json.dumps({"action": action, "guid": guid, "status": status}))
                return {"callscribeResult": "ok", "callscribeGuid": guid, **result}
            raw_error = answer.get("error")
            error = raw_error if isinstance(raw_error, dict) else {}
            raise FlowError(
                str(error.get("code") or f"http-{status}"),
                str(error.get("message") or f"CallScribe answered HTTP {status}"),
            )
        except FlowError as exc:
            log.error(
                json.dumps({"action": action, "guid": guid, "code": exc.code, "error": exc.message})
            )
            return _error(guid, exc.code, exc.message)
        except Exception as exc:  # never into the flow: it must go on with the call
            log.exception("connect %s failed", action)
            return _error(guid, "internal", f"{type(exc).__name__}: {exc}")

    def _call(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = self.settings.api_url + path
        status, answer = self.post(url, body, self.credentials.get(), self.settings.timeout_s)
        if status == 401:  # the key may have been rotated since this container read it
            status, answer = self.post(
                url, body, self.credentials.get(refresh=True), self.settings.timeout_s
            )
        return status, answer


def _error(guid: str, code: str, message: str) -> dict[str, str]:
    return {
        "callscribeResult": "error",
        "callscribeGuid": guid,
        "callscribeErrorCode": code,
        "callscribeError": message[:1000],
    }


def flatten_result(result: Mapping[str, Any]) -> dict[str, str]:
    """start/stop's per-participant answer as flat string attributes for the flow."""
    flat: dict[str, str] = {}
    for role in ("customer", "agent"):
        participant = result.get(role)
        if not isinstance(participant, Mapping):
            continue
        prefix = f"callscribe{role.capitalize()}"
        if participant.get("streamId"):
            flat[f"{prefix}StreamId"] = str(participant["streamId"])
        summary = participant.get("summary")
        if isinstance(summary, Mapping):
            for name in ("totalAudioBytes", "audioDurationMs", "streamingSeconds", "transcripts"):
                if name in summary:
                    flat[f"{prefix}{name[0].upper()}{name[1:]}"] = str(summary[name])
    return flat


# The Lambda entrypoints' shared part -------------------------------------------------------------


@functools.cache
def default_handler() -> ContactFlowHandler:
    """Built once per Lambda container from its environment (not cached when it fails)."""
    log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))
    return ContactFlowHandler.from_environ()


def handle(action: str, event: Mapping[str, Any]) -> dict[str, str]:
    try:
        handler = default_handler()
    except FlowError as exc:
        log.error(json.dumps({"action": action, "code": exc.code, "error": exc.message}))
        return _error("", exc.code, exc.message)
    return handler.start(event) if action == "start" else handler.stop(event)
