"""Checks on the SQLite file itself, light enough for ``status``'s fast path (no SQLAlchemy)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote

from calsync_cli.errors import StoreError


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL, or None (another database, or in memory)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = unquote(url[len(prefix) :]).split("?", 1)[0]
            if not rest or rest.startswith((":memory:", "file:")):
                return None
            return Path(rest).expanduser()
    return None


#: group and other permission bits: a database of patient names is for its owner only
_LOOSE = stat.S_IRWXG | stat.S_IRWXO


def tighten_permissions(path: Path) -> list[str]:
    """Make an existing SQLite file (and its ``-wal``/``-shm`` companions) 0600; one notice
    saying what changed, or none. Raises StoreError with the fix when it cannot."""
    changed: list[str] = []
    for item in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(item.stat().st_mode)
        except OSError:
            continue
        if not mode & _LOOSE:
            continue
        try:
            os.chmod(item, stat.S_IRUSR | stat.S_IWUSR)
        except OSError as exc:
            raise StoreError(
                f"the database file {item} is open to other users (mode {mode:04o}) and "
                f"calsync cannot change that: {exc.strerror}",
                hint=f"Run: chmod 600 {item}",
            ) from None
        changed.append(f"{item.name} was {mode:04o}")
    if not changed:
        return []
    return [
        f"made the database {path} private (mode 0600; {', '.join(changed)}): it holds "
        "patient names"
    ]
