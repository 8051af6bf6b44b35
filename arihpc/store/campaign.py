"""The campaign's progress in the store: claims, attempts, stages, recovery, status.

Only the orchestrator writes these (workers report through dask). A claim is exclusive: on
PostgreSQL the candidate rows are locked with ``FOR UPDATE SKIP LOCKED``, and on both
databases the claim is a conditional update, so two orchestrators never take the same MOUS.

MOUS states: new (never claimed, or given back) -> queued (claimed by a site) -> staging
(its attempt began: data fetched ahead of compute) -> running -> done | failed (final) |
waiting (a retry after not_before) | cancelled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from arihpc import config
from arihpc.store.catalog import CatalogStore
from arihpc.store.schema import attempts, mous, stages

ACTIVE = ("queued", "staging", "running")

# The orchestrator's statements for each MOUS, built once: SQLAlchemy then reuses their
# compiled form instead of building and hashing a new statement per MOUS.
# A MOUS that had an attempt at its site (its work directory is there, maybe checkpoints:
# the attempt may have been cut by a worker lost or an orchestrator killed before it said how
# far it got) is that site's, until it waited ``site-affinity-s`` (bound as b_moved_before:
# the latest update time that frees it).
NEVER_STARTED = "never started: the commit that began it was stored but its answer lost"
_WORKED_THERE = sa.exists().where(attempts.c.uid == mous.c.uid, attempts.c.site == mous.c.site,
                                  sa.func.coalesce(attempts.c.message, "") != NEVER_STARTED)
_HERE = sa.or_(mous.c.site.is_(None), mous.c.site == sa.bindparam("b_site"),
               ~_WORKED_THERE, mous.c.updated_at <= sa.bindparam("b_moved_before"))
_CLAIMABLE = sa.and_(_HERE, sa.or_(mous.c.state == "new", sa.and_(
    mous.c.state == "waiting", mous.c.not_before <= sa.bindparam("b_now"))))
_CANDIDATES = (sa.select(mous.c.uid, mous.c.priority, mous.c.size_bytes, mous.c.memory_gb,
                         mous.c.project)
               .where(mous.c.selected.is_(True), _CLAIMABLE)
               .order_by(mous.c.priority, mous.c.uid).limit(sa.bindparam("b_limit")))
_CLAIM = (mous.update().where(mous.c.uid.in_(sa.bindparam("b_uids", expanding=True)), _CLAIMABLE)
          .values(state="queued", site=sa.bindparam("b_site"), owner=sa.bindparam("b_owner"),
                  updated_at=sa.bindparam("b_now"))
          .returning(mous.c.uid))
_ATTEMPTS = sa.select(attempts.c.uid, sa.func.count()).where(
    attempts.c.uid.in_(sa.bindparam("b_uids", expanding=True))).group_by(attempts.c.uid)
_COMPUTING = mous.update().where(mous.c.uid.in_(sa.bindparam("b_uids", expanding=True)),
                                 mous.c.state == "staging").values(
    state="running", updated_at=sa.bindparam("b_now"))
_END_ATTEMPT = attempts.update().where(attempts.c.id == sa.bindparam("b_id")).values(
    {name: sa.bindparam(f"b_{name}") for name in ("ended_at", "outcome", "error_class",
                                                   "message", "batch_job", "worker",
                                                   "peak_rss")})
_SETTLE = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    # An attempt that ended before any stage (a lock held) keeps the stage work stopped at.
    {"next_stage": sa.case((sa.bindparam("b_state", type_=sa.String) == "done", sa.null()),
                           else_=sa.func.coalesce(sa.bindparam("b_next_stage", type_=sa.String),
                                                  mous.c.next_stage)),
     **{name: sa.bindparam(f"b_{name}") for name in ("state", "error_class", "memory_gb",
                                                      "not_before", "updated_at")}})
_STAGES_KNOWN = sa.select(stages.c.uid, stages.c.stage, stages.c.started_at).where(
    stages.c.uid.in_(sa.bindparam("b_uids", expanding=True)))
_NEW_ATTEMPTS = attempts.insert().returning(attempts.c.id, sort_by_parameter_order=True)
_OPENED = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    state=sa.bindparam("b_state"), updated_at=sa.bindparam("b_now"),
    attempt_count=sa.func.coalesce(mous.c.attempt_count, 0) + 1,
    last_attempt_id=sa.bindparam("b_attempt"))
_NEW_STAGES = stages.insert().returning(stages.c.id, sort_by_parameter_order=True)
_ADD_STAGES = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    stage_wall_s=sa.func.coalesce(mous.c.stage_wall_s, 0) + sa.bindparam("b_wall_s"),
    stage_cpu_s=sa.func.coalesce(mous.c.stage_cpu_s, 0) + sa.bindparam("b_cpu_s"),
    # the larger of the two; a NULL (no peak measured) is neither
    stage_peak_rss=sa.case((mous.c.stage_peak_rss >= sa.bindparam("b_peak_rss"),
                            mous.c.stage_peak_rss),
                           else_=sa.func.coalesce(sa.bindparam("b_peak_rss", type_=sa.BigInteger),
                                                  mous.c.stage_peak_rss)),
    export_stage_id=sa.func.coalesce(sa.bindparam("b_export_id", type_=sa.Integer),
                                     mous.c.export_stage_id))


def _added_totals(rows: list[dict], ids) -> list[dict]:
    """What new stage runs (``rows``, stored with ``ids``) add to their MOUS's totals."""
    added: dict[str, dict] = {}
    for row, number in zip(rows, ids):
        total = added.setdefault(row["uid"], {"b_uid": row["uid"], "b_wall_s": 0.0,
                                              "b_cpu_s": 0.0, "b_peak_rss": None,
                                              "b_export_id": None})
        total["b_wall_s"] += row["wall_s"] or 0.0
        total["b_cpu_s"] += row["cpu_s"] or 0.0
        if row["peak_rss"] is not None:
            total["b_peak_rss"] = max(total["b_peak_rss"] or 0, row["peak_rss"])
        if row["stage"] == "export":
            total["b_export_id"] = max(number, total["b_export_id"] or 0)
    return list(added.values())


