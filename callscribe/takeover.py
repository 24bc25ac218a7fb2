"""Calls a dead process left behind (``kill -9``, out of memory, a lost host or task).

A process that holds a call's media is the call's *owner* in the Store. One that dies without
its shutdown (which completes its calls) leaves them ``connected``/``streaming``/``stopped``
with an owner that will never complete them: the after-call API would say ``complete: false``
for ever, and start/stop would find no live media. A process that starts sweeps them: every call
not completed whose owner is known to be gone is completed, with its already persisted messages
kept for the retention period from now, as a call that ended well.

Who is gone is the adapter's business: ``LocalInstance`` here (local mode: other runs on the same
data dir), ``callscribe.aws.adapters.ecs_tasks`` (the AWS deployment: owners that are not a live ECS
task). An owner whose state cannot be told is left alone: completing a live call is worse than
leaving a dead one for the next sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from callscribe.private_files import private_dir, private_file_descriptor
from callscribe.store.base import CallKey, CallRecord, Store

log = logging.getLogger(__name__)

LOCAL_OWNER_PREFIX = "local"
INSTANCES_DIR = "instances"
_INSTANCE_ID = re.compile(r"[0-9a-f]{32}")

# True: the call's owner is gone (complete the call); False: it runs; None: cannot tell.
OwnerIsGone = Callable[[CallRecord], bool | None]


def complete_abandoned_calls(
    store: Store, owner_is_gone: OwnerIsGone, retention_s: float, now: float
) -> list[CallKey]:
    """Complete every call not completed whose owner is gone; the keys completed."""
    completed = []
    for call in store.list_incomplete_calls():
        if owner_is_gone(call) is not True:
            continue
        # Conditional on the owner: a stream that reconnected to a live process since the
        # list was read keeps its call.
        if not store.complete_abandoned_call(call.key, call.owner, now):
            continue
        store.set_message_expiry(call.key, now + retention_s)
        completed.append(call.key)
        log.warning(
            "call %s was left %s by %s, which is gone: completed",
            call.key,
            call.status.value,
            call.owner,
        )
    return completed


class LocalInstance:
    """This run of a local-mode server, as a call owner: ``local:<host>:<pid>:<instance id>``.

    The instance holds an exclusive ``flock`` on ``<data dir>/instances/<id>.lock`` for as long
    as it runs; the kernel releases it when the process dies, however it dies. So another
    server on the same data dir can tell a live instance (the lock is held) from a dead one
    (it is not, or its file is gone): a restarted server completes the calls its killed
    predecessor left, and two servers sharing a data dir never complete each other's calls.
    """

    def __init__(self, data_dir: Path) -> None:
        self.instance_id = uuid.uuid4().hex
        self.owner = f"{LOCAL_OWNER_PREFIX}:{socket.gethostname()}:{os.getpid()}:{self.instance_id}"
        self._dir = private_dir(data_dir / INSTANCES_DIR)
        self._lock_path = self._dir / f"{self.instance_id}.lock"
        # Locked under a name no one looks at, then renamed: another server starting at the
        # same moment never sees this lock file unlocked and takes it for a dead instance's.
        unnamed = self._dir / f".{self.instance_id}.new"
        self._fd: int | None = private_file_descriptor(unnamed, os.O_RDWR)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
        os.replace(unnamed, self._lock_path)
        self._remove_lock_files_of_dead_instances()

    def owner_is_gone(self, call: CallRecord) -> bool | None:
        owner = call.owner
        if owner == self.owner:
            return False
        if owner != LOCAL_OWNER_PREFIX and not owner.startswith(LOCAL_OWNER_PREFIX + ":"):
            return None  # a deployment's owner (a task's URL): not for local mode to judge
        instance_id = owner.rsplit(":", 1)[-1]
        if not _INSTANCE_ID.fullmatch(instance_id):
            # "local" or "local:<host>:<pid>": an older version, whose run on this data dir
            # ended before this one began.
            return True
        return not self._running(instance_id)

    def _running(self, instance_id: str) -> bool:
        try:
            fd = os.open(self._dir / f"{instance_id}.lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the lock if we took it
        return False

    def _remove_lock_files_of_dead_instances(self) -> None:
        for path in self._dir.glob("*.lock"):
            instance_id = path.stem
            if instance_id != self.instance_id and not self._running(instance_id):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        """A clean stop: the lock file goes, then the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._lock_path.unlink()
        os.close(self._fd)
        self._fd = None
