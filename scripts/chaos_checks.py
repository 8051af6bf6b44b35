"""The invariants of scripts/chaos_campaign.py, checked after the campaign from what it left:
the store, the checkpoints and lock files in the work directories, the emulator's trace of
every stage run, the process table, the batch queue and SLURM's jobcomp log."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import sqlalchemy as sa
from bench_campaign_trace import read_trace, slurm_jobcomp
from chaos_faults import FAULTS, Chaos

from arihpc.runner.workdir import LOCK_NAME, read_checkpoint
from arihpc.sites.batch import parse_jobcomp
from arihpc.sites.command import run_command
from arihpc.store.schema import TOTALS_COLUMNS, attempts, mous, refresh_totals

# What names a stage process of the run (with DIR in its argv), or its guard.
STAGE_MARKS = ("arihpc.runner.fetch", "arihpc.payloads.emulator", "runner/guard.py")
EPSILON_S = 0.05        # trace and checkpoint times come from different processes' clocks


def runs_by_stage(trace: Path) -> dict[tuple[str, str], list[dict]]:
    """Every traced stage run, as (MOUS folder, stage) -> runs with their start and end."""
    runs = defaultdict(list)
    for run in read_trace(trace):
        run["start"] = run["time"] - run["wall_s"]
        runs[(run["mous"], run["stage"])].append(run)
    return runs


def run_twice(runs: dict, work: Path, sites: tuple[str, ...]) -> list[str]:
    """Stages started again, at any site, after a checkpoint of theirs was written (the
    checkpoint records the run it keeps: any run starting after that one ended ran a
    checkpointed stage again, in the same work directory or, thrown away, at another site)."""
    found = []
    for (name, stage), stage_runs in runs.items():
        for site in sites:
            check = read_checkpoint(work / site / name, stage)
            again = [r for r in stage_runs
                     if check is not None and r["start"] > check["end"] + EPSILON_S]
            if again:
                found.append(f"{name} {stage} (checkpoint at {site}): {len(again)} run(s) "
                             "after it")
    return found


def two_places(runs: dict) -> list[str]:
    """MOUS with two stage runs at the same time (two runners on one MOUS)."""
    by_mous = defaultdict(list)
    for (name, _), stage_runs in runs.items():
        by_mous[name] += stage_runs
    found = []
    for name, stage_runs in by_mous.items():
        stage_runs.sort(key=lambda r: r["start"])
        for before, after in zip(stage_runs, stage_runs[1:]):
            if after["start"] < before["time"] - EPSILON_S:
                found.append(f"{name}: {before['stage']} and {after['stage']} overlap")
    return found


def overlapping_attempts(conn) -> list[str]:
    """MOUS whose attempts in the store overlap in time."""
    rows = conn.execute(sa.select(attempts.c.uid, attempts.c.started_at, attempts.c.ended_at)
                        .order_by(attempts.c.uid, attempts.c.started_at)).all()
    found = []
    for before, after in zip(rows, rows[1:]):
        if before.uid == after.uid and (before.ended_at is None
                                        or after.started_at < before.ended_at - EPSILON_S):
            found.append(f"{before.uid}: attempts from {before.started_at:.1f} overlap")
    return found


def totals_differing(conn) -> list[str]:
    """MOUS whose totals kept in their row (schema.TOTALS_COLUMNS, written with each attempt
    and stage run under the faults) differ from those recomputed from the rows themselves."""
    names = [name for name, _ in TOTALS_COLUMNS]

    def kept() -> dict:
        return {row[0]: row[1:] for row in conn.execute(
            sa.select(mous.c.uid, *(mous.c[n] for n in names)))}
    before = kept()
    with conn.begin_nested() if conn.in_transaction() else conn.begin() as work:
        refresh_totals(conn)
        after = kept()
        work.rollback()                 # a check: the store is left as the run left it
    found = []
    for uid, values in before.items():
        attempts_kept, *rest = values
        again, *rest_again = after[uid]
        same = (attempts_kept or 0) == (again or 0) and all(
            a == b or (isinstance(a, float) and b is not None and abs(a - b) < 1e-6 * max(1, b))
            for a, b in zip(rest, rest_again))
        if not same:
            found.append(f"{uid}: kept {values}, from its rows {after[uid]}")
    return found


def orphans(folder: Path, sites: tuple[str, ...]) -> list[str]:
    """Processes of the run still alive: stages (their argv names DIR) and anything a batch job
    of our sites started (worker, xvfb-run, its Xvfb: the job script exports ARIHPC_SITE and
    they inherit it), in a job of our SLURM: another run on this machine may use the same
    site names with its own SLURM."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        text = " ".join(process.info["cmdline"] or [])
        stage = str(folder) in text and any(mark in text for mark in STAGE_MARKS)
        if process.info["pid"] not in ours and (stage or _of_our_jobs(process, sites)):
            left.append(f"{process.info['pid']}: {text[:120]}")
    return left


