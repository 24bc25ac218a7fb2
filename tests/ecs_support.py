"""Real HTTP endpoints standing in for what ECS gives a task: the task metadata endpoint (v4)
and the ECS agent's task-protection endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TASK_IP = "10.0.3.27"


@dataclass
class FakeEcsEndpoints:
    """One loopback HTTP server answering as ECS's metadata and agent endpoints do."""

    url: str = ""
    task_ip: str = TASK_IP
    protection_requests: list[dict[str, Any]] = field(default_factory=list)
    refuse_protection: bool = False

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/v4/task":
            network = {"NetworkMode": "awsvpc", "IPv4Addresses": [self.task_ip]}
            # No "Cluster": outside ECS no cluster's task list can be read (no abandoned-call
            # sweep), as with a metadata endpoint that leaves it out.
            return 200, {
                "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/callscribe/abc",
                "Containers": [{"Name": "siprec", "Networks": [network]}],
            }
        if method == "PUT" and path == "/agent/task-protection/v1/state":
            request = json.loads(body)
            self.protection_requests.append(request)
            if self.refuse_protection:
                return 400, {"error": {"Code": "AccessDeniedException", "Message": "denied"}}
            return 200, {
                "protection": {
                    "ProtectionEnabled": request["ProtectionEnabled"],
                    "TaskArn": "arn:aws:ecs:us-east-1:123456789012:task/callscribe/abc",
                }
            }
        return 404, {"error": "not found"}

    @property
    def agent_uri(self) -> str:
        return f"{self.url}/agent"

    @property
    def metadata_uri(self) -> str:
        return f"{self.url}/v4"

    def protection_asked(self, enabled: bool) -> bool:
        return any(r["ProtectionEnabled"] is enabled for r in self.protection_requests)


@pytest.fixture
def ecs() -> Iterator[FakeEcsEndpoints]:
    endpoints = FakeEcsEndpoints()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, answer = endpoints.answer(self.command, self.path, self.rfile.read(length))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoints.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield endpoints
    server.shutdown()
    server.server_close()
