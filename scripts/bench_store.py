#!/usr/bin/env python3
"""Measure the PostgreSQL store under load: orchestrators claiming at once, a status poller.

    .venv/bin/python scripts/bench_store.py [--store URL] [--mous 100000] [--claimers 3]
        [--seconds 30] [--repeat 3] [--batch 8] [--json FILE] [--keep] [--no-analyze]

Makes a fresh database on the PostgreSQL server of --store (default $ARIHPC_TEST_POSTGRES_URL),
fills it with bench_dashboard.py's catalog (a campaign months in) and ANALYZEs it, as autovacuum
would have. Then, at once, each in its own process: one claimer per site (eso, itarc, mup)
doing what `arihpc run` does with the store (claim a few MOUS, start their attempts, finish
them: most done, some yielded and resumed next round, some failed to be retried later, some
failed for good), and one poller calling store.status() (`arihpc status`, the dashboard) and
a site's live view in turn. After --seconds it checks from the store that no MOUS was held
twice at once and that each MOUS claimed ended in a valid state, prints claims/s, latencies and
the load average, and times the dashboard's site page and the report on that store (goal:
under 2 s each). Exit 1 if a MOUS was held twice or left in a bad state; a missed timing goal
is printed, not an error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import bench_dashboard  # noqa: E402
from chaos_campaign import drop_database, fresh_database  # noqa: E402

from arihpc.monitor import views  # noqa: E402
from arihpc.store.campaign import CampaignStore, Finish  # noqa: E402
from arihpc.store.schema import attempts, mous  # noqa: E402

SITES = ("eso", "itarc", "mup")
STAGES = ("fetch", "restore", "image", "export")
# what a MOUS's attempt ends with: done, yielded (resumed next round), failed and retried
# (state waiting: any site may claim it once not_before has passed), failed for good
OUTCOMES = (("done", 0.80), ("yielded", 0.10), ("retry", 0.06), ("failed", 0.04))
RETRY_AFTER_S = 1.0
VALID = {"done": {"done"}, "failed": {"failed", "waiting"}, "yielded": {"new"}}


def create_database(server_url: str) -> str:
    """A fresh database on the server of ``server_url``; its URL."""
    return fresh_database(server_url, f"arihpc_bench_{uuid.uuid4().hex[:12]}")


def _ran(stage: str, started: float) -> dict:
    return {"stage": stage, "start": started, "end": started + 1e-3, "wall_s": 1e-3,
            "cpu_s": 1e-3, "peak_rss": 2_000_000_000, "outputs": {}}


def _outcome(uid: str, attempt: int, draw: str, checkpoints: dict) -> Finish:
    """The attempt's end, as the orchestrator records it; ``checkpoints`` are this site's."""
    records = checkpoints.setdefault(uid, {})
    todo = [stage for stage in STAGES if stage not in records]
    now = time.time()
    if draw == "yielded" and len(todo) > 1:
        records[todo[0]] = _ran(todo[0], now)
        result = {"uid": uid, "status": "yielded", "stage": todo[1], "records": dict(records)}
        return Finish(attempt, result, "queued")
    if draw in ("done", "yielded"):
        records.update({stage: _ran(stage, now + k * 1e-3) for k, stage in enumerate(todo)})
        checkpoints.pop(uid)
        return Finish(attempt, {"uid": uid, "status": "done", "records": records}, "done")
    result = {"uid": uid, "status": "failed", "stage": todo[0], "records": dict(records),
              "error_class": "download" if draw == "retry" else "tclean",
              "message": f"bench_store: {draw}"}
    if draw == "retry":
        return Finish(attempt, result, "waiting", None, now + RETRY_AFTER_S)
    checkpoints.pop(uid)
    return Finish(attempt, result, "failed")


def claimer(url: str, site: str, seconds: float, batch: int, seed: int, barrier,
            results) -> None:
    """One site's orchestrator rounds for ``seconds`` (a process of its own)."""
    try:
        store = CampaignStore.open(url)
        rng = random.Random(seed)
        owner = f"bench-store-{site}-{os.getpid()}"
        checkpoints: dict[str, dict] = {}
        parked: list[str] = []          # yielded: held by this site, resumed next round
        latencies, counts = [], Counter()
        names, weights = zip(*OUTCOMES)
        barrier.wait()
        end = time.time() + seconds
        while time.time() < end:
            start = time.perf_counter()
            claims = store.claim(site, owner, batch)
            latencies.append(time.perf_counter() - start)
            counts["claims"] += 1
            counts["empty"] += not claims
            counts["mous"] += len(claims)
            uids = [claim.uid for claim in claims]
            numbers = store.start_attempts([(c.uid, c.memory_gb) for c in claims], site,
                                           "staging")
            store.computing(uids)
            numbers += store.start_attempts([(uid, None) for uid in parked], site)
            runs, parked = list(zip(uids + parked, numbers)), []
            finishes = [_outcome(uid, number, rng.choices(names, weights)[0], checkpoints)
                        for uid, number in runs]
            store.finish_attempts(finishes)
            for finish in finishes:
                counts[finish.result["status"]] += 1
                if finish.state == "queued":
                    parked.append(finish.result["uid"])
            if not runs:
                time.sleep(0.1)         # nothing claimable: the next round comes later
        if parked:                      # stopping: what it holds is given back
            store.set_state(parked, "new", ("queued",))
        store.close()
        results.put(("claimer", site, {"latencies_s": latencies, **counts}))
    except BaseException:
        results.put(("error", site, traceback.format_exc()))
        barrier.abort()


