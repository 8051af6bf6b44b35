"""The three strategies of scripts/bench_campaign.py, each on the same workload and local SLURM.

- ``study``: the ARI study's own method, a driver submitting one batch job per MOUS that
  reserves a whole node, keeping N jobs in the queue, no resume, one retry from scratch.
- ``dask``: plain dask-jobqueue, ``client.map`` of a whole-MOUS function with adaptive scaling.
- ``arihpc``: ``arihpc run`` on a site profile made from site-configs/ci-slurm.yaml.

Each returns the MOUS it completed (their work-directory names). Every stage is the same
command of the emulator (arihpc.runner.plans.emulator_plan), tracing its CPU to one file.
The dask workers import ``whole_mous`` from this module: the job prologue puts this folder
on their PYTHONPATH.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arihpc.mous import disk_name  # noqa: E402
from arihpc.runner.plans import MousTask, emulator_plan  # noqa: E402
from arihpc.sites.batch import SQUEUE_ARGV, JobState, parse_squeue  # noqa: E402
from arihpc.sites.command import run_command  # noqa: E402

log = logging.getLogger("bench_campaign")
ACTIVE = (JobState.PENDING, JobState.RUNNING, JobState.COMPLETING)
STAGE_TIMEOUT_S = 3600.0
MARGIN_S = 2            # arihpc runner.walltime-margin-s


@dataclass(frozen=True)
class Mous:
    uid: str
    size_bytes: int

    @property
    def disk(self) -> str:
        return disk_name(self.uid)

    @property
    def size_gb(self) -> float:
        return self.size_bytes / 1e9        # as arihpc's orchestrator computes it


@dataclass(frozen=True)
class Setup:
    """What every strategy shares: the MOUS in priority order, the emulator's options, the
    batch limits, and this strategy's own folder and trace file."""

    mous: tuple[Mous, ...]
    options: dict                   # emulator payload options (without the trace)
    walltime: str                   # HH:MM:SS of every batch job
    cores: int                      # CPUs of the SLURM partition
    folder: Path
    timeout_s: float

    @property
    def trace(self) -> Path:
        return self.folder / "trace.jsonl"

    def stages(self, mous: Mous) -> list[list[str]]:
        """The four emulator commands of one MOUS, as arihpc's emulator payload builds them."""
        task = MousTask(mous.uid, self.folder / "work" / mous.disk, "emulator", mous.size_gb,
                        options={**self.options, "trace": str(self.trace)})
        return [stage.argv for stage in emulator_plan(task)]


def active_jobs(name: str) -> set[str]:
    """Ids of this job name's jobs still pending, running or completing."""
    jobs = parse_squeue(run_command(SQUEUE_ARGV, timeout=30).stdout)
    return {job.job_id for job in jobs if job.name == name and job.state in ACTIVE}


def wait_jobs_gone(prefix: str, timeout_s: float = 120) -> None:
    """Wait until no job whose name starts with ``prefix`` is in the queue (so every one of
    them has its line in the jobcomp log)."""
    end = time.time() + timeout_s
    while time.time() < end:
        jobs = parse_squeue(run_command(SQUEUE_ARGV, timeout=30).stdout)
        if not any(job.name.startswith(prefix) and job.state in ACTIVE for job in jobs):
            return
        time.sleep(1)
    raise RuntimeError(f"jobs named {prefix}* still in the queue after {timeout_s:.0f} s")


# --- 1. the study's method ---

def study_script(setup: Setup, mous: Mous, name: str) -> Path:
    """One MOUS's batch script: the whole node, the four stages from scratch, a DONE marker."""
    work = setup.folder / "work" / mous.disk
    (setup.folder / "logs").mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/bash", f"#SBATCH -J {name}", f"#SBATCH -c {setup.cores}",
             f"#SBATCH -t {setup.walltime}", f"#SBATCH -o {setup.folder}/logs/%x-%j.out",
             "set -e", f"rm -rf {shlex.quote(str(work))}",
             f"mkdir -p {shlex.quote(str(work))}", f"cd {shlex.quote(str(work))}",
             *(shlex.join(argv) for argv in setup.stages(mous)),
             f"touch {shlex.quote(str(work))}.DONE"]
    script = setup.folder / "scripts" / f"{mous.disk}.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("\n".join(lines) + "\n")
    return script


