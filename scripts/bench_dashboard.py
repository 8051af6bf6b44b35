#!/usr/bin/env python3
"""Time the dashboard's site page and the campaign report on a store of 100,000 MOUS.

    .venv/bin/python scripts/bench_dashboard.py [--mous 100000] [--store URL] [--repeat 3]

Fills a fresh SQLite store (or the given empty one, SQLite or PostgreSQL) with MOUS in every
state, their attempts (done, cut by walltime, failed by class) and four stages per MOUS done,
like a campaign months in. Then it times, each a few times, the live site page (as ``arihpc
dashboard`` serves it, over HTTP on 127.0.0.1) and ``arihpc report``. Goal: under 2 s each. It
prints the figures. ``scripts/bench_store.py`` uses ``fill`` and ``time_views`` on PostgreSQL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arihpc.monitor import pages, server  # noqa: E402
from arihpc.sites.profile import load_profile  # noqa: E402
from arihpc.store.campaign import CampaignStore  # noqa: E402
from arihpc.store.schema import attempts, mous, stages  # noqa: E402

STAGES = ("fetch", "restore", "image", "export")
STATES = {"done": 0.55, "new": 0.25, "failed": 0.05, "queued": 0.04, "waiting": 0.03,
          "running": 0.03, "staging": 0.01, "cancelled": 0.01, "excluded": 0.03}
CLASSES = ("oom", "download", "tclean", "casa-version", "importasdm", "segfault")
SITES = ("eso", "itarc", "mup")
GOAL_S = 2.0
PAGE, REPORT = "site page (GET /site/eso)", "report (arihpc report)"


def fill(store: CampaignStore, count: int, seed: int = 1) -> dict:
    """``count`` MOUS as a campaign months in; returns rows written per table."""
    rng = np.random.default_rng(seed)
    now = time.time()
    names = list(STATES)
    state = rng.choice(names, size=count, p=list(STATES.values()))
    size = np.exp(rng.normal(np.log(13e9), 1.2, count)).astype(np.int64)
    hours = np.minimum(168, 7 * (size / 13e9) ** 1.0 * np.exp(rng.normal(0, 0.3, count)))
    site = rng.choice(SITES, size=count)
    mous_rows, attempt_rows, stage_rows = [], [], []
    for i in range(count):
        uid = f"uid://A001/X{i // 4096:x}/X{i % 4096:x}"
        excluded = state[i] == "excluded"
        claimed = state[i] not in ("new", "excluded")
        started = state[i] in ("done", "failed", "waiting", "running", "staging")
        mous_rows.append({
            "uid": uid, "project": "2015.1.00001.S", "size_bytes": int(size[i]),
            "imported_at": now - 200 * 86400, "selected": not excluded, "tier": 1,
            "priority": i, "state": "new" if excluded else str(state[i]),
            "site": str(site[i]) if claimed else None,
            "error_class": str(rng.choice(CLASSES)) if state[i] in ("failed", "waiting")
            else None})
        if not started:
            continue
        end = now - rng.uniform(0, 120 * 86400)
        if rng.random() < 0.15:         # an earlier attempt cut by the walltime
            attempt_rows.append(_attempt(len(attempt_rows) + 1, uid, site[i], end - 2 * 86400,
                                         end - 86400, "interrupted", "walltime",
                                         int(size[i] * 0.4)))
        # running and staging MOUS have an open attempt; a waiting one failed and will retry
        outcome = {"done": "done", "failed": "failed", "waiting": "failed"}.get(str(state[i]))
        attempt_id = len(attempt_rows) + 1
        attempt_rows.append(_attempt(attempt_id, uid, site[i], end - hours[i] * 3600,
                                     end if outcome else None, outcome,
                                     mous_rows[-1]["error_class"], int(size[i] * 0.3)))
        if outcome == "done":
            start = end - hours[i] * 3600
            for k, name in enumerate(STAGES):
                wall = hours[i] * 3600 * (0.1, 0.2, 0.6, 0.1)[k]
                stage_rows.append({"attempt_id": attempt_id, "uid": uid, "stage": name,
                                   "started_at": start, "ended_at": start + wall,
                                   "wall_s": wall, "cpu_s": wall * 0.9,
                                   "peak_rss": int(2e9 + size[i] * 0.3 * (k == 2)),
                                   "outputs": "{}", "status": "done"})
                start += wall
    with store.engine.begin() as conn:
        conn.execute(mous.insert(), mous_rows)
        conn.execute(attempts.insert(), attempt_rows)
        conn.execute(stages.insert(), stage_rows)
        if conn.dialect.name == "postgresql":
            # the attempt ids above were explicit: the store's own inserts go on after them
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('attempts', 'id'), "
                                 "coalesce(max(id), 1), max(id) IS NOT NULL) FROM attempts")
    return {"mous": len(mous_rows), "attempts": len(attempt_rows), "stages": len(stage_rows)}


def _attempt(number, uid, site, start, end, outcome, error_class, peak) -> dict:
    return {"id": number, "uid": uid, "site": str(site), "started_at": float(start),
            "ended_at": None if end is None else float(end), "outcome": outcome,
            "error_class": error_class, "memory_gb": 8.0, "peak_rss": peak}


def timed(what, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        what()
        times.append(time.perf_counter() - start)
    return times


def time_views(store: CampaignStore, repeat: int = 3) -> dict:
    """Time the site page (GET /site/eso from the dashboard's server on 127.0.0.1) and the
    report, ``repeat`` times each: per view its times (s), median, max, size (bytes) and whether
    the goal is met (every time under ``GOAL_S``)."""
    profiles = {name: None for name in SITES}
    profiles["local"] = load_profile("local")
    port, stop = server.serve_in_thread(server.make_app(store, profiles))
    sizes = {}

    def page() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/site/eso", timeout=120) as answer:
            sizes[PAGE] = len(answer.read())

    def report() -> None:
        sizes[REPORT] = len(pages.report(store, profiles).encode())
    try:
        times = {PAGE: timed(page, repeat), REPORT: timed(report, repeat)}
    finally:
        stop()
    return {name: {"times_s": ts, "median_s": statistics.median(ts), "max_s": max(ts),
                   "bytes": sizes[name], "met": max(ts) < GOAL_S} for name, ts in times.items()}


def print_views(results: dict) -> None:
    print(f"{'view':28} {'median s':>9} {'max s':>7} {'size MB':>8}  goal < {GOAL_S:g} s")
    for name, view in results.items():
        print(f"{name:28} {view['median_s']:9.2f} {view['max_s']:7.2f} "
              f"{view['bytes'] / 1e6:8.2f}  {'met' if view['met'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mous", type=int, default=100_000)
    parser.add_argument("--store", help="an empty store URL (default: a fresh SQLite file)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = CampaignStore.open(args.store or f"sqlite:///{tmp}/bench.db")
        start = time.perf_counter()
        rows = fill(store, args.mous)
        print(f"filled {rows['mous']:,} MOUS, {rows['attempts']:,} attempts, "
              f"{rows['stages']:,} stages in {time.perf_counter() - start:.1f} s "
              f"({store.engine.dialect.name})")
        results = time_views(store, args.repeat)
        print_views(results)
        store.close()
    return 0 if all(view["met"] for view in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
