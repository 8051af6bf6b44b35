"""The store's tables as pandas DataFrames: what ``arihpc.open_campaign`` gives a notebook and
what ``arihpc export`` writes (one implementation of each table).

Four tables, each read whole in one query:

- ``attempts``: one row per attempt (uid, site, node class, batch job, worker, start, end,
  wall, CPU of the stages it completed, peak RSS, outcome, failure class, raw size);
- ``stages``: one row per stage run (the stage's own start, end, wall, CPU and peak RSS, with
  its attempt's site, job, outcome and failure class, and its MOUS's raw size and state);
- ``mous``: one row per MOUS (archive metadata, the selection decision as stored, the
  campaign state, counts of attempts and stage runs and their totals);
- ``queue``: the selected MOUS not yet done, failed or cancelled, in claim order.

Times are UTC timestamps, sizes and memory in bytes unless a name says GB, durations in
seconds. ``node_class`` is None where the store does not say: it is read from the worker's
name as the orchestrator names its batch jobs' workers (``SITE-CLASS-N``), and the stores
written so far record the worker's address (``tcp://host:port``) instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from arihpc.errors import StoreError
from arihpc.mous import cycle_of
from arihpc.store.schema import Store, attempts, mous, stages, store_url

FINAL = ("done", "failed", "cancelled")         # a MOUS in these states waits for nothing
TIME = "time"                                   # a column of seconds since 1970, made UTC

# Each table's columns in order, with their pandas dtype (TIME: a UTC timestamp).
ATTEMPT_COLUMNS = {
    "attempt_id": "int64", "uid": "str", "site": "str", "node_class": "str",
    "batch_job": "str", "worker": "str", "start": TIME, "end": TIME, "wall_s": "float64",
    "stages_cpu_s": "float64", "peak_rss_bytes": "Int64", "memory_asked_gb": "float64",
    "outcome": "str", "error_class": "str", "message": "str", "raw_size_bytes": "Int64",
    "stages_done": "int64",
}
STAGE_COLUMNS = {
    "stage_run_id": "int64", "attempt_id": "int64", "uid": "str", "stage": "str",
    "site": "str", "node_class": "str", "batch_job": "str", "worker": "str", "start": TIME,
    "end": TIME, "wall_s": "float64", "cpu_s": "float64", "peak_rss_bytes": "Int64",
    "status": "str", "attempt_outcome": "str", "attempt_error_class": "str",
    "raw_size_bytes": "Int64", "mous_state": "str",
}
MOUS_COLUMNS = {
    "uid": "str", "project": "str", "cycle": "Int64", "qa2": "str", "raw_size_bytes": "Int64",
    "size_source": "str", "selected": "boolean", "tier": "Int64", "priority": "Int64",
    "reasons": "str", "flags": "str", "state": "str", "site": "str", "error_class": "str",
    "next_stage": "str", "memory_next_gb": "float64", "not_before": TIME,
    "updated_at": TIME, "decided_at": TIME, "imported_at": TIME, "attempts": "int64",
    "stage_runs": "int64", "wall_s": "float64", "cpu_s": "float64", "peak_rss_bytes": "Int64",
}
QUEUE_COLUMNS = {
    "position": "int64", "uid": "str", "priority": "Int64", "raw_size_bytes": "Int64",
    "state": "str", "site": "str", "next_stage": "str", "not_before": TIME,
    "error_class": "str", "memory_next_gb": "float64",
}


def node_class_of(site: str | None, worker: str | None) -> str | None:
    """The node class in a worker's name ``SITE-CLASS-N`` (how arihpc.sites.cluster names the
    worker of each batch job), else None: a worker address says nothing of its class."""
    if not site or not worker or not worker.startswith(f"{site}-"):
        return None
    node_class, dash, serial = worker[len(site) + 1:].rpartition("-")
    return node_class if dash and node_class and serial.isdigit() else None


def _typed(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The frame with exactly these columns, in order, of these dtypes (also when empty)."""
    out = pd.DataFrame(index=frame.index)
    for name, dtype in columns.items():
        values = frame[name]
        if dtype == TIME:       # to the microsecond: the float seconds hold no more
            micros = (values.astype("float64") * 1e6).round().astype("Int64")
            out[name] = pd.to_datetime(micros, unit="us", utc=True).dt.as_unit("us")
        else:
            out[name] = values.astype(dtype)
    return out.reset_index(drop=True)


