"""The catalog's side of the store: archive metadata (``catalog import``) and the selection
decisions (``select``), read back by ``catalog list``, ``queue`` and the campaign.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from arihpc.catalog.formats import CatalogRead
from arihpc.catalog.selection import Verdict
from arihpc.mous import FIELDS, MousRecord, from_columns, to_columns
from arihpc.store.schema import DECISION_COLUMNS, Store, mous


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


class CatalogStore(Store):
    """The store plus archive metadata and selection decisions."""

    # --- archive metadata ---

    def import_catalogs(self, reads: Sequence[CatalogRead],
                        progress: Callable[[int, int], None] | None = None) -> ImportSummary:
        """Merge what the files say into the store, all in one transaction.

        Known values fill unknown ones and replace older known ones; an unknown value never
        blanks a known one. Campaign decisions and state are not touched. ``progress(done,
        total)``, if given, counts rows of the store: those read back to merge with, then
        those written, a batch at a time.
        """
        incoming: dict[str, MousRecord] = {}
        for read in reads:
            for uid, record in read.records.items():
                incoming[uid] = incoming[uid].merge(record) if uid in incoming else record
        now = time.time()
        with self.engine.begin() as conn:
            scan = self._scan_size(conn, len(incoming)) if progress else 0
            total = scan + len(incoming)
            tick = None if progress is None else (lambda n: progress(n, total))
            existing = self._records(conn, incoming, tick)
            uids, inserted, changed = list(incoming), 0, 0
            for start in range(0, len(uids), _BATCH):
                new_rows, changed_rows = _rows_to_write(
                    incoming, existing, uids[start:start + _BATCH], now)
                if new_rows:
                    conn.execute(mous.insert(), new_rows)
                if changed_rows:
                    conn.execute(_UPDATE_METADATA, changed_rows)
                inserted, changed = inserted + len(new_rows), changed + len(changed_rows)
                if progress:
                    progress(scan + min(start + _BATCH, len(uids)), total)
            for read in reads:
                self._event(conn, "import", file=str(read.path), format=read.format,
                            mous=len(read.records), bad_rows=len(read.errors))
            _analyze_after(conn, inserted + changed)
        return ImportSummary(inserted, changed, len(incoming) - inserted - changed)

    def _scan_size(self, conn: Connection, wanted: int) -> int:
        """Stored rows ``_records`` reads to look up ``wanted`` MOUS (0: an indexed lookup)."""
        if wanted <= _LOOKUP_AT_MOST:
            return 0
        return conn.execute(sa.select(sa.func.count()).select_from(mous)).scalar_one()

    def _records(self, conn: Connection, uids: Iterable[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> dict[str, MousRecord]:
        query = sa.select(*[mous.c[name] for name in FIELDS])
        wanted = None if uids is None else set(uids)
        # Small imports look their MOUS up; large ones read the table once.
        if wanted is not None and len(wanted) <= _LOOKUP_AT_MOST:
            query = query.where(mous.c.uid.in_(sorted(wanted)))
        out = {}
        for count, row in enumerate(conn.execute(query), 1):
            if wanted is None or row.uid in wanted:
                out[row.uid] = from_columns(row._mapping)
            if progress and count % 1000 == 0:
                progress(count)
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
            _analyze_after(conn, len(rows))
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


_BATCH = 5000             # MOUS written per statement (one transaction for the whole import)
_LOOKUP_AT_MOST = 500     # an import of more MOUS reads the table once instead of looking up


def _rows_to_write(incoming: Mapping[str, MousRecord], existing: Mapping[str, MousRecord],
                   uids: Sequence[str], now: float) -> tuple[list[dict], list[dict]]:
    """(rows to insert, rows to update) of these MOUS: each merged with what is stored."""
    new_rows, changed_rows = [], []
    for uid in uids:
        record, old = incoming[uid], existing.get(uid)
        merged = old.merge(record) if old else record
        if old is None:
            new_rows.append({**to_columns(merged), "imported_at": now})
        elif merged != old:
            changed_rows.append({**_prefixed(to_columns(merged)), "b_imported_at": now})
    return new_rows, changed_rows


def _prefixed(columns: dict) -> dict:
    return {f"b_{k}": v for k, v in columns.items()}


_UPDATE_METADATA = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    {name: sa.bindparam(f"b_{name}") for name in FIELDS if name != "uid"}
    | {"imported_at": sa.bindparam("b_imported_at")})

_UPDATE_DECISION = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    {name: sa.bindparam(f"b_{name}") for name in DECISION_COLUMNS})


def _analyze_after(conn: Connection, changed: int, at_least: int = 1000) -> None:
    """Fresh planner statistics after a large write on PostgreSQL: until autovacuum gets to
    it (a minute or more) each claim scans and sorts the whole catalog instead of walking the
    priority index (scripts/bench_store.py: 21 ms a claim instead of 1-2 ms)."""
    if changed >= at_least and conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE mous")