def _of_our_jobs(process: psutil.Process, sites: tuple[str, ...]) -> bool:
    try:
        env = process.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False                # gone, or not ours to read (we run as root: not ours)
    return env.get("ARIHPC_SITE") in sites and env.get("SLURM_CONF") == os.environ.get(
        "SLURM_CONF") and "SLURM_JOB_ID" in env


def live_locks(work: Path) -> list[str]:
    """Lock files whose holder is still alive. A lock left by a killed runner stays on disk by
    design (nothing runs to remove it); the next runner of that MOUS replaces it."""
    found = []
    for path in work.glob(f"*/*/{LOCK_NAME}"):
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                            # being written or removed: not held
        if holder.get("host") != socket.gethostname() or psutil.pid_exists(holder["pid"]):
            found.append(f"{path}: {holder.get('owner')} pid {holder.get('pid')}")
    return found


def jobs_left(sites: tuple[str, ...]) -> list[str]:
    out = run_command(["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED",
                       "-o", "%i %j %T"], timeout=30).stdout
    return [line for line in out.splitlines()
            if any(line.split()[1].startswith(f"arihpc-{site}-") for site in sites)]


def batch_jobs(sites: tuple[str, ...], jobcomp_offset: int) -> tuple[list, dict[str, str]]:
    """The run's ended batch jobs (SLURM's jobcomp log from ``jobcomp_offset``) and the site
    of each job id."""
    with open(slurm_jobcomp(), "rb") as log:
        log.seek(jobcomp_offset)
        jobs = parse_jobcomp(log.read().decode("utf-8", "replace"))
    return jobs, {job.job_id: site for job in jobs for site in sites
                  if job.name.startswith(f"arihpc-{site}-")}


def site_figures(conn, runs: dict, sites: tuple[str, ...], jobs: list,
                 site_of_job: dict[str, str], seconds: float) -> dict:
    """Per site: MOUS done, MOUS/s, allocated core-s (jobcomp), useful core-s (the CPU of
    the completed stage runs in its jobs), and their ratio."""
    useful = Counter()
    for stage_runs in runs.values():
        for run in stage_runs:
            if run["outcome"] == "done" and run.get("job") in site_of_job:
                useful[site_of_job[run["job"]]] += run["cpu_s"]
    done = dict(conn.execute(sa.select(mous.c.site, sa.func.count()).where(
        mous.c.state == "done").group_by(mous.c.site)).all())
    figures = {}
    for site in sites:
        allocated = sum(job.core_s for job in jobs if site_of_job.get(job.job_id) == site)
        figures[site] = {"done": done.get(site, 0), "mous_per_s": done.get(site, 0) / seconds,
                         "jobs": sum(1 for j in jobs if site_of_job.get(j.job_id) == site),
                         "allocated_core_s": allocated, "useful_core_s": useful[site],
                         "useful_per_allocated": useful[site] / allocated if allocated else 0}
    return figures


