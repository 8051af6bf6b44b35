#!/usr/bin/env python3
"""Makespan and core-seconds of a small emulated campaign on the local SLURM, three ways.

    scripts/local-slurm.sh start        # SLURM_CONF: the one it prints, or its default
    .venv/bin/python scripts/bench_campaign.py [--mous 24] [--total-core-s 480] [--seed 5]
        [--walltime 00:01:00] [--order size-desc|size-asc] [--only STRATEGY] [--keep DIR]

One workload: ``--mous`` MOUS with raw sizes drawn (fixed seed) from the ARI study's
distribution (lognormal, median 13 GB, sigma 1.35 in ln: its long tail), the emulator's CPU per
GB scaled so the whole campaign is ``--total-core-s`` of CPU, the largest MOUS capped at 2.5
walltimes of work, so large MOUS outlive a job. Each MOUS is the same four emulator stages
(fetch, restore, image, export) for all three strategies, run one after another:

1. study: the ARI study's method, a driver that submits one batch job per MOUS asking for the
   whole node, keeps 2 jobs in the queue, no resume, one retry from scratch after a cut;
2. dask: plain dask-jobqueue, ``client.map`` of a whole-MOUS function over one-core jobs with
   adaptive scaling; a walltime kill restarts the task from its beginning, until dask's
   allowed-failures make it err (KilledWorker);
3. arihpc: ``arihpc run`` (its settings: bench_campaign_runs.arihpc_files).

The same priority order for all (``--order``, default the largest first: with a handful of
MOUS the makespan is set by when the largest starts; arihpc is told the same with
``ordering.keys``). Measured the same way for all:

- allocated core-s: sum over the strategy's SLURM jobs of (end - start) x CPUs, from the
  cluster's jobcomp/filetxt log (scripts/local-slurm.sh writes it; there is no sacct);
- useful / lost core-s: every emulator stage run appends its CPU to a trace (``--trace``);
  useful is, for each completed MOUS, the CPU of the last completed run of each stage; lost is
  all other traced CPU (runs cut, runs repeated from scratch, MOUS never completed);
- makespan: from the strategy's first job submission to its last stage run ending (the last MOUS
  done, or the last run of one given up; if a MOUS never ran, when the strategy ended);
- lower bound: max(total work / CPUs of the partition, longest MOUS);
- where the allocation went: each job's core-s split into start (to its first stage run),
  stages, between them, tail (after its last), and jobs that ran no stage (the trace names
  each run's job).

Goals (arihpc): makespan <= 0.6 of the study's, lost <= 10 % of the study's, useful/allocated
>= 0.9, makespan <= 1.2 x the lower bound (a makespan goal needs every MOUS done). It prints
the table and each goal met or not; the exit status is 0 whether or not a goal is met,
non-zero only when something broke. Other work on the machine slows the stages: each strategy's
line says what share of a CPU its stages got while they ran.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_campaign_runs import STRATEGIES, Mous, Setup, wait_jobs_gone  # noqa: E402
from bench_campaign_trace import figures, slurm_cores, slurm_jobcomp  # noqa: E402

from arihpc.sites.batch import duration_s  # noqa: E402

STAGES = 4
CAP_WALLTIMES = 2.5         # the largest MOUS: at most this many walltimes of work
EMULATOR = {"memory-mb-per-gb": 1, "output-mb-per-gb": 0.01}
GOALS = {"makespan": 0.6, "lost": 0.10, "useful": 0.9, "bound": 1.2}


@dataclass(frozen=True)
class Workload:
    mous: tuple[Mous, ...]          # in priority order
    cpu_s_per_gb: float             # per stage
    total_s: float
    longest_s: float


def make_workload(count: int, total_s: float, seed: int, walltime_s: float,
                  order: str) -> Workload:
    """Sizes from the study's distribution; CPU per GB such that the work (capped at
    CAP_WALLTIMES walltimes per MOUS) adds up to ``total_s``."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.normal(np.log(13.0), 1.35, count))
    cap_s = CAP_WALLTIMES * walltime_s
    if total_s >= count * cap_s:
        raise SystemExit(f"--total-core-s {total_s:g} is more than {count} MOUS of at most "
                         f"{cap_s:g} s each")
    low, high = 0.0, cap_s / STAGES / sizes.min()
    for _ in range(100):            # bisection: the capped total grows with the CPU per GB
        rate = (low + high) / 2
        if np.minimum(STAGES * rate * sizes, cap_s).sum() < total_s:
            low = rate
        else:
            high = rate
    size_bytes = np.rint(np.minimum(sizes, cap_s / (STAGES * rate)) * 1e9).astype(np.int64)
    mous = [Mous(f"uid://A001/X30/X{i:x}", int(b)) for i, b in enumerate(size_bytes, 1)]
    mous.sort(key=lambda m: (-m.size_bytes if order == "size-desc" else m.size_bytes, m.uid))
    work = [STAGES * rate * m.size_gb for m in mous]
    return Workload(tuple(mous), rate, sum(work), max(work))


