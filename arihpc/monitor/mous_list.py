"""The MOUS table of the report and the live pages, read from the store.

One row per MOUS: catalogue (uid, project, source, cycle, QA2, raw size), where it ran (site,
node class from its last attempt's worker), what it cost (attempts, stage run time, CPU, peak
RSS: the totals the store keeps in the MOUS's row, schema.TOTALS_COLUMNS), its state with the
deciding log line of its last attempt (``attempts.message``) or the reasons it was excluded,
and its products (the FITS files its last export stage wrote). The live pages read one page of
it: sort, filter and paging are done by SQL (``TableQuery``, from the page's query
arguments), so a page costs about the same at 100,000 MOUS as at 10; the report reads it whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from arihpc.monitor.tables import node_class_of
from arihpc.mous import cycle_of
from arihpc.store.schema import attempts, mous, stages

PER_PAGE, MOST_PER_PAGE = 50, 500


# A MOUS's state as the table shows it: the ARI-L selection first, then the campaign's.
SHOWN_STATE = sa.case((mous.c.selected.is_(None), "undecided"),
                      (mous.c.selected.is_(False), "excluded"), else_=mous.c.state)


@dataclass(frozen=True)
class Column:
    """A column of the table: its key (the ``sort`` query argument), its heading, and its SQL
    sort key (None: not sortable by the store, only within the page shown)."""

    key: str
    title: str
    sort: ColumnElement | None = None
    numeric: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("uid", "MOUS", mous.c.uid),
    Column("project", "project", mous.c.project),
    Column("source", "source", mous.c.targets),
    # the cycle follows the project code's year, so its order is the code's
    Column("cycle", "cycle", mous.c.project, numeric=True),
    Column("qa2", "QA2", mous.c.qa2),
    Column("size", "raw size", mous.c.size_bytes, numeric=True),
    Column("site", "site", mous.c.site),
    Column("node_class", "node class"),
    # the MOUS's totals, kept in its row by the store (schema.TOTALS_COLUMNS)
    Column("attempts", "attempts", sa.func.coalesce(mous.c.attempt_count, 0), numeric=True),
    Column("run_time", "run time", mous.c.stage_wall_s, numeric=True),
    Column("cpu", "CPU", mous.c.stage_cpu_s, numeric=True),
    Column("peak_rss", "peak RSS", mous.c.stage_peak_rss, numeric=True),
    Column("state", "state", SHOWN_STATE),
    Column("why", "deciding log line / reasons"),
    Column("products", "products", numeric=True),
    Column("ariqa", "ARIQA"),
    Column("links", "links"),
)
BY_KEY = {column.key: column for column in COLUMNS}


@dataclass(frozen=True)
class TableQuery:
    """Which page of the table: sort key (a column key; empty: claim order), order, a text
    to find (in uid, project, source, site, state, failure class, reasons), a state, the
    site (a site page's), the page (from 1) and rows per page."""

    sort: str = ""
    order: str = "asc"
    text: str = ""
    state: str = ""
    site: str | None = None
    page: int = 1
    per: int = PER_PAGE

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, str], site: str | None = None
                       ) -> "TableQuery":
        """From a page's query arguments (sort, order, q, state, page, per); anything
        unknown or out of range is the default."""
        sort = arguments.get("sort", "")
        column = BY_KEY.get(sort)
        return cls(sort=sort if column is not None and column.sort is not None else "",
                   order="desc" if arguments.get("order") == "desc" else "asc",
                   text=arguments.get("q", "").strip()[:100],
                   state=arguments.get("state", "").strip()[:20], site=site,
                   page=max(1, _integer(arguments.get("page"), 1)),
                   per=min(MOST_PER_PAGE, max(10, _integer(arguments.get("per"), PER_PAGE))))

    def arguments(self, **changes) -> dict[str, str]:
        """The query arguments of this query with some changed (for links), defaults left
        out."""
        changed = replace(self, **changes)
        found = {"sort": changed.sort, "order": changed.order, "q": changed.text,
                 "state": changed.state, "page": str(changed.page), "per": str(changed.per)}
        defaults = {"sort": "", "order": "asc", "q": "", "state": "", "page": "1",
                    "per": str(PER_PAGE)}
        return {k: v for k, v in found.items() if v != defaults[k]}