@dataclass(frozen=True)
class Finish:
    """An attempt's end: its outcome (``result``, as run_in_worker returns it), and the state
    its MOUS moves to, with the memory and earliest time for the next attempt."""

    attempt: int
    result: dict
    state: str
    memory_gb: float | None = None
    not_before: float | None = None


@dataclass(frozen=True)
class Claim:
    uid: str
    priority: int
    size_bytes: int | None
    memory_gb: float | None
    attempts: int
    project: str | None = None


class CampaignStore(CatalogStore):
    """The catalog store plus the orchestrator's writes."""

    def claim(self, site: str, owner: str, limit: int) -> list[Claim]:
        """Take up to ``limit`` claimable MOUS, highest priority first."""
        if limit <= 0:
            return []
        now = time.time()
        with self._begin() as conn:
            query = _CANDIDATES
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            moved_before = now - float(config.get("site-affinity-s"))
            rows = conn.execute(query, {"b_now": now, "b_limit": limit, "b_site": site,
                                        "b_moved_before": moved_before}).all()
            # One conditional update for all: a row another orchestrator took between our
            # select and this update is not claimable any more, and not returned.
            won = set(conn.execute(_CLAIM, {"b_uids": [r.uid for r in rows], "b_now": now,
                                            "b_site": site, "b_owner": owner,
                                            "b_moved_before": moved_before}).scalars()) \
                if rows else set()
            taken = [row for row in rows if row.uid in won]
            if not taken:
                return []
            earlier = dict(conn.execute(_ATTEMPTS, {"b_uids": [r.uid for r in taken]}).all())
            self._events(conn, "claim", [(r.uid, {"site": site, "owner": owner})
                                         for r in taken])
        return [Claim(r.uid, r.priority, r.size_bytes, r.memory_gb, earlier.get(r.uid, 0),
                      r.project)
                for r in taken]

    def start_attempt(self, uid: str, site: str, memory_gb: float | None,
                      state: str = "running") -> int:
        """Open an attempt; its MOUS is ``staging`` (its data being fetched ahead of compute)
        or ``running``."""
        return self.start_attempts([(uid, memory_gb)], site, state)[0]

    def start_attempts(self, starts: list[tuple[str, float | None]], site: str,
                       state: str = "running") -> list[int]:
        """``start_attempt`` for each (uid, memory_gb), in two statements; the attempt
        numbers in the same order."""
        if not starts:
            return []
        now = time.time()
        with self._begin() as conn:
            numbers = list(conn.execute(_NEW_ATTEMPTS, [
                {"uid": uid, "site": site, "started_at": now, "memory_gb": memory_gb}
                for uid, memory_gb in starts]).scalars())
            conn.execute(_OPENED, [{"b_uid": uid, "b_state": state, "b_now": now,
                                    "b_attempt": number}
                                   for (uid, _), number in zip(starts, numbers)])
        return numbers

    def computing(self, uids: list[str]) -> None:
        """Staging MOUS start computing."""
        if uids:
            with self._begin() as conn:
                conn.execute(_COMPUTING, {"b_uids": uids, "b_now": time.time()})

    def finish_attempt(self, attempt: int, result: dict, state: str,
                       memory_gb: float | None = None, not_before: float | None = None) -> None:
        """Record an attempt's outcome and stages, and move its MOUS to ``state``."""
        self.finish_attempts([Finish(attempt, result, state, memory_gb, not_before)])

    def finish_attempts(self, finishes: list[Finish]) -> None:
        """``finish_attempt`` for each, in five statements."""
        if not finishes:
            return
        now = time.time()
        with self._begin() as conn:
            conn.execute(_END_ATTEMPT, [{
                "b_id": f.attempt, "b_ended_at": now, "b_outcome": f.result["status"],
                "b_error_class": f.result.get("error_class"),
                "b_message": f.result.get("message"), "b_batch_job": f.result.get("batch_job"),
                "b_worker": f.result.get("worker"), "b_peak_rss": f.result.get("peak_rss")}
                for f in finishes])
            self._record_stages(conn, [(f.attempt, f.result["uid"], f.result.get("records", {}))
                                       for f in finishes])
            conn.execute(_SETTLE, [{
                "b_uid": f.result["uid"], "b_state": f.state,
                "b_error_class": f.result.get("error_class"),
                "b_next_stage": f.result.get("stage"), "b_memory_gb": f.memory_gb,
                "b_not_before": f.not_before, "b_updated_at": now} for f in finishes])
            self._events(conn, "attempt", [(f.result["uid"], {
                "attempt": f.attempt, "outcome": f.result["status"],
                "error_class": f.result.get("error_class"), "state": f.state})
                for f in finishes])

    def record_stages(self, attempt: int, uid: str, records: dict) -> None:
        """Stages an attempt completed before it ended (a fetch ahead of compute)."""
        with self._begin() as conn:
            self._record_stages(conn, [(attempt, uid, records)])

    @staticmethod
    def _record_stages(conn, ended: list[tuple[int, str, dict]]) -> None:
        """The checkpoint records of (attempt, uid, records) each, but those the store has
        already (by this attempt or an earlier one: a stage is recorded once, by its start)."""
        known = {(uid, stage, start) for uid, stage, start in conn.execute(
            _STAGES_KNOWN, {"b_uids": sorted({uid for _, uid, _ in ended})}).all()}
        rows = []
        for attempt, uid, records in ended:
            for record in (records or {}).values():
                if record is None or (uid, record["stage"], record["start"]) in known:
                    continue
                known.add((uid, record["stage"], record["start"]))
                rows.append({"attempt_id": attempt, "uid": uid, "stage": record["stage"],
                             "started_at": record["start"], "ended_at": record["end"],
                             "wall_s": record["wall_s"], "cpu_s": record["cpu_s"],
                             "peak_rss": record["peak_rss"],
                             "outputs": json.dumps(record["outputs"]), "status": "done"})
        if rows:
            ids = conn.execute(_NEW_STAGES, rows).scalars()
            conn.execute(_ADD_STAGES, _added_totals(rows, ids))

    def failures_of_class(self, uid: str, error_class: str) -> int:
        with self._connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
                attempts.c.uid == uid, attempts.c.outcome == "failed",
                attempts.c.error_class == error_class)).scalar_one()

    def failed_mous(self, limit: int) -> list[dict]:
        """The MOUS in state failed, the latest first (at most ``limit``), each with the class
        and classifying line of its last failed attempt: why it was not packaged."""
        last = (sa.select(attempts.c.uid, sa.func.max(attempts.c.id).label("id"))
                .where(attempts.c.outcome == "failed").group_by(attempts.c.uid).subquery())
        query = (sa.select(mous.c.uid, mous.c.site, attempts.c.error_class, attempts.c.message,
                           attempts.c.ended_at)
                 .join(last, last.c.uid == mous.c.uid).join(attempts, attempts.c.id == last.c.id)
                 .where(mous.c.state == "failed")
                 .order_by(attempts.c.ended_at.desc(), mous.c.uid).limit(limit))
        with self._connect() as conn:
            return [{"uid": r.uid, "site": r.site, "error_class": r.error_class,
                     "message": r.message, "ended_at": r.ended_at}
                    for r in conn.execute(query)]

    def ended_mous(self) -> list[tuple[str, str | None, str]]:
        """(uid, site, state) of every MOUS done or failed, by uid."""
        with self._connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(mous.c.uid, mous.c.site, mous.c.state)
                .where(mous.c.state.in_(("done", "failed"))).order_by(mous.c.uid))]

    def recover(self, site: str) -> int:
        """After an orchestrator of this site died: close its open attempts as lost and give
        its claimed MOUS back; their checkpoints make the next attempt resume. Returns count."""
        now = time.time()
        with self._begin() as conn:
            conn.execute(attempts.update().where(attempts.c.site == site,
                                                 attempts.c.ended_at.is_(None))
                         .values(ended_at=now, outcome="lost"))
            given = conn.execute(mous.update().where(mous.c.site == site,
                                                     mous.c.state.in_(ACTIVE))
                                 .values(state="new", owner=None, updated_at=now)).rowcount
            if given:
                self._event(conn, "recover", site=site, mous=given)
        return given

    def release_strays(self, site: str, owner: str, held_uids: set[str],
                       held_attempts: set[int]) -> int:
        """After a store outage: the open attempts of ``site`` and the active MOUS of
        ``owner`` that it does not hold (a commit stored although its answer was lost) are
        closed as lost and given back. Returns the MOUS given back."""
        now = time.time()
        with self._begin() as conn:
            conn.execute(attempts.update().where(
                attempts.c.site == site, attempts.c.ended_at.is_(None),
                attempts.c.id.not_in(sorted(held_attempts)))
                .values(ended_at=now, outcome="lost", message=NEVER_STARTED))
            given = conn.execute(mous.update().where(
                mous.c.owner == owner, mous.c.state.in_(ACTIVE),
                mous.c.uid.not_in(sorted(held_uids)))
                .values(state="new", owner=None, updated_at=now)).rowcount
            if given:
                self._event(conn, "release", site=site, owner=owner, mous=given)
        return given

    def set_state(self, uids: list[str] | None, state: str, where_states: tuple[str, ...],
                  error_class: str | None = None) -> int:
        """Move MOUS (all, or the given uids) that are in ``where_states`` to ``state``."""
        query = mous.update().where(mous.c.state.in_(where_states))
        if uids is not None:
            query = query.where(mous.c.uid.in_(uids))
        if error_class is not None:
            query = query.where(mous.c.error_class == error_class)
        with self._begin() as conn:
            changed = conn.execute(query.values(state=state, not_before=None,
                                                updated_at=time.time())).rowcount
            self._event(conn, "set-state", state=state, mous=changed, uids=uids)
        return changed

    def next_retry_at(self, site: str | None = None) -> float | None:
        """When the earliest waiting retry ``site`` may claim may be claimed (None: no retry
        waits; without a site, of any site)."""
        query = sa.select(sa.func.min(mous.c.not_before)).where(mous.c.state == "waiting")
        params = {}
        if site is not None:
            query = query.where(_HERE)
            params = {"b_site": site,
                      "b_moved_before": time.time() - float(config.get("site-affinity-s"))}
        with self._connect() as conn:
            return conn.execute(query, params).scalar()

    def history(self) -> tuple[list[float], list[float], list[float]]:
        """Raw size (GB), run time (h) and peak memory (GB) of every MOUS done so far."""
        query = (sa.select(mous.c.size_bytes, sa.func.sum(stages.c.wall_s),
                           sa.func.max(stages.c.peak_rss))
                 .join(stages, stages.c.uid == mous.c.uid)
                 .where(mous.c.state == "done", mous.c.size_bytes.is_not(None))
                 .group_by(mous.c.uid, mous.c.size_bytes))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        return ([r[0] / 1e9 for r in rows], [r[1] / 3600 for r in rows],
                [r[2] / 1e9 for r in rows])

    def remaining_sizes(self) -> list[float | None]:
        """Raw size in GB (None: unknown) of each selected MOUS not yet done, failed or
        cancelled, in priority order."""
        with self._connect() as conn:
            rows = conn.execute(sa.select(mous.c.size_bytes).where(
                mous.c.selected.is_(True),
                mous.c.state.not_in(("done", "failed", "cancelled")))
                .order_by(mous.c.priority.is_(None), mous.c.priority, mous.c.uid)).all()
        return [r[0] / 1e9 if r[0] else None for r in rows]

    def remaining(self) -> int:
        """Selected MOUS not yet done, failed or cancelled."""
        with self._connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(mous).where(
                mous.c.selected.is_(True),
                mous.c.state.not_in(("done", "failed", "cancelled")))).scalar_one()

    def status(self) -> dict:
        """Counts by state, by site and by failure class, and the MOUS running now."""
        with self._connect() as conn:
            def counts(*columns, where=sa.true()):
                rows = conn.execute(sa.select(*columns, sa.func.count()).where(where)
                                    .group_by(*columns)).all()
                return {"/".join(str(v) for v in row[:-1]): row[-1] for row in rows}
            running = conn.execute(sa.select(mous.c.uid, mous.c.site, mous.c.next_stage)
                                   .where(mous.c.state.in_(ACTIVE)).order_by(mous.c.uid)).all()
            return {
                "states": counts(mous.c.state, where=mous.c.selected.is_(True)),
                "excluded": conn.execute(sa.select(sa.func.count()).select_from(mous).where(
                    mous.c.selected.is_(False))).scalar_one(),
                "sites": counts(mous.c.site, mous.c.state, where=mous.c.site.is_not(None)),
                "failure_classes": counts(attempts.c.error_class,
                                          where=attempts.c.error_class.is_not(None)),
                "running": [{"uid": r.uid, "site": r.site, "stage": r.next_stage}
                            for r in running],
            }
