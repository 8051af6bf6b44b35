"""Read the batch queue (``squeue``, ``qstat -f``) into one job-state enum, and SLURM's log of
finished jobs (jobcomp/filetxt) for the CPU time each one held.

Each batch system has a translation table from its own state codes; a code not in the table
becomes UNKNOWN with a warning, never an error (a dashboard must keep working).
"""

from __future__ import annotations

import enum
import logging
import re
import time
from dataclasses import dataclass
from typing import Iterable

from arihpc.errors import CommandError
from arihpc.sites.command import run_command
from arihpc.sites.profile import SiteProfile

log = logging.getLogger(__name__)


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETING = "completing"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


S = JobState
SLURM_STATES = {
    "PENDING": S.PENDING, "CONFIGURING": S.PENDING, "REQUEUED": S.PENDING,
    "REQUEUE_HOLD": S.PENDING, "REQUEUE_FED": S.PENDING, "RESV_DEL_HOLD": S.PENDING,
    "SUSPENDED": S.PENDING, "STOPPED": S.PENDING,
    "RUNNING": S.RUNNING, "RESIZING": S.RUNNING, "SIGNALING": S.RUNNING,
    "COMPLETING": S.COMPLETING, "STAGE_OUT": S.COMPLETING,
    "COMPLETED": S.DONE,
    "FAILED": S.FAILED, "BOOT_FAIL": S.FAILED, "NODE_FAIL": S.FAILED, "OUT_OF_MEMORY": S.FAILED,
    "SPECIAL_EXIT": S.FAILED,
    "TIMEOUT": S.TIMEOUT, "DEADLINE": S.TIMEOUT,
    "CANCELLED": S.CANCELLED, "PREEMPTED": S.CANCELLED, "REVOKED": S.CANCELLED,
}
TORQUE_STATES = {
    "Q": S.PENDING, "H": S.PENDING, "W": S.PENDING, "T": S.PENDING, "S": S.PENDING,
    "R": S.RUNNING, "E": S.COMPLETING, "C": S.DONE,
}
PBSPRO_STATES = {
    "Q": S.PENDING, "H": S.PENDING, "W": S.PENDING, "T": S.PENDING, "S": S.PENDING,
    "U": S.PENDING, "M": S.PENDING,
    "R": S.RUNNING, "B": S.RUNNING, "E": S.COMPLETING, "F": S.DONE, "X": S.DONE,
}
STATE_TABLES = {"slurm": SLURM_STATES, "torque": TORQUE_STATES, "pbspro": PBSPRO_STATES}
# Torque's exit status when its walltime killed a job; PBS Pro reports 256 + signal.
WALLTIME_EXIT = {"-11", "271"}


@dataclass(frozen=True)
class BatchJob:
    """One job in a batch queue."""

    job_id: str
    name: str
    state: JobState
    raw_state: str
    used_s: int | None          # walltime used
    limit_s: int | None         # walltime asked
    left_s: int | None          # walltime left


def translate(batch_system: str, raw: str) -> JobState:
    """The common state of a batch system's state code; UNKNOWN (with a warning) if new to us."""
    code = raw.strip().upper().split()[0].rstrip("+") if raw.strip() else ""
    state = STATE_TABLES[batch_system].get(code)
    if state is None:
        log.warning("%s job state %r is not in arihpc's table: counted as unknown",
                    batch_system, raw)
        return S.UNKNOWN
    return state