def check_campaign(url: str, folder: Path, uids: list[str], sites: tuple[str, ...],
                   chaos: Chaos, exits: list, began: float, ended: float, finished: bool,
                   jobcomp_offset: int = 0) -> dict:
    """Every invariant and figure of the run; ``ok`` when all invariants hold."""
    runs = runs_by_stage(folder / "trace.jsonl")
    jobs, site_of_job = batch_jobs(sites, jobcomp_offset)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        states = Counter(dict(conn.execute(sa.select(mous.c.state, sa.func.count()).where(
            mous.c.selected.is_(True)).group_by(mous.c.state)).all()))
        classes = Counter(dict(conn.execute(sa.select(mous.c.error_class, sa.func.count())
                                            .where(mous.c.state == "failed")
                                            .group_by(mous.c.error_class)).all()))
        ends = Counter({f"{row.outcome} {row.error_class or ''}".strip(): row.count
                        for row in conn.execute(sa.select(
                            attempts.c.outcome, attempts.c.error_class,
                            sa.func.count().label("count")).group_by(
                            attempts.c.outcome, attempts.c.error_class))})
        still_open = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
            attempts.c.ended_at.is_(None))).scalar()
        overlaps = overlapping_attempts(conn)
        wrong_totals = totals_differing(conn)
        per_site = site_figures(conn, runs, sites, jobs, site_of_job, ended - began)
    engine.dispose()
    faults = Counter(kind for _, kind, _ in chaos.done)
    checks = {
        "campaign finished before the timeout": (0 if finished else 1, []),
        "MOUS lost (selected, not done, not failed)":
            (sum(states.values()) - states["done"] - states["failed"], []),
        "attempts left open": (still_open, []),
        "stages run twice (started after their checkpoint)":
            _listed(run_twice(runs, folder / "work", sites)),
        "MOUS in two places at once (stage runs)": _listed(two_places(runs)),
        "MOUS in two places at once (store attempts)": _listed(overlaps),
        "MOUS totals that differ from their attempts and stage runs": _listed(wrong_totals),
        "orphan processes left": _listed(orphans(folder, sites)),
        "batch jobs left": _listed(jobs_left(sites)),
        "lock files held by a live process": _listed(live_locks(folder / "work")),
        "orchestrator runs that ended in error": _listed(
            [f"{site}: exit {status} ({log})" for site, status, log in exits
             if status not in (0, -9)]),
        "fault kinds never injected": _listed(sorted(set(FAULTS) - set(faults))),
    }
    return {"ok": all(count == 0 for count, _ in checks.values()),
            "checks": {name: {"count": count, "examples": examples[:5]}
                       for name, (count, examples) in checks.items()},
            "mous": len(uids), "done": states["done"], "failed": states["failed"],
            "failed_by_class": dict(classes), "attempts": dict(ends), "faults": dict(faults),
            "fault_log": [f"{t - began:.1f} s {kind}: {what}" for t, kind, what in chaos.done],
            "seconds": ended - began, "mous_per_s": states["done"] / (ended - began),
            "sites": per_site,
            "stage_runs": sum(len(r) for r in runs.values()),
            "stage_runs_killed": sum(1 for r in runs.values() for x in r
                                     if x["outcome"] == "killed")}


def ends_sorted(counts: dict) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _listed(found: list[str]) -> tuple[int, list[str]]:
    return len(found), found


def print_table(figures: dict) -> None:
    """The invariants and figures as one plain-text table."""
    print(f"\n{'invariant':58} {'found':>7}  must be 0")
    for name, check in figures["checks"].items():
        mark = "ok" if check["count"] == 0 else "FAILED"
        print(f"{name:58} {check['count']:7d}  {mark}")
        for example in check["examples"]:
            print(f"    {example}")
    print(f"\nMOUS {figures['mous']}: done {figures['done']}, failed {figures['failed']} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(figures['failed_by_class'].items()))})")
    print("attempts: " + ", ".join(f"{k} {v}" for k, v in ends_sorted(figures["attempts"])))
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(figures['faults'].items())))
    print(f"stage runs {figures['stage_runs']} (cut by a kill: {figures['stage_runs_killed']}); "
          f"{figures['seconds']:.0f} s, {figures['mous_per_s']:.2f} MOUS/s done")
    print(f"\n{'site':10} {'done':>6} {'MOUS/s':>7} {'jobs':>5} {'alloc core-s':>12} "
          f"{'useful core-s':>13} {'useful/alloc':>12}")
    for site, row in figures["sites"].items():
        print(f"{site:10} {row['done']:6d} {row['mous_per_s']:7.3f} {row['jobs']:5d} "
              f"{row['allocated_core_s']:12.0f} {row['useful_core_s']:13.1f} "
              f"{row['useful_per_allocated']:12.3f}")
    print("\n" + ("all invariants hold" if figures["ok"] else "INVARIANTS BROKEN"))