def poller(url: str, sites: list[str], seconds: float, barrier, results) -> None:
    """``store.status()`` and a site's live view (store part), in turn, for ``seconds``."""
    try:
        store = CampaignStore.open(url)
        status_s, site_s = [], []
        barrier.wait()
        end = time.time() + seconds
        while time.time() < end:
            start = time.perf_counter()
            store.status()
            status_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            views.site_view(store, sites[len(site_s) % len(sites)], None)
            site_s.append(time.perf_counter() - start)
        store.close()
        results.put(("poller", None, {"status_s": status_s, "site_s": site_s}))
    except BaseException:
        results.put(("error", "poller", traceback.format_exc()))
        barrier.abort()


def load(url: str, sites: list[str], seconds: float, batch: int = 8) -> dict:
    """Run the claimers and the poller at once; what each measured, and the load average
    (1 min) sampled each second meanwhile."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(sites) + 2), context.Queue()
    processes = [context.Process(target=claimer, args=(url, site, seconds, batch, k, barrier,
                                                       results)) for k, site in enumerate(sites)]
    processes.append(context.Process(target=poller, args=(url, sites, seconds, barrier,
                                                          results)))
    for process in processes:
        process.start()
    got: dict = {"claimers": {}, "loadavg": []}
    try:
        try:
            barrier.wait(timeout=300)
        except threading.BrokenBarrierError:
            kind, name, data = results.get(timeout=30)
            raise RuntimeError(f"bench_store: {name} failed before the start:\n{data}")
        started = time.time()
        while len(got["claimers"]) + ("poller" in got) < len(processes):
            got["loadavg"].append(os.getloadavg()[0])
            if time.time() > started + seconds + 300:
                raise RuntimeError("bench_store: the load processes did not end")
            try:
                kind, name, data = results.get(timeout=1)
            except queue.Empty:
                continue
            if kind == "error":
                raise RuntimeError(f"bench_store: {name} failed:\n{data}")
            if kind == "poller":
                got["poller"] = data
            else:
                got["claimers"][name] = data
        got["elapsed_s"] = time.time() - started
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return got


def check(store: CampaignStore, first_attempt: int) -> dict:
    """From the store, the attempts from ``first_attempt`` on: MOUS held twice at once (two
    attempts of one uid overlapping; at two sites or one), attempts left open, and MOUS whose
    state does not follow from their last attempt."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(attempts.c.uid, attempts.c.site, attempts.c.started_at,
                                      attempts.c.ended_at, attempts.c.outcome)
                            .where(attempts.c.id >= first_attempt)
                            .order_by(attempts.c.uid, attempts.c.started_at,
                                      attempts.c.id)).all()
        states = dict(conn.execute(sa.select(mous.c.uid, mous.c.state).where(
            mous.c.uid.in_(sa.select(attempts.c.uid).where(
                attempts.c.id >= first_attempt)))).all())
    last: dict = {}
    sites = defaultdict(set)
    found = Counter()
    examples = []
    for row in rows:
        before = last.get(row.uid)
        if before is not None and (before.ended_at is None or before.ended_at > row.started_at):
            found["duplicates"] += 1
            found["at_two_sites"] += before.site != row.site
            examples.append([tuple(before), tuple(row)])
        found["open_attempts"] += row.ended_at is None
        last[row.uid] = row
        sites[row.uid].add(row.site)
    bad = sorted(uid for uid, row in last.items()
                 if states.get(uid) not in VALID.get(row.outcome, ()))
    return {"attempts": len(rows), "mous": len(last), "duplicates": found["duplicates"],
            "at_two_sites": found["at_two_sites"], "open_attempts": found["open_attempts"],
            "bad_states": len(bad), "bad_examples": [(uid, states.get(uid)) for uid in bad[:5]],
            "duplicate_examples": examples[:5],
            "moved_sites": sum(len(s) > 1 for s in sites.values()),
            "final_states": dict(Counter(states.values()))}


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def figures(got: dict, seconds: float) -> dict:
    """Rates and latencies of what ``load`` measured."""
    claims = got["claimers"]
    latencies = [t for data in claims.values() for t in data["latencies_s"]]
    polled = got["poller"]
    return {
        "seconds": seconds, "elapsed_s": got["elapsed_s"],
        "claims": sum(d["claims"] for d in claims.values()),
        "claims_per_s": sum(d["claims"] for d in claims.values()) / seconds,
        "empty_claims": sum(d["empty"] for d in claims.values()),
        "mous_claimed": sum(d["mous"] for d in claims.values()),
        "mous_per_s": sum(d["mous"] for d in claims.values()) / seconds,
        "claim_median_ms": _ms(latencies, 50), "claim_p95_ms": _ms(latencies, 95),
        "sites": {site: {key: value for key, value in data.items() if key != "latencies_s"}
                  | {"claim_median_ms": _ms(data["latencies_s"], 50)}
                  for site, data in sorted(claims.items())},
        "status_queries": len(polled["status_s"]),
        "status_per_s": len(polled["status_s"]) / seconds,
        "status_median_ms": _ms(polled["status_s"], 50),
        "status_p95_ms": _ms(polled["status_s"], 95),
        "site_queries": len(polled["site_s"]),
        "site_median_ms": _ms(polled["site_s"], 50), "site_p95_ms": _ms(polled["site_s"], 95),
        "loadavg_1min_max": max(got["loadavg"], default=float("nan")),
        "loadavg_1min_end": got["loadavg"][-1] if got["loadavg"] else float("nan"),
    }