def duration_s(text: str | None) -> int | None:
    """Seconds of a SLURM/PBS duration: [D-]HH:MM:SS, MM:SS or plain seconds; None if none."""
    if not text or text.strip() in ("", "N/A", "UNLIMITED", "INVALID", "NOT_SET", "--"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return int(text) if text.strip().isdigit() else None


SQUEUE_FORMAT = "%i|%T|%M|%l|%L|%S|%j|%P"     # id|state|used|limit|left|start|name|partition
SQUEUE_ARGV = ["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]


def parse_squeue(text: str) -> list[BatchJob]:
    """Jobs from ``squeue --noheader --format='%i|%T|%M|%l|%L|%S|%j|%P'``."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, raw, used, limit, left, _start, name, *_ = line.split("|") + [""] * 8
        jobs.append(BatchJob(job_id.strip(), name.strip(), translate("slurm", raw), raw.strip(),
                             duration_s(used), duration_s(limit), duration_s(left)))
    return jobs


def parse_qstat_full(text: str, batch_system: str, now: float | None = None) -> list[BatchJob]:
    """Jobs from ``qstat -f`` (Torque, PBS Pro, or SLURM's PBS wrapper)."""
    jobs = []
    for block in re.split(r"^Job Id:\s*", text, flags=re.M)[1:]:
        job_id, _, body = block.partition("\n")
        fields = dict(re.findall(r"^\s+([\w.]+)\s*=\s*(.*?)\s*$", body, flags=re.M))
        raw = fields.get("job_state", "")
        state = translate(batch_system, raw)
        exit_status = fields.get("Exit_status", fields.get("exit_status"))
        if state is S.DONE and exit_status not in (None, "0"):
            state = S.TIMEOUT if exit_status in WALLTIME_EXIT else S.FAILED
        limit = duration_s(fields.get("Resource_List.walltime"))
        used = duration_s(fields.get("resources_used.walltime"))
        if used is None and state is S.RUNNING and "mtime" in fields:
            used = _seconds_since(fields["mtime"], now)     # the wrapper reports no usage
        left = max(0, limit - used) if limit is not None and used is not None else None
        jobs.append(BatchJob(job_id.strip(), fields.get("Job_Name", ""), state, raw,
                             used, limit, left))
    return jobs


def _seconds_since(stamp: str, now: float | None) -> int | None:
    """Seconds from a qstat time stamp ("Sat Nov 21 19:35:30 2026", local time) to now."""
    try:
        start = time.mktime(time.strptime(stamp.strip(), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None
    return max(0, int((time.time() if now is None else now) - start))


@dataclass(frozen=True)
class FinishedJob:
    """One finished job as SLURM's jobcomp/filetxt log records it (no sacct needed)."""

    job_id: str
    name: str
    state: JobState
    raw_state: str
    submit: float | None        # epoch seconds
    start: float | None
    end: float | None
    cpus: int

    @property
    def core_s(self) -> float:
        """CPU-seconds allocated: run time times CPUs (0 for a job that never ran)."""
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start) * self.cpus


# Key=value pairs; a value (a job name) may hold spaces, so it ends where the next key starts.
_JOBCOMP_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")


def parse_jobcomp(text: str) -> list[FinishedJob]:
    """Jobs from a jobcomp/filetxt log (``JobCompLoc``), one ``JobId=... ExitCode=...`` line
    each; times are local time to the second."""
    jobs = []
    for line in text.splitlines():
        fields = dict(_JOBCOMP_FIELD.findall(line.strip()))
        if "JobId" not in fields:
            continue
        raw = fields.get("JobState", "")
        jobs.append(FinishedJob(fields["JobId"], fields.get("Name", ""), translate("slurm", raw),
                                raw, _local_time(fields.get("SubmitTime")),
                                _local_time(fields.get("StartTime")),
                                _local_time(fields.get("EndTime")),
                                int(fields.get("ProcCnt") or 0)))
    return jobs


def _local_time(stamp: str | None) -> float | None:
    """Epoch seconds of a SLURM time stamp (2026-11-22T00:22:16, local time); None if none."""
    try:
        return time.mktime(time.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


QSTAT_NO_JOBS = 153

# batch system -> (command that lists the queue, parser of its output)
QUEUE_READERS = {
    "slurm": (SQUEUE_ARGV, parse_squeue),
    "torque": (["qstat", "-f"], lambda text: parse_qstat_full(text, "torque")),
    "pbspro": (["qstat", "-f"], lambda text: parse_qstat_full(text, "pbspro")),
}


def read_queue(profile: SiteProfile) -> list[BatchJob]:
    """This site's arihpc jobs in its batch queue, read through the one command runner."""
    if profile.batch_system not in QUEUE_READERS:
        return []           # a local site has no batch queue
    argv, parse = QUEUE_READERS[profile.batch_system]
    done = run_command(argv, timeout=30, check=False)
    # qstat exits 153 (PBSE_UNKJOBID) when it finds no job: SLURM's qstat wrapper does so for
    # an empty queue. Any other failure is an error.
    empty = argv[0] == "qstat" and done.returncode == QSTAT_NO_JOBS and not done.stdout.strip()
    if done.returncode != 0 and not empty:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    jobs = parse(done.stdout)
    return [job for job in jobs if job.name.startswith(f"arihpc-{profile.name}-")]


def count_by_state(jobs: Iterable[BatchJob]) -> dict[JobState, int]:
    counts = {state: 0 for state in JobState}
    for job in jobs:
        counts[job.state] += 1
    return counts