def run_study(setup: Setup, name: str = "bench-study", depth: int = 2,
              tries: int = 2) -> set[str]:
    """Keep ``depth`` jobs queued, one MOUS each; a MOUS cut (no DONE) runs once more from
    scratch, next in line; after ``tries`` cuts it is given up."""
    pending, running = deque(setup.mous), {}
    count: dict[str, int] = {}
    done: set[str] = set()
    end = time.time() + setup.timeout_s
    while (pending or running) and time.time() < end:
        while pending and len(running) < depth:
            mous = pending.popleft()
            out = run_command(["sbatch", "--parsable", str(study_script(setup, mous, name))])
            running[out.stdout.strip().split(";")[0]] = mous
            count[mous.disk] = count.get(mous.disk, 0) + 1
        time.sleep(1)
        active = active_jobs(name)
        for job_id in [j for j in running if j not in active]:
            mous = running.pop(job_id)
            if (setup.folder / "work" / f"{mous.disk}.DONE").exists():
                done.add(mous.disk)
            elif count[mous.disk] < tries:
                pending.appendleft(mous)
            else:
                log.info("study: %s cut %d times, given up", mous.uid, tries)
    if running:
        run_command(["scancel", *running], check=False)
    return done


# --- 2. plain dask-jobqueue ---

def whole_mous(stages: list[list[str]]) -> str:
    """The four stages of one MOUS back to back, in a dask worker. A stage killed by SIGTERM
    (the walltime) means the worker dies with it: wait for that, so dask reschedules the task
    as it would a real CASA run lost with its node, rather than seeing it fail."""
    for argv in stages:
        result = run_command(argv, timeout=STAGE_TIMEOUT_S, check=False)
        if result.returncode in (143, -15):
            time.sleep(120)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[3:5]} exited {result.returncode}: {result.stdout[-500:]}")
    return Path(stages[0][stages[0].index("--workdir") + 1]).name


def collect(futures: list, timeout_s: float) -> set[str]:
    """Keys of the tasks that finished. Each result is read as it comes and released: a result
    left on a worker that the walltime later kills would make dask run that MOUS again."""
    from distributed import as_completed

    done: set[str] = set()
    try:
        for future in as_completed(futures, timeout=timeout_s):
            if future.status == "finished":
                done.add(future.key)
            else:
                log.info("dask: %s: %r", future.key, future.exception())
            future.release()
    except TimeoutError:
        log.info("dask: given up after %.0f s", timeout_s)
    return done


