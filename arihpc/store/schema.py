"""The store's tables, schema version and migrations, and ``Store``: opening a store URL,
transactions and the append-only event log.

The store is the campaign's single source of truth. SQLite file by default (WAL mode); a
PostgreSQL URL lets several sites share one campaign. Archive metadata (what ``catalog import``
writes) and campaign state (decisions, attempts, stages) live in separate columns and tables:
re-importing a catalog never touches the latter.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from arihpc import config
from arihpc.errors import StoreError

SCHEMA_VERSION = 4

metadata = sa.MetaData()

# Columns of the campaign's progress added in schema version 2 (name, type).
CAMPAIGN_COLUMNS = (
    ("site", sa.String(64)),            # the site that claimed it
    ("owner", sa.String(128)),          # the orchestrator that claimed it
    ("error_class", sa.String(32)),     # last failure class
    ("memory_gb", sa.Float),            # memory its next attempt asks for
    ("next_stage", sa.String(16)),      # where its next attempt starts
    ("not_before", sa.Float),           # a retry waits until then
    ("updated_at", sa.Float),
)
# Each MOUS's totals of its attempts and stage runs (schema version 4), kept by the store in
# the transaction that writes those: the MOUS table, its sort by run time and the figures
# read them from the MOUS's row, not by grouping every attempt and stage run (at 100,000 MOUS
# the grouping was half of a report's reading). ``refresh_totals`` recomputes them.
TOTALS_COLUMNS = (
    ("attempt_count", sa.Integer),      # attempts started (NULL: none)
    ("last_attempt_id", sa.Integer),    # its latest attempt
    ("stage_wall_s", sa.Float),         # run time of its stage runs, summed
    ("stage_cpu_s", sa.Float),          # their CPU time, summed
    ("stage_peak_rss", sa.BigInteger),  # the largest peak RSS of them
    ("export_stage_id", sa.Integer),    # its latest export stage run (its FITS products)
)
# version -> (table, column, type) it added (older stores are upgraded in place, data kept)
MIGRATIONS = {2: [("mous", *column) for column in CAMPAIGN_COLUMNS],
              3: [("attempts", "peak_rss", sa.BigInteger)],
              4: [("mous", *column) for column in TOTALS_COLUMNS]}

meta = sa.Table(
    "arihpc_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

mous = sa.Table(
    "mous", metadata,
    sa.Column("uid", sa.String(64), primary_key=True),
    # archive metadata: written by catalog import only
    sa.Column("project", sa.String(32)),
    sa.Column("qa2", sa.String(16)),
    sa.Column("antenna_names", sa.Text),
    sa.Column("antennas", sa.Integer),
    sa.Column("arrays", sa.String(32)),
    sa.Column("bands", sa.String(64)),
    sa.Column("full_pol", sa.Boolean),
    sa.Column("total_power", sa.Boolean),
    sa.Column("targets", sa.Text),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("size_source", sa.String(16)),
    sa.Column("pipeline_imaged", sa.Boolean),
    sa.Column("imported_at", sa.Float, nullable=False),
    # campaign decision: written by select only
    sa.Column("selected", sa.Boolean),
    sa.Column("tier", sa.Integer),
    sa.Column("reasons", sa.Text),
    sa.Column("flags", sa.Text),
    sa.Column("priority", sa.Integer, index=True),
    sa.Column("decided_at", sa.Float),
    # campaign progress: written by the orchestrator only
    sa.Column("state", sa.String(16), nullable=False, server_default="new"),
    *[sa.Column(*args) for args in CAMPAIGN_COLUMNS],
    # its totals: written by the orchestrator's writes of attempts and stage runs only
    *[sa.Column(*args) for args in TOTALS_COLUMNS],
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(64), sa.ForeignKey("mous.uid"), nullable=False, index=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("batch_job", sa.String(64)),
    sa.Column("worker", sa.String(256)),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("outcome", sa.String(16)),            # done, yielded, interrupted, failed
    sa.Column("error_class", sa.String(32)),
    sa.Column("message", sa.Text),
    sa.Column("memory_gb", sa.Float),
    sa.Column("peak_rss", sa.BigInteger),           # largest process tree of its stages
)

stages = sa.Table(
    "stages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("attempt_id", sa.Integer, sa.ForeignKey("attempts.id"), nullable=False, index=True),
    sa.Column("uid", sa.String(64), sa.ForeignKey("mous.uid"), nullable=False, index=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("wall_s", sa.Float),
    sa.Column("cpu_s", sa.Float),
    sa.Column("peak_rss", sa.BigInteger),
    sa.Column("outputs", sa.Text),                  # JSON: name -> size in bytes
    sa.Column("status", sa.String(16)),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("uid", sa.String(64)),
    sa.Column("data", sa.Text, nullable=False),     # JSON
)

DECISION_COLUMNS = ("selected", "tier", "reasons", "flags", "priority", "decided_at")


def store_url(given: str | None = None) -> str:
    """The store URL: --store, else $ARIHPC_STORE, else the configured default.

    A plain path means an SQLite file; ``postgresql://`` uses the psycopg (3) driver.
    """
    url = given or os.environ.get("ARIHPC_STORE") or config.get("store")
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")   # readers never block the orchestrator's writes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def unavailable(error: BaseException) -> bool:
    """The database went away or is busy for a moment (a PostgreSQL restart, a dropped
    connection, an SQLite write lock held too long): the same work may be tried again."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if not isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    if type(error.orig).__module__.startswith("sqlite3"):
        return "database is locked" in str(error.orig)  # not "no such table" and the like
    return True         # psycopg: the server is down, restarting, or dropped the connection


