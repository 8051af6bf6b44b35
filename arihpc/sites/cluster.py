"""A site's dask cluster: one scheduler, one job template per node class, workers in xvfb-run.

SLURM, Torque and PBS Pro sites run dask-jobqueue clusters (one thin module each); the local
site runs a dask LocalCluster whose workers get the same resources and environment.

Each batch job runs one worker process that advertises ``slots`` (MOUS at once) and
``memory_gb`` as dask resources, and knows its deadline from the job script's prologue.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import dask.config
from distributed.core import Status

from arihpc.errors import CommandError, ProfileError
from arihpc.sites import local, pbspro, slurm, torque
from arihpc.sites.batch import JobState, read_queue
from arihpc.sites.command import run_command
from arihpc.sites.profile import NodeClass, SiteProfile

# batch system -> the thin module that knows it
BATCH_MODULES: dict[str, ModuleType] = {"slurm": slurm, "torque": torque, "pbspro": pbspro}

PLACEHOLDER_SCHEDULER = "tcp://SCHEDULER-ADDRESS:8786"


def batch_module(profile: SiteProfile) -> ModuleType:
    try:
        return BATCH_MODULES[profile.batch_system]
    except KeyError:
        raise ProfileError(profile.path, "batch-system", f"site {profile.name} has no batch "
                           "system (it runs a local dask cluster), so no job script") from None


def worker_python(profile: SiteProfile) -> str:
    """The worker's Python, inside ``xvfb-run -a`` when the profile asks for X."""
    python = profile.python or sys.executable
    if not profile.x11:
        return python
    return f"xvfb-run -a -s {shlex.quote('-screen 0 ' + profile.screen)} {python}"


def deadline_s(profile: SiteProfile) -> int:
    """Seconds from a job's start until its worker leaves: drain-margin before the walltime."""
    return profile.walltime_s - profile.drain_margin_s


def worker_resources(profile: SiteProfile, node_class: NodeClass) -> dict[str, float]:
    """What one worker advertises: MOUS slots, memory, and I/O slots for fetches ahead."""
    return {"slots": node_class.slots, "memory_gb": node_class.job_memory_gb,
            "io": profile.storage.io_slots}


# The worker's own diagnostics, off or slower: it runs no task code worth profiling (every
# stage is a process of its own), and its statistical profiler (every 10 ms) and event-loop
# watch (every 20 ms) took ~2.5 % of a core per idle worker here, CPU the job's stages lack.
WORKER_DASK_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                   "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "100ms"}


JOB_GROUP_TRAP = "trap 'trap \"\" TERM; kill -TERM 0 2>/dev/null' EXIT"


def prologue(profile: SiteProfile, node_class: NodeClass) -> list[str]:
    """Job script lines before the worker: what the runner needs to know about this job."""
    job_id = ""
    for variable in reversed(batch_module(profile).job_id_variables):
        job_id = f"${{{variable}:-{job_id}}}"
    return [
        # When the job's shell ends, so does every process it started: a process whose parent
        # died (an Xvfb whose xvfb-run was killed) is a child of init, which batch systems
        # tracking jobs by parentage (SLURM's proctrack/linuxproc) no longer kill with the job.
        JOB_GROUP_TRAP,
        f"export ARIHPC_SITE={shlex.quote(profile.name)}",
        f"export ARIHPC_NODE_CLASS={shlex.quote(node_class.name)}",
        f"export ARIHPC_BATCH_JOB=\"{job_id}\"",
        "export ARIHPC_JOB_START=$(date +%s)",
        # The batch system kills the job at start + walltime, and the worker leaves (its
        # --lifetime) drain-margin before that: stages must end before the worker leaves.
        f"export ARIHPC_DEADLINE=$((ARIHPC_JOB_START + {deadline_s(profile)}))",
        f"export ARIHPC_SCRATCH={shlex.quote(profile.storage.scratch)}",
        "export TMPDIR=\"$ARIHPC_SCRATCH\"",     # CASA's temporary files go to node scratch
        *(f"export {name}={value}" for name, value in WORKER_DASK_ENV.items()),
        *profile.prologue,
    ]


def log_folder(profile: SiteProfile) -> str:
    """Where the batch system writes each job's stdout and stderr."""
    return f"{profile.storage.work_dir.rstrip('/')}/batch-logs"


