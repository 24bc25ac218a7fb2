"""Owner-only files for local mode's data directory.

The data directory holds transcripts (the SQLite store), call audio (recordings, spool files),
feed files and credentials (secrets). None of it is for other users of the machine: directories
are 0700 and files 0600. The mode is given when each is created *and* set explicitly after,
because a mode passed to ``mkdir``/``open`` is only an upper bound that the process's umask
narrows (and ``Path.mkdir(parents=True)`` ignores it for the parents it creates).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callscribe.config import Settings

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` and any missing parents owner-only. An existing ``path`` is tightened
    unless ``tighten`` is false (it may be the user's own directory); existing parents are
    always left as they are (``~``, ``/tmp``)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            directory.mkdir(PRIVATE_DIR_MODE)
        _chmod(directory, PRIVATE_DIR_MODE)
    if tighten:
        _chmod(path, PRIVATE_DIR_MODE)
    return path


def private_file_descriptor(path: Path, flags: int) -> int:
    """``os.open`` with ``O_CREAT``, the file owner-only however it was opened or made."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: Path) -> None:
    """Set an existing file owner-only (a file a library created, or an older version)."""
    _chmod(path, PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE)


def tighten_tree(root: Path) -> int:
    """Make ``root`` (a file or a directory) and everything under it owner-only (data an older
    version left 0755 / 0644); symbolic links are left alone. How many modes were changed."""
    if not root.is_dir() or root.is_symlink():
        return _chmod(root, PRIVATE_FILE_MODE)
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        directory = Path(dirpath)
        changed += _chmod(directory, PRIVATE_DIR_MODE)
        for name in filenames:
            changed += _chmod(directory / name, PRIVATE_FILE_MODE)
        # os.walk lists links to directories among dirnames but does not enter them.
        dirnames[:] = [d for d in dirnames if not (directory / d).is_symlink()]
    return changed


def secure_data_dir(settings: Settings) -> int:
    """Local mode's data directory, created or tightened: the directory, and what CallScribe
    keeps in it (store, secrets, blobs, spool). Other files a user put there keep their modes,
    though the directory's 0700 already closes them to others. How many modes were changed."""
    data_dir = settings.data_dir
    changed = _chmod(data_dir, PRIVATE_DIR_MODE) if data_dir.exists() else 0
    private_dir(data_dir)
    store = settings.store_path
    owned = [
        *(store.with_name(store.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")),
        settings.secrets_path,
        settings.secrets_path.with_suffix(".lock"),  # FileSecrets' lock file
        settings.blob_dir,
        settings.spool_dir,
    ]
    for path in owned:
        changed += tighten_tree(path)
    private_dir(settings.spool_dir)
    return changed


def _chmod(path: Path, mode: int) -> int:
    """Set ``mode`` unless it is set already (or ``path`` is a link or gone); 1 if changed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
        return 0
    os.chmod(path, mode)
    return 1
