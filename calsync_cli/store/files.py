"""Checks on the SQLite file itself, light enough for ``status``'s fast path (no SQLAlchemy)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote

from calsync_cli.errors import ConfigError, StoreError

#: the first 16 bytes of every SQLite database file (https://www.sqlite.org/fileformat.html)
SQLITE_HEADER = b"SQLite format 3\x00"
#: the table only a calsync database has (``models.Meta``)
META_TABLE = "calsync_meta"


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL, or None (another database, or in memory)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = unquote(url[len(prefix) :]).split("?", 1)[0]
            if not rest or rest.startswith((":memory:", "file:")):
                return None
            return Path(rest).expanduser()
    return None


def refuse_foreign_sqlite(path: Path) -> None:
    """Refuse, before anything opens it for writing, a file calsync must not touch: one that is
    not a SQLite database, or a SQLite database of another application (tables, but not
    calsync's ``calsync_meta``). An empty or missing file is where calsync creates its own.
    Opening it normally would already change it (calsync switches the journal to WAL)."""
    import sqlite3
    from urllib.parse import quote

    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError:
        return  # missing or unreadable: the store says why when it opens it
    if not head:
        return
    fix = "Point CALSYNC_DB_URL at a new file (calsync creates it) or at calsync's own database"
    if head != SQLITE_HEADER:
        raise ConfigError(
            f"CALSYNC_DB_URL points at {path}, which is not a SQLite database", hint=fix
        )
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return  # damaged, or unreadable read-only: the store words it
    if names and META_TABLE not in names:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(
            f"{path} already holds tables that calsync did not create ({shown})", hint=fix
        )


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
