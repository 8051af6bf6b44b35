"""The campaign's numbers from the store alone: progress, run times, memory, failures, pace.

``CampaignNumbers`` reads the store once (aggregated in SQL, grouped by site); each method
then returns plain JSON-ready values for the whole campaign (site None) or one site, so the
live pages, ``/api/`` and the report show the same numbers.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from arihpc.planning import model as planning
from arihpc.store.schema import attempts, mous, stages

GB = 1e9
WAITING = ("new", "waiting", "queued")      # selected, not started: the "queued" of a dashboard
CUT = ("interrupted", "yielded")            # attempts a walltime (or its deadline) cut short


class StateCounts:
    """Selected MOUS counted by site, state and failure class, and the excluded ones."""

    def __init__(self, conn: Connection):
        self.rows = conn.execute(
            sa.select(mous.c.site, mous.c.state, mous.c.error_class, sa.func.count())
            .where(mous.c.selected.is_(True))
            .group_by(mous.c.site, mous.c.state, mous.c.error_class)).all()
        self.excluded = conn.execute(sa.select(sa.func.count()).select_from(mous).where(
            mous.c.selected.is_(False))).scalar_one()

    def progress(self, site: str | None = None) -> dict:
        """Selected MOUS by state, failed ones by class, and (campaign-wide) the excluded."""
        states: dict[str, int] = {}
        failed: dict[str, int] = {}
        for row_site, state, error_class, count in self.rows:
            if site is None or row_site == site:
                states[state] = states.get(state, 0) + count
                if state == "failed":
                    name = str(error_class or "unknown")
                    failed[name] = failed.get(name, 0) + count
        numbers = {
            "selected": sum(states.values()),
            "queued": sum(states.get(s, 0) for s in WAITING),
            **{s: states.get(s, 0) for s in ("staging", "running", "done", "failed",
                                              "cancelled")},
            "failed_by_class": dict(sorted(failed.items())),
        }
        if site is None:
            numbers["excluded"] = self.excluded
        return numbers


class CampaignNumbers:
    """Everything the figures need, read in one pass over the store and grouped by site in
    SQL; ``view(site)`` then cuts out one site's part without asking the store again."""

    def __init__(self, conn: Connection, runs: list[tuple] | None = None):
        """``runs``: (site, raw size, stage run time, peak RSS) of each MOUS done with a raw
        size, when the caller has read them already (the report's MOUS table has)."""
        self.states = StateCounts(conn)
        rows = runs if runs is not None else conn.execute(
            sa.select(mous.c.site, mous.c.size_bytes, mous.c.stage_wall_s,
                      mous.c.stage_peak_rss)
            .where(mous.c.state == "done", mous.c.size_bytes.is_not(None),
                   mous.c.stage_wall_s.is_not(None))).all()
        self.run_sites = np.array([r[0] or "" for r in rows], dtype=object)
        self.run_values = np.array([[r[1] or 0, r[2] or 0, r[3] or 0] for r in rows],
                                   dtype=float).reshape(-1, 3)
        self.cuts = conn.execute(sa.select(attempts.c.site, attempts.c.peak_rss).where(
            attempts.c.outcome.in_(CUT), attempts.c.peak_rss.is_not(None))).all()
        self.failures = conn.execute(
            sa.select(attempts.c.site, attempts.c.error_class, sa.func.count())
            .where(attempts.c.error_class.is_not(None))
            .group_by(attempts.c.site, attempts.c.error_class)).all()
        ends = conn.execute(sa.select(attempts.c.site, attempts.c.ended_at).where(
            attempts.c.outcome == "done")).all()
        self.end_sites = np.array([r[0] for r in ends], dtype=object)
        self.ends = np.array([r[1] for r in ends], dtype=float)
        self.left = remaining_sizes_gb(conn)
        self.concurrency = concurrency_seen(conn)

    def progress(self, site: str | None = None) -> dict:
        return self.states.progress(site)

    def runs(self, site: str | None = None) -> dict:
        """Raw size (GB), total stage run time (h) and peak RSS (GB) of each MOUS done."""
        data = self.run_values if site is None else self.run_values[self.run_sites == site]
        return {"size_gb": (data[:, 0] / GB).tolist(), "hours": (data[:, 1] / 3600).tolist(),
                "peak_gb": (data[:, 2] / GB).tolist()}

    def cut_peaks_gb(self, site: str | None = None) -> list[float]:
        """Peak RSS (GB) of the attempts cut short by walltime or their job's deadline."""
        return [peak / GB for row_site, peak in self.cuts if site is None or row_site == site]

    def failure_classes(self, site: str | None = None) -> dict[str, int]:
        """Attempts that ended with each failure class (walltime cuts included): what recurs."""
        counts: dict[str, int] = {}
        for row_site, error_class, count in self.failures:
            if site is None or row_site == site:
                counts[error_class] = counts.get(error_class, 0) + count
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def throughput(self, site: str | None = None, bins: int = 60) -> dict:
        """MOUS done per time bin (``bins`` at most, whole minutes/hours/days), by end time."""
        ends = self.ends if site is None else self.ends[self.end_sites == site]
        if not ends.size:
            return {"bin_s": 0, "start": [], "done": [], "total": []}
        width = _bin_width(float(ends.max() - ends.min()), bins)
        first = math.floor(ends.min() / width) * width
        counts = np.bincount(((ends - first) // width).astype(int))
        return {"bin_s": width, "start": [first + i * width for i in range(counts.size)],
                "done": counts.tolist(), "total": np.cumsum(counts).tolist()}

    @functools.cached_property
    def runtime_model(self) -> planning.PowerLaw:
        """The planning model's run time fitted to every MOUS done (the study's until then)."""
        runs = self.runs()
        return planning.fit(runs["size_gb"], runs["hours"], planning.default_models()[0])

    def expected_end(self, slots: int, recent_s: float = 86400,
                     now: float | None = None) -> dict:
        """When the campaign ends: the planning model (fitted to the runs done) over
        ``slots`` MOUS slots, and the pace of the last ``recent_s`` seconds."""
        now = time.time() if now is None else now
        runtime = self.runtime_model
        model_h = planning.total_runtime_h(self.left, runtime) / max(1, slots)
        recent = int(np.count_nonzero(self.ends >= now - recent_s))
        pace_h = len(self.left) / (recent / recent_s) / 3600 if recent else None
        return {"left": len(self.left), "slots": slots,
                "model": {"intercept": runtime.intercept, "slope": runtime.slope,
                          "points": runtime.points},
                "model_hours": model_h, "model_end": now + model_h * 3600 if slots else None,
                "pace_hours": pace_h,
                "pace_end": now + pace_h * 3600 if pace_h is not None else None}


def _bin_width(span_s: float, bins: int) -> float:
    for width in (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400):
        if span_s / width <= bins:
            return width
    return 365 * 86400


RECENT_STAGE_RUNS = 20_000         # the stage runs concurrency_seen looks at, the latest


def concurrency_seen(conn: Connection, latest: int = RECENT_STAGE_RUNS) -> dict[str, int]:
    """Per site, the most MOUS seen computing at once: the largest number of its stage runs
    (but fetches, which run on I/O slots ahead of compute) that overlapped in time, over its
    ``latest`` stage runs. Attempts overlap more than that (a MOUS is claimed and staged
    while another computes), stage runs do not (a batch of short MOUS runs one by one)."""
    rows = conn.execute(sa.select(attempts.c.site, stages.c.started_at, stages.c.ended_at)
                        .join(attempts, attempts.c.id == stages.c.attempt_id)
                        .where(stages.c.stage != "fetch", stages.c.ended_at.is_not(None))
                        .order_by(stages.c.id.desc()).limit(latest)).all()
    by_site: dict[str, list[tuple[float, float]]] = {}
    for site, start, end in rows:
        by_site.setdefault(site, []).append((start, end))
    found = {}
    for site, spans in by_site.items():
        times = np.array(spans, dtype=float)
        # +1 at each start, -1 at each end; an end sorts before a start at the same time
        events = np.concatenate([np.c_[times[:, 0], np.ones(len(times))],
                                 np.c_[times[:, 1], -np.ones(len(times))]])
        events = events[np.lexsort((events[:, 1], events[:, 0]))]
        found[site] = int(np.cumsum(events[:, 1]).max())
    return found


def remaining_sizes_gb(conn: Connection) -> list[float | None]:
    """Raw size of each selected MOUS not done, failed or cancelled (the whole campaign)."""
    rows = conn.execute(sa.select(mous.c.size_bytes).where(
        mous.c.selected.is_(True), mous.c.state.not_in(("done", "failed", "cancelled"))))
    return [r[0] / GB if r[0] else None for r in rows]


def sites_seen(conn: Connection) -> list[str]:
    """Sites that claimed a MOUS or started an attempt."""
    claimed = {r[0] for r in conn.execute(sa.select(mous.c.site).where(
        mous.c.site.is_not(None)).distinct())}
    tried = {r[0] for r in conn.execute(sa.select(attempts.c.site).distinct())}
    return sorted(claimed | tried)