def job_options(profile: SiteProfile, node_class: NodeClass) -> dict:
    """dask-jobqueue Job keyword arguments for one node class of a site."""
    resources = ",".join(f"{k}={v:g}" for k, v in worker_resources(profile, node_class).items())
    return {
        "cores": node_class.job_cores,
        "memory": f"{node_class.job_memory_gb:g}GB",
        "processes": 1,
        "queue": profile.queue,
        "account": profile.account,
        "walltime": profile.walltime,
        "job_name": f"arihpc-{profile.name}-{node_class.name}",
        "python": worker_python(profile),
        "job_script_prologue": prologue(profile, node_class),
        "job_extra_directives": [*batch_module(profile).log_directives(log_folder(profile)),
                                 *profile.job_extra],
        "local_directory": profile.storage.scratch,
        # No nanny: every stage runs in its own guarded process group under the runner's
        # memory guard, and a worker that dies should end its job (the orchestrator sends
        # its MOUS elsewhere), not restart. The nanny would cost each job a second Python
        # start (~1.5 s) and a 2 s wait when it leaves. What it did that we need, end the
        # worker with its job, arihpc/runner/worker_watch.py does.
        "nanny": False,
        "worker_extra_args": [
            "--resources", resources,
            # A worker leaves before the walltime cut; a fresh job continues its MOUS.
            "--lifetime", f"{deadline_s(profile)}s",
            # Without a nanny, the worker ends itself when the job's shell is gone.
            "--preload", "arihpc.runner.worker_watch",
            # Its own dashboard (bokeh) would cost every job ~0.6 s of start; the site's
            # scheduler dashboard and arihpc's own show the workers.
            "--no-dashboard",
        ],
        **batch_module(profile).resource_options(node_class),
    }


def job_script(profile: SiteProfile, node_class: str | None = None,
               scheduler: str = PLACEHOLDER_SCHEDULER) -> str:
    """The batch script one job of this node class runs, built without submitting anything."""
    chosen = profile.node_class(node_class)
    module = batch_module(profile)
    job = module.job_class(scheduler, name=f"{profile.name}-{chosen.name}",
                           **job_options(profile, chosen))
    return job.job_script()


@dataclass(frozen=True)
class Backend:
    """How a batch system starts its scheduler and describes one job of a node class."""

    start: Callable[[SiteProfile, str], Any]
    worker_spec: Callable[[SiteProfile, NodeClass, Any], dict]


def _jobqueue_backend(module: ModuleType) -> Backend:
    def start(profile: SiteProfile, dashboard_address: str):
        os.makedirs(log_folder(profile), exist_ok=True)
        return module.cluster_class(**job_options(profile, profile.node_class()),
                                    scheduler_options={"dashboard_address": dashboard_address})

    def worker_spec(profile: SiteProfile, node_class: NodeClass, cluster) -> dict:
        # The cluster's own kwargs (interface, security, ...) plus this class's job template.
        return {"cls": cluster.job_cls,
                "options": {**cluster._job_kwargs, **job_options(profile, node_class)}}
    return Backend(start, worker_spec)


def local_environment(profile: SiteProfile, node_class: NodeClass) -> dict[str, str]:
    """What a job script's prologue would export, for a local worker starting now."""
    start = int(time.time())
    return {"ARIHPC_SITE": profile.name, "ARIHPC_NODE_CLASS": node_class.name,
            "ARIHPC_BATCH_JOB": f"local-{os.getpid()}", "ARIHPC_JOB_START": str(start),
            "ARIHPC_DEADLINE": str(start + deadline_s(profile)),
            "ARIHPC_SCRATCH": profile.storage.scratch, "TMPDIR": profile.storage.scratch}


BACKENDS: dict[str, Backend] = {
    **{name: _jobqueue_backend(module) for name, module in BATCH_MODULES.items()},
    "local": Backend(lambda profile, dashboard: local.start_cluster(dashboard),
                     lambda profile, node_class, cluster: local.worker_spec(
                         node_class, worker_resources(profile, node_class),
                         local_environment(profile, node_class))),
}