def run_strategy(name: str, workload: Workload, root: Path, args, cores: int) -> dict:
    """Run one strategy and measure it from its trace and the jobcomp log."""
    run, job_prefix = STRATEGIES[name]
    setup = Setup(workload.mous, {"cpu-s-per-gb": workload.cpu_s_per_gb, **EMULATOR},
                  args.walltime, cores, root / name, args.timeout)
    setup.folder.mkdir(parents=True, exist_ok=True)
    jobcomp = slurm_jobcomp()
    offset = jobcomp.stat().st_size if jobcomp.exists() else 0
    print(f"{name}: running ...", flush=True)
    started = time.time()
    completed = run(setup)
    ended = time.time()
    wait_jobs_gone(job_prefix)
    time.sleep(1)       # the last job's line reaches the log
    result = figures(setup.trace, jobcomp, offset, job_prefix,
                     [m.disk for m in workload.mous], completed, started, ended)
    print(f"{name}: {len(completed)}/{len(workload.mous)} MOUS done in "
          f"{result['makespan']:.0f} s ({time.time() - started:.0f} s with set-up); "
          f"{result['jobs']} batch jobs, {result['runs']} stage runs of which "
          f"{result['killed']} killed, running {result['busy']:.0f} s "
          f"({result['busy'] / max(1e-9, result['allocated']):.0%} of the allocated core-s) "
          f"with {result['cpu_share']:.0%} of a CPU (the rest went to other load)", flush=True)
    split = result["split"]
    print(f"{name}: allocated core-s by part of a job: " + ", ".join(
        f"{part} {seconds:.0f}" for part, seconds in split.items()) + " (start: job start to "
          "its first stage; between: gaps between stages; tail: last stage to job end; "
          "empty: jobs that ran no stage)", flush=True)
    return result


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(results: dict[str, dict], workload: Workload, cores: int) -> None:
    """The table, the lower bound and the goals."""
    bound = max(workload.total_s / cores, workload.longest_s)
    ours = results.get("arihpc")
    print(f"\n{'strategy':9} {'makespan s':>10} {'done':>6} {'alloc core-s':>12} "
          f"{'useful':>7} {'lost':>7} {'useful/alloc':>12} {'arihpc/this':>11} "
          f"{'arihpc/this':>11} {'makespan':>9}")
    print(f"{'':9} {'':>10} {'':>6} {'':>12} {'':>7} {'':>7} {'':>12} "
          f"{'makespan':>11} {'lost':>11} {'/ bound':>9}")
    for name, r in results.items():
        print(f"{name:9} {r['makespan']:10.0f} {r['completed']:3d}/{len(workload.mous):<2d} "
              f"{r['allocated']:12.0f} {r['useful']:7.0f} {r['lost']:7.0f} "
              f"{ratio(r['useful'], r['allocated']):>12} "
              f"{ratio(ours and ours['makespan'], r['makespan']):>11} "
              f"{ratio(ours and ours['lost'], r['lost']):>11} {r['makespan'] / bound:9.2f}")
    print(f"\nlower bound {bound:.0f} s = max(total work {workload.total_s:.0f} core-s / "
          f"{cores} CPUs, longest MOUS {workload.longest_s:.0f} s)")
    study = results.get("study")
    # A makespan counts only if arihpc did the whole campaign.
    whole = ours and ours["completed"] == len(workload.mous)
    checks = {
        f"arihpc makespan <= {GOALS['makespan']:g} x the study's":
            ours and study and whole and ours["makespan"] <= GOALS["makespan"] * study["makespan"],
        f"arihpc lost core-s <= {GOALS['lost']:.0%} of the study's":
            ours and study and ours["lost"] <= GOALS["lost"] * study["lost"],
        f"arihpc useful/allocated >= {GOALS['useful']:g}":
            ours and ours["useful"] >= GOALS["useful"] * ours["allocated"],
        f"arihpc makespan <= {GOALS['bound']:g} x the lower bound":
            ours and whole and ours["makespan"] <= GOALS["bound"] * bound,
    }
    for goal, met in checks.items():
        verdict = "n/a (not run)" if met is None else "met" if met else "NOT met"
        print(f"goal: {goal:45} {verdict}")
    if ours and ours["completed"] < len(workload.mous):
        print(f"note: arihpc completed only {ours['completed']} of {len(workload.mous)} MOUS")


def header(workload: Workload, args, cores: int) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_campaign {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()} "
          f"({platform.platform()}, {os.cpu_count()} CPUs, load {load}); SLURM partition "
          f"{cores} CPUs, walltime {args.walltime}")
    sizes = sorted((m.size_gb for m in workload.mous), reverse=True)
    print(f"workload: {len(sizes)} MOUS, seed {args.seed}, {sum(sizes):.0f} GB (median "
          f"{np.median(sizes):.1f} GB, largest {sizes[0]:.0f} GB), emulator "
          f"{workload.cpu_s_per_gb:.4f} CPU s per GB per stage: {workload.total_s:.0f} core-s, "
          f"largest MOUS {workload.longest_s:.0f} s, order {args.order}")


def use_local_slurm() -> None:
    """Without SLURM_CONF, the cluster of scripts/local-slurm.sh (its state directory)."""
    if os.environ.get("SLURM_CONF"):
        return
    conf = Path(os.environ.get("ARIHPC_SLURM_DIR", "/tmp/arihpc-slurm")) / "slurm.conf"
    if not conf.exists():
        raise SystemExit("no SLURM: run scripts/local-slurm.sh start (or export SLURM_CONF)")
    os.environ["SLURM_CONF"] = str(conf)      # for sbatch, squeue and the jobs alike


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mous", type=int, default=24)
    parser.add_argument("--total-core-s", type=float, default=480.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--walltime", default="00:01:00", help="of every batch job")
    parser.add_argument("--order", choices=("size-desc", "size-asc"), default="size-desc")
    parser.add_argument("--only", choices=list(STRATEGIES), action="append",
                        help="run only this strategy (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds a strategy may take before it is given up")
    parser.add_argument("--keep", type=Path, help="keep every file in this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("bench_campaign").setLevel(logging.INFO)
    use_local_slurm()
    cores = slurm_cores()
    workload = make_workload(args.mous, args.total_core_s, args.seed,
                             duration_s(args.walltime) or 60, args.order)
    header(workload, args, cores)
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        results = {name: run_strategy(name, workload, root, args, cores)
                   for name in STRATEGIES if not args.only or name in args.only}
    report(results, workload, cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