def _with_node_class(frame: pd.DataFrame) -> pd.DataFrame:
    frame["node_class"] = [node_class_of(site, worker)
                           for site, worker in zip(frame["site"], frame["worker"])]
    return frame


def attempts_table(conn: Connection) -> pd.DataFrame:
    """One row per attempt, by attempt id."""
    done = (sa.select(stages.c.attempt_id, sa.func.count().label("stages_done"),
                      sa.func.sum(stages.c.cpu_s).label("stages_cpu_s"))
            .group_by(stages.c.attempt_id).subquery())
    query = (sa.select(attempts.c.id.label("attempt_id"), attempts.c.uid, attempts.c.site,
                       attempts.c.batch_job, attempts.c.worker,
                       attempts.c.started_at.label("start"), attempts.c.ended_at.label("end"),
                       (attempts.c.ended_at - attempts.c.started_at).label("wall_s"),
                       done.c.stages_cpu_s, attempts.c.peak_rss.label("peak_rss_bytes"),
                       attempts.c.memory_gb.label("memory_asked_gb"), attempts.c.outcome,
                       attempts.c.error_class, attempts.c.message,
                       mous.c.size_bytes.label("raw_size_bytes"),
                       sa.func.coalesce(done.c.stages_done, 0).label("stages_done"))
             .join(mous, mous.c.uid == attempts.c.uid)
             .outerjoin(done, done.c.attempt_id == attempts.c.id)
             .order_by(attempts.c.id))
    return _typed(_with_node_class(pd.read_sql(query, conn)), ATTEMPT_COLUMNS)


def stages_table(conn: Connection) -> pd.DataFrame:
    """One row per stage run (a stage an attempt completed), by stage run id."""
    query = (sa.select(stages.c.id.label("stage_run_id"), stages.c.attempt_id, stages.c.uid,
                       stages.c.stage, attempts.c.site, attempts.c.batch_job, attempts.c.worker,
                       stages.c.started_at.label("start"), stages.c.ended_at.label("end"),
                       stages.c.wall_s, stages.c.cpu_s, stages.c.peak_rss.label("peak_rss_bytes"),
                       stages.c.status, attempts.c.outcome.label("attempt_outcome"),
                       attempts.c.error_class.label("attempt_error_class"),
                       mous.c.size_bytes.label("raw_size_bytes"), mous.c.state.label("mous_state"))
             .join(attempts, attempts.c.id == stages.c.attempt_id)
             .join(mous, mous.c.uid == stages.c.uid)
             .order_by(stages.c.id))
    return _typed(_with_node_class(pd.read_sql(query, conn)), STAGE_COLUMNS)


