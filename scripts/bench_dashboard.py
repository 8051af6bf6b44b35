#!/usr/bin/env python3
"""Time the dashboard's site page and the campaign report on a store of 100,000 MOUS.

    .venv/bin/python scripts/bench_dashboard.py [--mous 100000] [--store URL] [--keep DIR]

Fills a fresh SQLite store (or the given empty one) with MOUS in every state, their attempts
(done, cut by walltime, failed by class) and four stages per MOUS done, like a campaign months
in. Then it times, each a few times, the live site page (as ``arihpc dashboard`` serves it,
over HTTP on 127.0.0.1) and ``arihpc report``. Goal: under 2 s each. It prints the figures.
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
        profiles = {name: None for name in SITES}
        profiles["local"] = load_profile("local")
        port, stop = server.serve_in_thread(server.make_app(store, profiles))
        url = f"http://127.0.0.1:{port}"
        sizes = {}

        def page() -> None:
            with urllib.request.urlopen(f"{url}/site/eso", timeout=60) as response:
                sizes["page"] = len(response.read())

        def report() -> None:
            sizes["report"] = len(pages.report(store, profiles).encode())
        results = {"site page (GET /site/eso)": (timed(page, args.repeat), "page"),
                   "report (arihpc report)": (timed(report, args.repeat), "report")}
        print(f"{'view':28} {'median s':>9} {'max s':>7} {'size MB':>8}  goal < {GOAL_S:g} s")
        failed = False
        for name, (times, key) in results.items():
            met = max(times) < GOAL_S
            failed |= not met
            print(f"{name:28} {statistics.median(times):9.2f} {max(times):7.2f} "
                  f"{sizes[key] / 1e6:8.2f}  {'met' if met else 'NOT met'}")
        stop()
        store.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
