#!/usr/bin/env python3
"""Benchmark: `arihpc plan`'s simulation, 1,000 campaigns of 7,000 MOUS (the study's size).

Times the planner (arihpc/planning/simulation.py) for the study's single machine, its 7 machines
with 20 % re-runs, and the three ARI-L sites with and without stage resume, each over the
same drawn workload. Goal: 1,000 simulated campaigns of 7,000 MOUS in under 10 s.

    python scripts/bench_plan.py [--runs N] [--mous N] [--seed S]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np

from arihpc.planning import simulation as sim
from arihpc.sites.profile import load_profile

GOAL_S = 10.0


def cases() -> list[tuple[str, list[sim.Pool], sim.Assumptions]]:
    sites = [p for name in ("eso", "itarc", "mup") for p in sim.site_pools(load_profile(name))]
    return [
        ("1 machine, no failures", sim.machines(1), sim.Assumptions.from_config(failures=False)),
        ("7 machines, 20 % re-runs", sim.machines(7),
         sim.Assumptions.from_config(failures=False, reruns=0.2)),
        ("eso,itarc,mup, resume", sites, sim.Assumptions.from_config()),
        ("eso,itarc,mup, no resume", sites, sim.Assumptions.from_config(resume=False)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--mous", type=int, default=7000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{datetime.date.today()}  {platform.node()}: {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"{args.runs:,} simulated campaigns of {args.mous:,} MOUS each")
    for label, pools, assumptions in cases():
        start = time.perf_counter()
        workload = sim.study_workload(np.random.default_rng(args.seed), args.runs, args.mous)
        plan = sim.simulate(workload, pools, assumptions, args.seed)
        took = time.perf_counter() - start
        summary = plan.summary()
        print(f"  {label:<28} {took:6.2f} s  {'met' if took < GOAL_S else 'NOT met'}   "
              f"duration median {summary['duration_years']['median']:.2f} y, p90 "
              f"{summary['duration_years']['p90']:.2f} y; lost CPU "
              f"{summary['lost_cpu_h']['median']:,.0f} core-h; cuts "
              f"{summary['walltime_cuts']['median']:.0f}")


if __name__ == "__main__":
    main()
