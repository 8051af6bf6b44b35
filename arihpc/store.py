"""The campaign store: SQLAlchemy Core schema and queries, the single source of truth.

SQLite file by default (WAL mode); a PostgreSQL URL lets several sites share one campaign.
Archive metadata (what ``catalog import`` writes) and campaign state (decisions, attempts,
stages) live in separate columns and tables: re-importing a catalog never touches the latter.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from arihpc import config
from arihpc.catalog import CatalogRead
from arihpc.errors import StoreError
from arihpc.mous import FIELDS, MousRecord, from_columns, to_columns
from arihpc.selection import Verdict

SCHEMA_VERSION = 3

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
# version -> (table, column, type) it added (older stores are upgraded in place, data kept)
MIGRATIONS = {2: [("mous", *column) for column in CAMPAIGN_COLUMNS],
              3: [("attempts", "peak_rss", sa.BigInteger)]}

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


@dataclass(frozen=True)
class ImportSummary:
    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class Decision:
    """A stored selection decision, as ``arihpc select`` wrote it (priority 1 runs first)."""

    uid: str
    selected: bool
    tier: int | None
    reasons: tuple[str, ...]
    flags: tuple[str, ...]
    priority: int | None


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
            engine = sa.create_engine(url, future=True)
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

    # --- archive metadata ---

    def import_catalogs(self, reads: Sequence[CatalogRead]) -> ImportSummary:
        """Merge what the files say into the store, all in one transaction.

        Known values fill unknown ones and replace older known ones; an unknown value never
        blanks a known one. Campaign decisions and state are not touched.
        """
        incoming: dict[str, MousRecord] = {}
        for read in reads:
            for uid, record in read.records.items():
                incoming[uid] = incoming[uid].merge(record) if uid in incoming else record
        now = time.time()
        with self.engine.begin() as conn:
            existing = self._records(conn, incoming)
            new_rows, changed_rows = [], []
            for uid, record in incoming.items():
                old = existing.get(uid)
                merged = old.merge(record) if old else record
                if old is None:
                    new_rows.append({**to_columns(merged), "imported_at": now})
                elif merged != old:
                    changed_rows.append({**_prefixed(to_columns(merged)), "b_imported_at": now})
            if new_rows:
                conn.execute(mous.insert(), new_rows)
            if changed_rows:
                conn.execute(_UPDATE_METADATA, changed_rows)
            for read in reads:
                self._event(conn, "import", file=str(read.path), format=read.format,
                            mous=len(read.records), bad_rows=len(read.errors))
        return ImportSummary(len(new_rows), len(changed_rows),
                             len(incoming) - len(new_rows) - len(changed_rows))

    def _records(self, conn: Connection,
                 uids: Iterable[str] | None = None) -> dict[str, MousRecord]:
        query = sa.select(*[mous.c[name] for name in FIELDS])
        wanted = None if uids is None else set(uids)
        # Small imports look their MOUS up; large ones read the table once.
        if wanted is not None and len(wanted) <= 500:
            query = query.where(mous.c.uid.in_(sorted(wanted)))
        out = {}
        for row in conn.execute(query):
            if wanted is None or row.uid in wanted:
                out[row.uid] = from_columns(row._mapping)
        return out

    def records(self) -> list[MousRecord]:
        """Every MOUS's archive record, in uid order."""
        with self.engine.connect() as conn:
            found = self._records(conn)
        return [found[uid] for uid in sorted(found)]

    def record(self, uid: str) -> MousRecord | None:
        with self.engine.connect() as conn:
            return self._records(conn, [uid]).get(uid)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(mous)).scalar_one()

    # --- campaign decisions ---

    def save_decisions(self, verdicts: Iterable[Verdict], priorities: Mapping[str, int]) -> int:
        """Record verdicts and the priorities of the selected MOUS, replacing earlier ones."""
        now = time.time()
        rows = [{"b_uid": v.uid, "b_selected": v.selected, "b_tier": v.tier,
                 "b_reasons": " ".join(v.reasons), "b_flags": " ".join(v.flags),
                 "b_priority": priorities.get(v.uid), "b_decided_at": now} for v in verdicts]
        with self.engine.begin() as conn:
            if rows:
                conn.execute(_UPDATE_DECISION, rows)
            self._event(conn, "select", mous=len(rows),
                        selected=sum(1 for r in rows if r["b_selected"]))
        return len(rows)

    def decisions(self, selected_only: bool = False) -> list[Decision]:
        """Stored decisions; selected ones in priority order, then the rest by uid."""
        query = sa.select(mous.c.uid, *[mous.c[c] for c in DECISION_COLUMNS[:-1]]).where(
            mous.c.decided_at.is_not(None))
        if selected_only:
            query = query.where(mous.c.selected.is_(True))
        query = query.order_by(mous.c.priority.is_(None), mous.c.priority, mous.c.uid)
        with self.engine.connect() as conn:
            return [Decision(r.uid, bool(r.selected), r.tier, tuple(r.reasons.split()),
                             tuple(r.flags.split()), r.priority) for r in conn.execute(query)]

    def states(self) -> dict[str, tuple[str, str | None]]:
        """uid -> (campaign state, last failure class) of every selected MOUS."""
        query = sa.select(mous.c.uid, mous.c.state, mous.c.error_class).where(
            mous.c.selected.is_(True))
        with self.engine.connect() as conn:
            return {r.uid: (r.state, r.error_class) for r in conn.execute(query)}

    def undecided(self) -> int:
        """MOUS imported or changed since the last ``select`` (their decision is missing or old)."""
        query = sa.select(sa.func.count()).select_from(mous).where(
            sa.or_(mous.c.decided_at.is_(None), mous.c.decided_at < mous.c.imported_at))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()


def _prefixed(columns: dict) -> dict:
    return {f"b_{k}": v for k, v in columns.items()}


_UPDATE_METADATA = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    {name: sa.bindparam(f"b_{name}") for name in FIELDS if name != "uid"}
    | {"imported_at": sa.bindparam("b_imported_at")})

_UPDATE_DECISION = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    {name: sa.bindparam(f"b_{name}") for name in DECISION_COLUMNS})
