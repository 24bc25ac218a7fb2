"""The GPU ASR worker container (``python -m containers.asr_worker.entrypoint``)."""
