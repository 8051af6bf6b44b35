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

from arihpc.store import Store, attempts, mous, stages

ACTIVE = ("queued", "staging", "running")

# The orchestrator's statements for each MOUS, built once: SQLAlchemy then reuses their
# compiled form instead of building and hashing a new statement per MOUS.
_CLAIMABLE = sa.or_(mous.c.state == "new", sa.and_(mous.c.state == "waiting",
                                                    mous.c.not_before <= sa.bindparam("b_now")))
_CANDIDATES = (sa.select(mous.c.uid, mous.c.priority, mous.c.size_bytes, mous.c.memory_gb,
                         mous.c.project)
               .where(mous.c.selected.is_(True), _CLAIMABLE)
               .order_by(mous.c.priority, mous.c.uid).limit(sa.bindparam("b_limit")))
_CLAIM = mous.update().where(mous.c.uid == sa.bindparam("b_uid"), _CLAIMABLE).values(
    state="queued", site=sa.bindparam("b_site"), owner=sa.bindparam("b_owner"),
    updated_at=sa.bindparam("b_now"))
_ATTEMPTS = sa.select(attempts.c.uid, sa.func.count()).where(
    attempts.c.uid.in_(sa.bindparam("b_uids", expanding=True))).group_by(attempts.c.uid)
_SET_STATE = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    state=sa.bindparam("b_state"), updated_at=sa.bindparam("b_now"))
_COMPUTING = mous.update().where(mous.c.uid == sa.bindparam("b_uid"),
                                 mous.c.state == "staging").values(
    state="running", updated_at=sa.bindparam("b_now"))
_END_ATTEMPT = attempts.update().where(attempts.c.id == sa.bindparam("b_id")).values(
    {name: sa.bindparam(f"b_{name}") for name in ("ended_at", "outcome", "error_class",
                                                   "message", "batch_job", "worker",
                                                   "peak_rss")})
_SETTLE = mous.update().where(mous.c.uid == sa.bindparam("b_uid")).values(
    {name: sa.bindparam(f"b_{name}") for name in ("state", "error_class", "next_stage",
                                                   "memory_gb", "not_before", "updated_at")})
_STAGES_KNOWN = sa.select(stages.c.stage, stages.c.started_at).where(
    stages.c.uid == sa.bindparam("b_uid"))


@dataclass(frozen=True)
class Claim:
    uid: str
    priority: int
    size_bytes: int | None
    memory_gb: float | None
    attempts: int
    project: str | None = None


class CampaignStore(Store):
    """Store plus the orchestrator's writes."""

    def claim(self, site: str, owner: str, limit: int) -> list[Claim]:
        """Take up to ``limit`` claimable MOUS, highest priority first."""
        if limit <= 0:
            return []
        now = time.time()
        taken = []
        with self._begin() as conn:
            query = _CANDIDATES
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for row in conn.execute(query, {"b_now": now, "b_limit": limit}).all():
                updated = conn.execute(_CLAIM, {"b_uid": row.uid, "b_now": now,
                                                "b_site": site, "b_owner": owner})
                if updated.rowcount == 1:   # nobody took it between our select and update
                    taken.append(row)
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
        with self._begin() as conn:
            attempt = conn.execute(attempts.insert(), {
                "uid": uid, "site": site, "started_at": time.time(), "memory_gb": memory_gb}
            ).inserted_primary_key[0]
            conn.execute(_SET_STATE, {"b_uid": uid, "b_state": state, "b_now": time.time()})
        return attempt

    def computing(self, uid: str) -> None:
        """A staging MOUS starts computing."""
        with self._begin() as conn:
            conn.execute(_COMPUTING, {"b_uid": uid, "b_now": time.time()})

    def finish_attempt(self, attempt: int, result: dict, state: str,
                       memory_gb: float | None = None, not_before: float | None = None) -> None:
        """Record an attempt's outcome and stages, and move its MOUS to ``state``."""
        uid, error_class = result["uid"], result.get("error_class")
        with self._begin() as conn:
            conn.execute(_END_ATTEMPT, {
                "b_id": attempt, "b_ended_at": time.time(), "b_outcome": result["status"],
                "b_error_class": error_class, "b_message": result.get("message"),
                "b_batch_job": result.get("batch_job"), "b_worker": result.get("worker"),
                "b_peak_rss": result.get("peak_rss")})
            self._record_stages(conn, attempt, uid, result.get("records", {}))
            conn.execute(_SETTLE, {
                "b_uid": uid, "b_state": state, "b_error_class": error_class,
                "b_next_stage": result.get("stage"), "b_memory_gb": memory_gb,
                "b_not_before": not_before, "b_updated_at": time.time()})
            self._event(conn, "attempt", uid, attempt=attempt, outcome=result["status"],
                        error_class=error_class, state=state)

    def record_stages(self, attempt: int, uid: str, records: dict) -> None:
        """Stages an attempt completed before it ended (a fetch ahead of compute)."""
        with self._begin() as conn:
            self._record_stages(conn, attempt, uid, records)

    @staticmethod
    def _record_stages(conn, attempt: int, uid: str, records: dict) -> None:
        known = set(conn.execute(_STAGES_KNOWN, {"b_uid": uid}).all())
        rows = [{"attempt_id": attempt, "uid": uid, "stage": record["stage"],
                 "started_at": record["start"], "ended_at": record["end"],
                 "wall_s": record["wall_s"], "cpu_s": record["cpu_s"],
                 "peak_rss": record["peak_rss"], "outputs": json.dumps(record["outputs"]),
                 "status": "done"}
                for record in records.values()
                # not those recorded already, by this attempt or an earlier one
                if record is not None and (record["stage"], record["start"]) not in known]
        if rows:
            conn.execute(stages.insert(), rows)

    def failures_of_class(self, uid: str, error_class: str) -> int:
        with self._connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
                attempts.c.uid == uid, attempts.c.outcome == "failed",
                attempts.c.error_class == error_class)).scalar_one()

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

    def next_retry_at(self) -> float | None:
        """When the earliest waiting retry may be claimed (None: no retry waits)."""
        with self._connect() as conn:
            return conn.execute(sa.select(sa.func.min(mous.c.not_before)).where(
                mous.c.state == "waiting")).scalar()

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
