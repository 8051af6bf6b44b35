"""Measures of scripts/bench_campaign.py, the same for every strategy: core-seconds allocated
(SLURM's jobcomp/filetxt log), useful and lost (the emulator's trace), makespan."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arihpc.sites.batch import parse_jobcomp  # noqa: E402
from arihpc.sites.command import run_command  # noqa: E402


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a dict."""
    text = run_command(["scontrol", "show", "config"], timeout=30).stdout
    return dict(re.findall(r"^(\w+)\s+=\s+(.*?)\s*$", text, flags=re.M))


def slurm_jobcomp() -> Path:
    """The cluster's jobcomp/filetxt log, where every finished job gets a line."""
    config = slurm_config()
    if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
        raise SystemExit("this SLURM logs no finished jobs (JobCompType "
                         f"{config.get('JobCompType')}): restart it with scripts/local-slurm.sh "
                         "of this tree, which sets JobCompType=jobcomp/filetxt")
    return Path(config["JobCompLoc"])


def slurm_cores() -> int:
    """CPUs of every node of the cluster's partitions (the local SLURM: one node, nproc)."""
    text = run_command(["sinfo", "--noheader", "--format=%D %c"], timeout=30).stdout
    return sum(int(nodes) * int(cpus) for nodes, cpus in
               (line.split() for line in text.splitlines() if line.strip()))


def read_trace(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def useful_cpu(runs: list[dict], completed: set[str]) -> float:
    """For each completed MOUS, the CPU of the last completed run of each of its stages."""
    last: dict[tuple[str, str], dict] = {}
    for run in runs:
        if run["outcome"] == "done" and run["mous"] in completed:
            key = (run["mous"], run["stage"])
            if key not in last or run["time"] >= last[key]["time"]:
                last[key] = run
    return sum(run["cpu_s"] for run in last.values())


def job_split(jobs: list, runs: list[dict]) -> dict[str, float]:
    """Where each job's allocated core-s went, summed over the jobs: ``start`` from the job's
    start to its first stage run, ``stages`` running stages, ``between`` between them,
    ``tail`` from its last stage run to the job's end, ``empty`` jobs that ran no stage.
    Runs name their job (the emulator's trace); the jobcomp log's times are whole seconds."""
    by_job: dict[str, list[dict]] = {}
    for run in runs:
        by_job.setdefault(str(run.get("job", "")), []).append(run)
    split = dict.fromkeys(("start", "stages", "between", "tail", "empty"), 0.0)
    for job in jobs:
        if job.start is None or job.end is None:
            continue
        mine = by_job.get(job.job_id, [])
        if not mine:
            split["empty"] += job.core_s
            continue
        first = min(run["time"] - run.get("wall_s", 0) for run in mine)
        last = max(run["time"] for run in mine)
        stages = sum(run.get("wall_s", 0) for run in mine)
        split["start"] += max(0.0, first - job.start) * job.cpus
        split["tail"] += max(0.0, job.end - last) * job.cpus
        split["stages"] += stages
        split["between"] += max(0.0, (last - first) * job.cpus - stages)
    return split


def figures(trace: Path, jobcomp: Path, offset: int, job_prefix: str, mous: list[str],
            completed: set[str], started: float, ended: float) -> dict:
    """One strategy's row: makespan, MOUS completed, allocated, useful and lost core-s.

    ``offset``: the jobcomp log's size when the strategy started (earlier lines are other
    runs'); ``started``, ``ended``: the wall clock when the strategy started (the makespan's
    start if no job was logged) and returned (the end of a MOUS that never ran)."""
    with open(jobcomp, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    jobs = [job for job in parse_jobcomp(text) if job.name.startswith(job_prefix)]
    runs = read_trace(trace)
    useful = useful_cpu(runs, completed)
    traced = sum(run["cpu_s"] for run in runs)
    busy = sum(run.get("wall_s", 0) for run in runs)
    submitted = [job.submit for job in jobs if job.submit is not None]
    first = min(submitted) if submitted else started
    last = max((run["time"] for run in runs), default=first)
    if set(mous) - {run["mous"] for run in runs}:
        last = max(last, ended)         # given up only when the strategy ended
    return {"makespan": last - first, "completed": len(completed), "jobs": len(jobs),
            "allocated": sum(job.core_s for job in jobs), "useful": useful,
            "lost": traced - useful, "runs": len(runs),
            "killed": sum(1 for run in runs if run["outcome"] == "killed"),
            # seconds the stages ran, and the CPU they got per second: 1 on a quiet machine
            "busy": busy, "cpu_share": traced / max(1e-9, busy), "split": job_split(jobs, runs)}