class Store:
    """The campaign store behind one URL. ``Store.open(url)`` connects and checks the schema."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._local = threading.local()        # this thread's open ``transaction()``

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes (and reads) inside one transaction: one commit, so one fsync of
        the SQLite WAL, for a batch of updates instead of one per update; all or none of
        them is stored. Inside an open one, joins it."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def _joined(self, open_new) -> Iterator[Connection]:
        """The open ``transaction()`` (it sees its own writes), else a new connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with open_new() as conn:
            yield conn

    def _begin(self):
        """For writes: the open ``transaction()``, or a new one committed on leaving."""
        return self._joined(self.engine.begin)

    def _connect(self):
        """For reads: the open ``transaction()``, or a connection."""
        return self._joined(self.engine.connect)

    @classmethod
    def open(cls, url: str | None = None) -> "Store":
        url = store_url(url)
        try:
            # pre-ping: a connection the server dropped (a restart) is replaced on checkout
            # instead of failing the statement after it.
            engine = sa.create_engine(url, future=True,
                                      pool_pre_ping=not url.startswith("sqlite"))
        except (sa.exc.ArgumentError, ImportError) as e:
            raise StoreError(f"cannot use store URL {url!r}: {e}") from e
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if database and database != ":memory:" and not Path(database).parent.is_dir():
                raise StoreError(f"store {url}: folder {Path(database).parent} does not exist")
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        store._ensure_schema()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def _ensure_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                found = conn.execute(sa.select(meta.c.value).where(
                    meta.c.key == "schema_version")).scalar()
                if found is None:
                    conn.execute(meta.insert().values(key="schema_version",
                                                      value=str(SCHEMA_VERSION)))
                elif int(found) > SCHEMA_VERSION:
                    raise StoreError(f"store {self.engine.url!r} has schema version {found}, "
                                     f"newer than this arihpc understands ({SCHEMA_VERSION}): "
                                     "upgrade arihpc")
                elif int(found) < SCHEMA_VERSION:
                    self._migrate(conn, int(found))
        except sa.exc.OperationalError as e:
            raise StoreError(f"cannot open store {self.engine.url!r}: {e.orig}") from e

    @staticmethod
    def _migrate(conn: Connection, found: int) -> None:
        """Upgrade an older store in place: add the columns later versions brought."""
        preparer = conn.dialect.identifier_preparer
        inspector = sa.inspect(conn)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for table, name, kind in MIGRATIONS.get(version, ()):
                if name in {c["name"] for c in inspector.get_columns(table)}:
                    continue        # a table this store never had was created whole
                ddl = sa.types.to_instance(kind).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN "
                                     f"{preparer.quote(name)} {ddl}")
        if found < 4:
            refresh_totals(conn)
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(
            value=str(SCHEMA_VERSION)))

    # --- events ---

    @staticmethod
    def _event(conn: Connection, kind: str, uid: str | None = None, **data: Any) -> None:
        Store._events(conn, kind, [(uid, data)])

    @staticmethod
    def _events(conn: Connection, kind: str, items: list[tuple[str | None, dict]]) -> None:
        """Events of one kind: (uid, data) each, in one statement."""
        now = time.time()
        conn.execute(events.insert(), [{"at": now, "kind": kind, "uid": uid,
                                        "data": json.dumps(data, sort_keys=True)}
                                       for uid, data in items])

    def log_event(self, kind: str, uid: str | None = None, **data: Any) -> None:
        """Append one event to the campaign's event log."""
        with self._begin() as conn:
            self._event(conn, kind, uid, **data)

    def events(self, kind: str | None = None) -> list[dict]:
        query = sa.select(events).order_by(events.c.id)
        if kind:
            query = query.where(events.c.kind == kind)
        with self.engine.connect() as conn:
            return [{**row._mapping, "data": json.loads(row.data)} for row in conn.execute(query)]


def _of_mous(table: sa.Table, value, *where) -> sa.ScalarSelect:
    return sa.select(value).where(table.c.uid == mous.c.uid, *where).scalar_subquery()


def refresh_totals(conn: Connection, uids: list[str] | None = None) -> None:
    """Recompute the totals (``TOTALS_COLUMNS``) of these MOUS, or of every MOUS, from their
    attempts and stage runs: after an upgrade, or rows written around the store."""
    update = mous.update().values(
        attempt_count=_of_mous(attempts, sa.func.count()),
        last_attempt_id=_of_mous(attempts, sa.func.max(attempts.c.id)),
        stage_wall_s=_of_mous(stages, sa.func.sum(stages.c.wall_s)),
        stage_cpu_s=_of_mous(stages, sa.func.sum(stages.c.cpu_s)),
        stage_peak_rss=_of_mous(stages, sa.func.max(stages.c.peak_rss)),
        export_stage_id=_of_mous(stages, sa.func.max(stages.c.id), stages.c.stage == "export"))
    conn.execute(update if uids is None else update.where(mous.c.uid.in_(uids)))
