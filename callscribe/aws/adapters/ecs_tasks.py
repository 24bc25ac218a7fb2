"""ECS facts a task acts on: which call owners are live tasks (the AWS side of
``callscribe.takeover``), and whether this task's deployment has been replaced.

In the deployment a call's owner is the control URL of the task holding its media,
``http://<task's private IPv4>:8081`` (gateway and KVS reader tasks alike, all in the stack's
one cluster). A task that is killed, runs out of memory or loses its host never completes its
calls; the gateway task that starts next sweeps them (``AbandonedCallSweep``): a call whose
owner's address is not that of a task of the cluster still running is completed.

It takes the task role ``ecs:ListTasks`` and ``ecs:DescribeTasks`` on the cluster. Whenever the
live set cannot be trusted (the API refuses, or this very task is not in the list, as with a
wrong cluster name) the sweep completes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from callscribe.store.base import CallKey, CallRecord, Store
from callscribe.takeover import complete_abandoned_calls

log = logging.getLogger(__name__)

# A task in one of these states has no running container: whatever it owned is abandoned.
# (DEACTIVATING and STOPPING are still alive: a draining task finishes its calls itself.)
ENDED_TASK_STATES = frozenset({"DEPROVISIONING", "STOPPED", "DELETED"})
DESCRIBE_BATCH = 100  # DescribeTasks takes at most 100 tasks a call
# How often a task looks whether its service has rolled out a new deployment.
DEPLOYMENT_CHECK_INTERVAL_S = 30.0


def owner_address(owner: str) -> str | None:
    """The IP address in an owner's control URL; None when it names a host instead (an
    address no task list can be matched against)."""
    try:
        host = urlsplit(owner).hostname
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def live_task_addresses(ecs: Any, cluster: str) -> set[str]:
    """Private IPv4 addresses of the cluster's tasks whose containers still run, including
    those stopping (they drain their calls) and those still starting."""
    arns: list[str] = []
    paginator = ecs.get_paginator("list_tasks")
    # Tasks told to stop stay in the list a while (up to an hour): their state decides.
    for desired in ("RUNNING", "STOPPED"):
        for page in paginator.paginate(cluster=cluster, desiredStatus=desired):
            arns += page["taskArns"]
    addresses: set[str] = set()
    for start in range(0, len(arns), DESCRIBE_BATCH):
        answer = ecs.describe_tasks(cluster=cluster, tasks=arns[start : start + DESCRIBE_BATCH])
        for task in answer["tasks"]:
            if task.get("lastStatus") in ENDED_TASK_STATES:
                continue
            for attachment in task.get("attachments", []):
                for detail in attachment.get("details", []):
                    if detail.get("name") == "privateIPv4Address" and detail.get("value"):
                        addresses.add(detail["value"])
    return addresses


@dataclass(frozen=True)
class EcsOwnerLiveness:
    own_owner: str  # this task's control URL, the owner of the calls it holds
    started_at: float  # UNIX time this task began (before it served anything)
    live_addresses: frozenset[str]

    @classmethod
    def load(
        cls, cluster: str, own_owner: str, started_at: float, ecs: Any | None = None
    ) -> EcsOwnerLiveness | None:
        """The cluster's live tasks now; None when they cannot be known for sure."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            addresses = live_task_addresses(ecs or boto3.client("ecs"), cluster)
        except (BotoCoreError, ClientError) as exc:
            log.warning(
                "cannot list the tasks of cluster %s (%s): no abandoned-call sweep", cluster, exc
            )
            return None
        own_address = owner_address(own_owner)
        if own_address is None or own_address not in addresses:
            log.warning(
                "this task (%s) is not among the running tasks of cluster %s: wrong cluster? "
                "no abandoned-call sweep",
                own_owner,
                cluster,
            )
            return None
        return cls(own_owner, started_at, frozenset(addresses))

    def owner_is_gone(self, call: CallRecord) -> bool | None:
        if call.owner == self.own_owner:
            # This task's own address, on a call last touched before it started: an earlier
            # task that had the same private IP held it (VPC addresses are reused).
            return call.updated_at < self.started_at
        address = owner_address(call.owner)
        if address is None:
            return None
        return address not in self.live_addresses


@dataclass(frozen=True)
class AbandonedCallSweep:
    """What a gateway task runs once as it starts (``gateway_service.create_gateway_app``)."""

    store: Store
    cluster: str
    own_owner: str
    started_at: float
    retention_s: float

    def run(self) -> list[CallKey]:
        liveness = EcsOwnerLiveness.load(self.cluster, self.own_owner, self.started_at)
        if liveness is None:
            return []
        completed = complete_abandoned_calls(
            self.store, liveness.owner_is_gone, self.retention_s, time.time()
        )
        log.info(
            "abandoned-call sweep of cluster %s: %d call(s) completed", self.cluster, len(completed)
        )
        return completed


@dataclass(frozen=True)
class DeploymentCheck:
    """Whether this task belongs to a deployment its service has since replaced.

    A rolling deployment starts new tasks, then stops the old ones; but a task protected from
    scale-in (it holds calls) is not stopped until it gives the protection up, and a task that
    keeps taking new calls never does. So a task that finds its deployment superseded takes
    no new calls (it drains): its last call ends, its protection goes, ECS stops it. ECS names
    a service task's deployment in its ``startedBy`` and the service in its ``group``
    (``service:<name>``); the service's current deployment is the one marked PRIMARY. It takes
    ``ecs:DescribeTasks`` and ``ecs:DescribeServices`` on the cluster."""

    cluster: str
    task_arn: str

    def superseded(self, ecs: Any) -> bool:
        """True once the service's PRIMARY deployment is another than this task's; False
        for a task no service started (run by hand, outside ECS)."""
        tasks = ecs.describe_tasks(cluster=self.cluster, tasks=[self.task_arn])["tasks"]
        if not tasks:
            return False
        started_by = tasks[0].get("startedBy", "")
        group = tasks[0].get("group", "")
        if not group.startswith("service:") or not started_by.startswith("ecs-svc/"):
            return False
        services = ecs.describe_services(
            cluster=self.cluster, services=[group.removeprefix("service:")]
        )["services"]
        primary = {
            d["id"]
            for service in services
            for d in service.get("deployments", [])
            if d.get("status") == "PRIMARY"
        }
        return bool(primary) and started_by not in primary


async def drain_when_superseded(
    check: DeploymentCheck,
    stop_taking_calls: Callable[[], None],
    interval_s: float = DEPLOYMENT_CHECK_INTERVAL_S,
    ecs: Any | None = None,
) -> None:
    """Looks every ``interval_s``; once the task's deployment is superseded, calls
    ``stop_taking_calls`` and returns. A failed look is logged and tried again."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = ecs or boto3.client("ecs")
    failures = 0
    while True:
        try:
            if await asyncio.to_thread(check.superseded, client):
                log.info("this task's deployment was replaced: taking no new calls")
                stop_taking_calls()
                return
        except (BotoCoreError, ClientError) as exc:
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning("cannot tell whether this task was replaced (%s)", exc)
        await asyncio.sleep(interval_s)