def run(url: str, count: int, sites: list[str], seconds: float, repeat: int = 3,
        batch: int = 8, analyze: bool = True) -> dict:
    """Fill the store at ``url`` (an empty database), load it, check it, time the views
    (none when ``repeat`` is 0). Everything measured, as a JSON-ready dict."""
    store = CampaignStore.open(url)
    start = time.perf_counter()
    rows = bench_dashboard.fill(store, count)
    if analyze:
        # the planner's statistics, as autovacuum makes them within a minute or so of a
        # catalog import: without them the claim's plan is a scan and sort of the catalog
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    filled_s = time.perf_counter() - start
    with store.engine.connect() as conn:
        first = (conn.execute(sa.select(sa.func.max(attempts.c.id))).scalar() or 0) + 1
    loadavg_before = os.getloadavg()
    got = load(url, sites, seconds, batch)
    result = {"store": store.engine.dialect.name, "filled": rows, "fill_s": filled_s,
              "analyzed": analyze,
              "first_attempt": first, "loadavg_before": loadavg_before,
              "load": figures(got, seconds), "check": check(store, first)}
    result["views"] = bench_dashboard.time_views(store, repeat) if repeat else {}
    result["loadavg_after"] = os.getloadavg()
    store.close()
    return result


def report(result: dict) -> None:
    load_, check_ = result["load"], result["check"]
    filled = result["filled"]
    print(f"filled {filled['mous']:,} MOUS, {filled['attempts']:,} attempts, "
          f"{filled['stages']:,} stages in {result['fill_s']:.1f} s ({result['store']}"
          f"{', ANALYZE after' if result['analyzed'] else ', no ANALYZE'})")
    print(f"{len(load_['sites'])} claimers ({', '.join(load_['sites'])}) and 1 status poller "
          f"at once for {load_['seconds']:g} s (load average before: "
          f"{' '.join(f'{v:.2f}' for v in result['loadavg_before'])})")
    print(f"  claims          {load_['claims']:,} = {load_['claims_per_s']:.1f}/s "
          f"({load_['empty_claims']:,} empty); MOUS claimed {load_['mous_claimed']:,} = "
          f"{load_['mous_per_s']:.1f}/s; latency median {load_['claim_median_ms']:.1f} ms, "
          f"p95 {load_['claim_p95_ms']:.1f} ms")
    for site, data in load_["sites"].items():
        print(f"    {site:6} {data['claims']:,} claims, {data['mous']:,} MOUS: "
              f"{data.get('done', 0):,} done, {data.get('yielded', 0):,} yielded, "
              f"{data.get('failed', 0):,} failed; median {data['claim_median_ms']:.1f} ms")
    print(f"  status()        {load_['status_queries']:,} = {load_['status_per_s']:.1f}/s, "
          f"median {load_['status_median_ms']:.1f} ms, p95 {load_['status_p95_ms']:.1f} ms")
    print(f"  site query      {load_['site_queries']:,} (views.site_view), median "
          f"{load_['site_median_ms']:.1f} ms, p95 {load_['site_p95_ms']:.1f} ms")
    print(f"  load average    1 min during the run: max {load_['loadavg_1min_max']:.2f}, "
          f"at its end {load_['loadavg_1min_end']:.2f} ({os.cpu_count()} cores)")
    print(f"  duplicates      {check_['duplicates']} (MOUS held twice at once; at two sites: "
          f"{check_['at_two_sites']}); open attempts {check_['open_attempts']}; "
          f"bad states {check_['bad_states']}; over {check_['attempts']:,} attempts of "
          f"{check_['mous']:,} MOUS ({check_['moved_sites']:,} moved site after a retry)")
    for pair in check_["duplicate_examples"]:
        print(f"    held twice: {pair}")
    for uid, state in check_["bad_examples"]:
        print(f"    bad state: {uid} {state}")
    if result["views"]:
        print("views on this store, after the load:")
        bench_dashboard.print_views(result["views"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=os.environ.get("ARIHPC_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server URL: a fresh database is made on it "
                             "(default: $ARIHPC_TEST_POSTGRES_URL)")
    parser.add_argument("--mous", type=int, default=100_000)
    parser.add_argument("--claimers", type=int, default=3, help="sites claiming at once")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="times each view is timed")
    parser.add_argument("--batch", type=int, default=8, help="MOUS asked for in one claim")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="do not drop the database after")
    parser.add_argument("--no-analyze", action="store_true",
                        help="no ANALYZE after the fill (the claims then run without statistics)")
    args = parser.parse_args()
    if not args.store or sa.make_url(args.store).get_backend_name() != "postgresql":
        parser.error("--store: a PostgreSQL URL is needed (or $ARIHPC_TEST_POSTGRES_URL)")
    sites = [SITES[k] if k < len(SITES) else f"site{k}" for k in range(args.claimers)]
    url = create_database(args.store)
    try:
        result = run(url, args.mous, sites, args.seconds, args.repeat, args.batch,
                     not args.no_analyze)
    finally:
        if args.keep:
            print(f"kept {sa.make_url(url).render_as_string(hide_password=True)}")
        else:
            drop_database(url)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 1 if result["check"]["duplicates"] or result["check"]["bad_states"] else 0


if __name__ == "__main__":
    sys.exit(main())