def mous_table(conn: Connection) -> pd.DataFrame:
    """One row per MOUS: the selected ones in priority order, then the rest by uid."""
    tried = (sa.select(attempts.c.uid, sa.func.count().label("attempts"))
             .group_by(attempts.c.uid).subquery())
    ran = (sa.select(stages.c.uid, sa.func.count().label("stage_runs"),
                     sa.func.sum(stages.c.wall_s).label("wall_s"),
                     sa.func.sum(stages.c.cpu_s).label("cpu_s"),
                     sa.func.max(stages.c.peak_rss).label("peak_rss_bytes"))
           .group_by(stages.c.uid).subquery())
    query = (sa.select(mous.c.uid, mous.c.project, mous.c.qa2,
                       mous.c.size_bytes.label("raw_size_bytes"), mous.c.size_source,
                       mous.c.selected, mous.c.tier, mous.c.priority, mous.c.reasons,
                       mous.c.flags, mous.c.state, mous.c.site, mous.c.error_class,
                       mous.c.next_stage, mous.c.memory_gb.label("memory_next_gb"),
                       mous.c.not_before, mous.c.updated_at, mous.c.decided_at,
                       mous.c.imported_at, sa.func.coalesce(tried.c.attempts, 0).label("attempts"),
                       sa.func.coalesce(ran.c.stage_runs, 0).label("stage_runs"),
                       ran.c.wall_s, ran.c.cpu_s, ran.c.peak_rss_bytes)
             .outerjoin(tried, tried.c.uid == mous.c.uid)
             .outerjoin(ran, ran.c.uid == mous.c.uid)
             .order_by(mous.c.priority.is_(None), mous.c.priority, mous.c.uid))
    frame = pd.read_sql(query, conn)
    cycles = {project: cycle_of(project) for project in frame["project"].dropna().unique()}
    frame["cycle"] = frame["project"].map(cycles)
    return _typed(frame, MOUS_COLUMNS)


def queue_table(conn: Connection) -> pd.DataFrame:
    """The selected MOUS not yet done, failed or cancelled, in the order they are claimed
    (priority, then uid); ``not_before``: a retry waits until then."""
    query = (sa.select(mous.c.uid, mous.c.priority, mous.c.size_bytes.label("raw_size_bytes"),
                       mous.c.state, mous.c.site, mous.c.next_stage, mous.c.not_before,
                       mous.c.error_class, mous.c.memory_gb.label("memory_next_gb"))
             .where(mous.c.selected.is_(True), mous.c.state.not_in(FINAL))
             .order_by(mous.c.priority.is_(None), mous.c.priority, mous.c.uid))
    frame = pd.read_sql(query, conn)
    frame["position"] = range(1, len(frame) + 1)
    return _typed(frame, QUEUE_COLUMNS)


COLUMNS = {"attempts": ATTEMPT_COLUMNS, "stages": STAGE_COLUMNS, "mous": MOUS_COLUMNS,
           "queue": QUEUE_COLUMNS}
TABLES: dict[str, Callable[[Connection], pd.DataFrame]] = {
    "attempts": attempts_table, "stages": stages_table, "mous": mous_table, "queue": queue_table,
}


class Campaign:
    """A campaign store, read as pandas DataFrames. Read-only; close it (or use ``with``)."""

    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def open(cls, url: str | None = None) -> "Campaign":
        """The store at ``url`` (as ``--store``: a path, an SQLite or PostgreSQL URL; default
        $ARIHPC_STORE, else the configured one). An SQLite file that is not there is an error,
        not a new empty store."""
        url = store_url(url)
        database = sa.engine.make_url(url).database
        if url.startswith("sqlite") and database not in (None, "", ":memory:") \
                and not Path(database).is_file():
            raise StoreError(f"no campaign store at {database} (give its path or URL)")
        return cls(Store.open(url))

    def table(self, name: str) -> pd.DataFrame:
        """One of TABLES by name."""
        if name not in TABLES:
            raise KeyError(f"no table {name!r}: one of {', '.join(TABLES)}")
        with self.store.engine.connect() as conn:
            return TABLES[name](conn)

    def attempts(self) -> pd.DataFrame:
        """One row per attempt (see this module's docstring for the columns)."""
        return self.table("attempts")

    def stages(self) -> pd.DataFrame:
        """One row per stage run."""
        return self.table("stages")

    def mous(self) -> pd.DataFrame:
        """One row per MOUS."""
        return self.table("mous")

    def queue(self) -> pd.DataFrame:
        """The selected MOUS not yet done, in claim order."""
        return self.table("queue")

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Campaign":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def open_campaign(store_url: str | None = None) -> Campaign:
    """``Campaign.open``: the campaign store at this URL or path, for pandas."""
    return Campaign.open(store_url)
