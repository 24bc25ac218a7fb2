"""Which ``AsrEngine`` a process uses: a remote ASR worker when ``CALLSCRIBE_ASR_URL`` is set
(the AWS gateways), faster-whisper in this process otherwise (local mode)."""

from __future__ import annotations

from callscribe.asr.base import AsrEngine
from callscribe.config import AsrSettings


def make_asr_engine(settings: AsrSettings) -> AsrEngine:
    if settings.url:
        from callscribe.asr.remote import RemoteAsrEngine

        return RemoteAsrEngine(
            settings.url,
            timeout_s=settings.timeout_s,
            retry_budget_s=settings.retry_budget_s,
            dns_refresh_s=settings.dns_refresh_s,
            connect_timeout_s=settings.connect_timeout_s,
        )
    # Imported here so that a gateway using a remote worker never loads CTranslate2.
    from callscribe.asr.whisper import FasterWhisperEngine

    return FasterWhisperEngine(settings)
