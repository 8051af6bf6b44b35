"""The monitor's cache file (``monitor.ariqa-cache``): what it made from a MOUS's files (an
ARIQA table read with astropy, a gallery thumbnail), kept by the file's path, modification
time and size, so that a report reads each once, not every time. The only file the monitor
writes; empty setting: no cache. A cache that cannot be opened or written is warned about
and done without (the pages only get slower).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import sqlalchemy as sa

from arihpc import config

log = logging.getLogger(__name__)

Key = tuple[int, int]                           # a file's modification time (ns) and size
BATCH = 500                                     # paths asked in one query

_entries = sa.Table("cached_files", sa.MetaData(),
                    sa.Column("kind", sa.String(16), primary_key=True),
                    sa.Column("path", sa.Text, primary_key=True),
                    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
                    sa.Column("size", sa.BigInteger, nullable=False),
                    sa.Column("data", sa.LargeBinary, nullable=False))


@functools.lru_cache(maxsize=4)
def _engine(where: str) -> sa.Engine | None:
    if not where:
        return None
    path = Path(where).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(f"sqlite:///{path}")
        _entries.metadata.create_all(engine)
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        log.warning("no monitor cache at %s (%s): each report reads every file again", path,
                    exc)
        return None
    return engine


def engine() -> sa.Engine | None:
    """The cache file's engine (made with its table), or None (no cache, or not writable)."""
    return _engine(str(config.get("monitor.ariqa-cache") or ""))


def read(kind: str, wanted: dict[str, Key]) -> dict[str, bytes]:
    """What the cache holds of ``kind`` for these paths, where the file is unchanged."""
    found: dict[str, bytes] = {}
    cache = engine()
    if cache is None or not wanted:
        return found
    names = sorted(wanted)
    try:
        with cache.connect() as conn:
            for first in range(0, len(names), BATCH):
                for path, mtime, size, data in conn.execute(
                        sa.select(_entries.c.path, _entries.c.mtime_ns, _entries.c.size,
                                  _entries.c.data).where(
                            _entries.c.kind == kind,
                            _entries.c.path.in_(names[first:first + BATCH]))):
                    if (mtime, size) == wanted[path]:
                        found[path] = data
    except sa.exc.SQLAlchemyError as exc:
        log.warning("monitor cache not read: %s", exc)
    return found


def write(kind: str, made: dict[str, tuple[Key, bytes]]) -> None:
    """Keep what was made of these files (path -> (key, data)), replacing older entries."""
    cache = engine()
    if cache is None or not made:
        return
    rows = [{"kind": kind, "path": path, "mtime_ns": key[0], "size": key[1], "data": data}
            for path, (key, data) in made.items()]
    try:
        with cache.begin() as conn:
            for first in range(0, len(rows), BATCH):
                conn.execute(sa.delete(_entries).where(
                    _entries.c.kind == kind,
                    _entries.c.path.in_([r["path"] for r in rows[first:first + BATCH]])))
            conn.execute(sa.insert(_entries), rows)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("monitor cache not written: %s", exc)