def _integer(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _filters(query: TableQuery) -> list[ColumnElement]:
    where = [mous.c.site == query.site] if query.site else []
    if query.state:
        where.append(SHOWN_STATE == query.state)
    if query.text:
        needle = query.text.lower()
        where.append(sa.or_(*(sa.func.lower(column).contains(needle, autoescape=True)
                              for column in (mous.c.uid, mous.c.project, mous.c.targets,
                                             mous.c.site, SHOWN_STATE, mous.c.error_class,
                                             mous.c.reasons))))
    return where


CLAIM_ORDER = (mous.c.priority.is_(None), mous.c.priority, mous.c.uid)


def page_uids(conn: Connection, query: TableQuery) -> tuple[list[str], int]:
    """The uids of the query's page, in its order, and how many MOUS match in all."""
    where = _filters(query)
    total = conn.execute(sa.select(sa.func.count()).select_from(mous).where(*where)
                         ).scalar_one()
    column = BY_KEY.get(query.sort)
    order = CLAIM_ORDER
    if column is not None and column.sort is not None:
        key = column.sort
        order = (key.is_(None), key.desc() if query.order == "desc" else key, mous.c.uid)
    rows = conn.execute(sa.select(mous.c.uid).where(*where)
                        .order_by(*order).limit(query.per)
                        .offset((query.page - 1) * query.per)).all()
    return [r[0] for r in rows], total


class MousRow(NamedTuple):
    """One MOUS of the table (sizes in bytes, times in seconds)."""

    uid: str
    project: str | None
    source: str | None
    cycle: int | None
    qa2: str | None
    size_bytes: int | None
    site: str | None
    node_class: str | None
    attempts: int
    wall_s: float | None
    cpu_s: float | None
    peak_rss: int | None
    state: str
    error_class: str | None
    why: str                # the deciding log line, or the reasons it was excluded
    fits: int               # FITS products of its last export stage
    fits_bytes: int


def _products(outputs: str | None) -> tuple[int, int]:
    """FITS files and their bytes among an export stage's outputs (JSON: name -> bytes)."""
    if not outputs or ".fits" not in outputs:
        return 0, 0
    try:
        found = json.loads(outputs)
    except ValueError:
        return 0, 0
    fits = [size for name, size in found.items() if name.endswith(".fits")]
    return len(fits), int(sum(fits))


def _rows(found: list, cycles: dict) -> list[MousRow]:
    """MousRow of each result row (plain tuple unpacking: 100,000 of them in the report)."""
    classes: dict[tuple, str | None] = {}
    rows = []
    new = tuple.__new__             # MousRow's own __new__ is a Python function: skipped
    for (uid, project, targets, qa2, size, site, error_class, reasons, state, tried, wall,
         cpu, peak, worker, message, outputs) in found:
        why = (", ".join((reasons or "").split()) if state == "excluded"
               else (message or "") if state != "done" else "")
        key = (site, worker)
        if key not in classes:
            classes[key] = node_class_of(site, worker)
        fits, fits_bytes = _products(outputs) if outputs else (0, 0)
        rows.append(new(MousRow, (uid, project, targets, cycles.get(project), qa2, size, site,
                                  classes[key], tried or 0, wall, cpu, peak, state,
                                  error_class, why, fits, fits_bytes)))
    return rows


def read_rows(conn: Connection, uids: list[str] | None = None) -> list[MousRow]:
    """The rows of these MOUS (in this order), or of every MOUS in claim order."""
    last, export = attempts.alias("last"), stages.alias("export")
    query = (sa.select(mous.c.uid, mous.c.project, mous.c.targets, mous.c.qa2,
                       mous.c.size_bytes, mous.c.site, mous.c.error_class, mous.c.reasons,
                       SHOWN_STATE.label("shown_state"), mous.c.attempt_count,
                       mous.c.stage_wall_s, mous.c.stage_cpu_s, mous.c.stage_peak_rss,
                       last.c.worker, last.c.message, export.c.outputs)
             .select_from(mous.outerjoin(last, last.c.id == mous.c.last_attempt_id)
                          .outerjoin(export, export.c.id == mous.c.export_stage_id))
             .order_by(*CLAIM_ORDER))
    if uids is not None:
        query = query.where(mous.c.uid.in_(uids))
    found = conn.execute(query).all()
    cycles = {p: cycle_of(p) for p in {r[1] for r in found} if p}
    rows = _rows(found, cycles)
    if uids is not None:
        place = {uid: i for i, uid in enumerate(uids)}
        rows.sort(key=lambda row: place[row.uid])
    return rows