def run_dask(setup: Setup, name: str = "bench-dask") -> set[str]:
    """SLURMCluster of one-core jobs, adapt(0, cores), client.map over the MOUS in order."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    for noisy in ("distributed", "dask_jobqueue"):      # set to INFO by their own import
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cluster = SLURMCluster(
        queue="debug", cores=1, processes=1, memory="1GB", walltime=setup.walltime,
        job_name=name, python=sys.executable, log_directory=str(setup.folder / "logs"),
        local_directory=str(setup.folder / "dask-tmp"),
        job_script_prologue=[f"export PYTHONPATH={shlex.quote(str(Path(__file__).parent))}"],
        scheduler_options={"dashboard_address": ":0"})
    try:
        cluster.adapt(minimum=0, maximum=setup.cores)
        with Client(cluster) as client:
            futures = client.map(whole_mous, [setup.stages(m) for m in setup.mous],
                                 key=[m.disk for m in setup.mous], pure=False)
            return collect(futures, setup.timeout_s)
    finally:
        cluster.close()


# --- 3. arihpc ---

def arihpc_files(setup: Setup) -> tuple[Path, Path]:
    """The campaign config and the site profile (from site-configs/ci-slurm.yaml) of this run.

    Site: the 1-minute walltime; drain-margin 5 s (the cut comes 60-90 s after the start, a
    worker needs ~2 s to leave); max-jobs cores+1, so a job is always queued ahead and starts
    the moment another ends; io-slots 0, since the emulated fetch is CPU work, not a
    download, and running it ahead would overcommit a one-core job; x11 off (no CASA, no X).
    Config: walltime-margin-s 2 (the emulator's predicted duration is its exact CPU + 1 s);
    small memory predictions (the emulator touches 1 MB per GB); largest MOUS first (the
    same order as the other strategies). The workers get the config with each task."""
    site = yaml.safe_load((ROOT / "site-configs" / "ci-slurm.yaml").read_text())
    site.update({"walltime": setup.walltime, "drain-margin": "00:00:05",
                 "max-jobs": setup.cores + 1, "x11": False})
    site["storage"].update({"work-dir": str(setup.folder / "work"), "io-slots": 0})
    site_path = setup.folder / "bench.yaml"         # job names arihpc-bench-<class>
    site_path.write_text(yaml.safe_dump(site, sort_keys=False))
    config = {"arihpc": {"planning": {"median-memory-gb": 0.15, "min-memory-gb": 0.1},
                         "runner": {"walltime-margin-s": MARGIN_S},
                         "ordering": {"keys": ["tier", "cycle-desc", "size-desc", "uid"]}}}
    config_path = setup.folder / "campaign.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path, site_path


def arihpc_campaign(setup: Setup, store: str, config: Path) -> None:
    """A fresh store with the workload: archive TSV, DataLink sizes as CSV, then select."""
    tsv = ["Member ous id\tProject code\tQA2 Status\tArray"]
    tsv += [f"{m.uid}\t2016.1.{i:05d}.S\tPASS\t12m" for i, m in enumerate(setup.mous)]
    (setup.folder / "aq.tsv").write_text("\n".join(tsv) + "\n")
    (setup.folder / "sizes.csv").write_text("uid,size_bytes,size_source\n" + "".join(
        f"{m.uid},{m.size_bytes},datalink\n" for m in setup.mous))
    cli = [sys.executable, "-m", "arihpc.cli", "--store", store, "--config", str(config)]
    for args in (["catalog", "import", str(setup.folder / "aq.tsv")],
                 ["catalog", "import", str(setup.folder / "sizes.csv")], ["select"]):
        run_command([*cli, *args], timeout=300)


def run_arihpc(setup: Setup) -> set[str]:
    """``arihpc run`` until the campaign is done; its output goes to arihpc-run.log."""
    import sqlalchemy as sa

    from arihpc.store.schema import mous as mous_table

    setup.folder.mkdir(parents=True, exist_ok=True)
    config, site = arihpc_files(setup)
    store = f"sqlite:///{setup.folder}/campaign.db"
    arihpc_campaign(setup, store, config)
    options = {**setup.options, "trace": str(setup.trace)}
    result = run_command(
        [sys.executable, "-m", "arihpc.cli", "--store", store, "--config", str(config), "-v",
         "run", "--site", str(site), "--payload", "emulator",
         "--payload-options", json.dumps(options)], timeout=setup.timeout_s, check=False)
    (setup.folder / "arihpc-run.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"arihpc run exited {result.returncode}: {result.stderr[-2000:]}")
    engine = sa.create_engine(store)
    with engine.connect() as conn:
        uids = conn.execute(sa.select(mous_table.c.uid).where(mous_table.c.state == "done"))
        done = {disk_name(uid) for (uid,) in uids}
    engine.dispose()
    return done


STRATEGIES = {"study": (run_study, "bench-study"), "dask": (run_dask, "bench-dask"),
              "arihpc": (run_arihpc, "arihpc-bench-")}
