"""Entrypoint of the ASR worker container: ``python -m containers.asr_worker.entrypoint``.

Runs ``callscribe asr-worker``, configured by ``CALLSCRIBE_ASR_*`` environment variables
(``CALLSCRIBE_ASR_MODEL``, ``…_DEVICE=cuda``, ``…_COMPUTE_TYPE=float16``, ``…_PORT=8000``,
``…_MAX_BATCH``, ``…_MAX_WAIT_MS``, ``…_MAX_QUEUE``). Extra arguments are passed on
(``--port``).
"""

from __future__ import annotations

import os
import sys

from callscribe.cli import main as callscribe_main


def main() -> int:
    # In a task the gateways reach the worker on the task's own address, so listen on every
    # interface unless CALLSCRIBE_ASR_HOST says otherwise.
    os.environ.setdefault("CALLSCRIBE_ASR_HOST", "0.0.0.0")
    return callscribe_main(["--verbose", "asr-worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