class SiteCluster:
    """One site's dask scheduler; batch jobs are added per node class, never past max-jobs."""

    def __init__(self, profile: SiteProfile, cluster):
        self.profile = profile
        self.cluster = cluster
        self._serial = 0
        self._queue_read_at = -math.inf         # time.monotonic() of the last queue read
        self._connected: set[str] = set()       # job names whose worker was connected
        self._leaving: set[str] = set()         # ... and left: their job is ending

    @classmethod
    def start(cls, profile: SiteProfile, dashboard_address: str = ":0") -> "SiteCluster":
        """Start the scheduler (no job is submitted yet)."""
        # Work stealing may start a task on a second worker while the first still runs it;
        # a MOUS runs for hours, so where it queues first is where it runs.
        with dask.config.set({"distributed.scheduler.work-stealing": False}):
            started = BACKENDS[profile.batch_system].start(profile, dashboard_address)
        return cls(profile, started)

    @property
    def jobs(self) -> int:
        """Batch jobs this cluster has submitted and not yet released."""
        return len(self.cluster.worker_spec)

    def add_jobs(self, count: int, node_class: str | None = None) -> int:
        """Submit up to ``count`` jobs of a node class, capped by max-jobs; returns how many."""
        chosen = self.profile.node_class(node_class)
        count = max(0, min(count, self.profile.max_jobs - self.jobs))
        spec = BACKENDS[self.profile.batch_system].worker_spec(self.profile, chosen, self.cluster)
        names = []
        for _ in range(count):
            self._serial += 1
            names.append(f"{self.profile.name}-{chosen.name}-{self._serial}")
            self.cluster.worker_spec[names[-1]] = spec
        try:
            self.cluster.sync(self.cluster._correct_state)
        except (RuntimeError, OSError) as e:       # sbatch/qsub refused, or not installed
            self._withdraw(names)
            raise submission_error(e, getattr(self.cluster.job_cls, "submit_command", "")) \
                from None
        return count

    def keep_jobs(self, wanted: dict[str, int], busy: set[str] = frozenset(),
                  connected: set[str] = frozenset()) -> None:
        """Top up each node class to ``wanted`` live jobs (never past max-jobs), after
        forgetting the jobs that ended (walltime, --lifetime, retired workers). ``busy``:
        names of workers running a task, which are never the ones to make way;
        ``connected``: names of the workers connected now (one that left ends its job)."""
        self._forget_ended(connected)
        live = {c.name: [s for s in self.cluster.worker_spec
                         if s.startswith(f"{self.profile.name}-{c.name}-")]
                for c in self.profile.node_classes}
        short = sum(max(0, n - len(live.get(name, []))) for name, n in wanted.items())
        room = self.profile.max_jobs - self.jobs
        # At the job limit, jobs of a class nobody waits for make way for one that is needed.
        for name, specs in live.items():
            idle = [s for s in specs if s not in busy]
            surplus = idle[:max(0, len(specs) - wanted.get(name, 0))]
            while surplus and short > room:
                self.cluster.worker_spec.pop(surplus.pop())
                room += 1
        for name, count in wanted.items():
            if count > len(live.get(name, [])):
                self.add_jobs(count - len(live.get(name, [])), name)

    def cancel_orphans(self) -> list[str]:
        """Cancel this site's batch jobs that this scheduler did not start: the jobs of an
        ``arihpc run`` that was killed (kill -9, a crashed login node). Their workers would
        otherwise keep MOUS locked until their scheduler timeout. Returns the job ids."""
        ours = {getattr(job, "job_id", None) for job in self.cluster.workers.values()}
        orphans = [job.job_id for job in read_queue(self.profile)
                   if job.state in (JobState.PENDING, JobState.RUNNING) and job.job_id not in ours]
        if orphans:
            run_command([self.cluster.job_cls.cancel_command, *orphans], timeout=60, check=False)
        return orphans

    def _forget_ended(self, connected: set[str]) -> None:
        if self.profile.batch_system == "local":
            ended = [n for n, w in self.cluster.workers.items()
                     if w.status in (Status.closed, Status.failed)]
        elif self._queue_due(connected):
            alive = {job.job_id for job in read_queue(self.profile)
                     if job.state in (JobState.PENDING, JobState.RUNNING)}
            ended = [n for n, job in self.cluster.workers.items()
                     if getattr(job, "job_id", None) and job.job_id not in alive]
        else:
            ended = []
        for name in ended:
            self.cluster.worker_spec.pop(name, None)
            job = self.cluster.workers.pop(name)
            job.status = Status.closed          # gone already: nothing to cancel
        self._leaving &= set(self.cluster.workers)      # until its job is out of the queue

    def _queue_due(self, connected: set[str]) -> bool:
        """Read the batch queue now? Once a worker left (its job ends within seconds, and a
        fresh job should follow at once), else every queue-poll: asking squeue or qstat each
        round would load the site's batch server for nothing."""
        self._leaving |= self._connected - connected
        self._connected = set(connected)
        now = time.monotonic()
        if not self._leaving and now - self._queue_read_at < self.profile.queue_poll_s:
            return False
        self._queue_read_at = now
        return True

    def _withdraw(self, names: list[str]) -> None:
        """Cancel every job of a failed submission: nothing stays half-submitted."""
        for name in names:
            self.cluster.worker_spec.pop(name, None)
            job = self.cluster.workers.get(name)
            if job is not None and getattr(job, "job_id", None) is None:
                self.cluster.workers.pop(name)          # never reached the batch system
                job.status = Status.failed              # so closing the cluster accepts it
        self.cluster.sync(self.cluster._correct_state)  # cancels the ones that did

    def close(self) -> None:
        """Release every worker and cancel every job (qdel/scancel), then stop the scheduler."""
        self.cluster.close()

    def __enter__(self) -> "SiteCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def submission_error(error: Exception, submit_command: str) -> CommandError:
    """dask-jobqueue's failed qsub/sbatch, as arihpc's CommandError (argv, status, output)."""
    if isinstance(error, OSError):
        return CommandError([submit_command], None, "", str(error),
                            reason=f"{submit_command} could not run: {error.strerror}")
    text = str(error)
    part = {key: re.search(rf"{key}:\n(.*?)(?:\n\w+:\n|\Z)", text, re.S)
            for key in ("Command", "stdout", "stderr")}
    status = re.search(r"Exit code: (-?\d+)", text)
    argv = shlex.split(part["Command"].group(1)) if part["Command"] else ["(batch submit)"]
    return CommandError(argv, int(status.group(1)) if status else None,
                        part["stdout"].group(1).strip() if part["stdout"] else "",
                        part["stderr"].group(1).strip() if part["stderr"] else text)
