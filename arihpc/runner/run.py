"""run_mous: one MOUS through its stages, inside a dask worker or a batch job.

Stages run in order, each one external command under the process runner; a stage whose
checkpoint exists is skipped, and every stage after the first one that runs runs again. A
stage starts only if its predicted duration fits before the job's deadline; otherwise the
runner yields, and a fresh job continues from that stage.

    python -m arihpc.runner.run --uid UID --workdir DIR --payload emulator --size-gb 13
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from arihpc import config
from arihpc.mous import disk_name
from arihpc.runner import live
from arihpc.runner import workdir as wd
from arihpc.runner.casa_version import CasaVersionError
from arihpc.runner.failures import classify, retry_policy
from arihpc.runner.plans import PAYLOADS, MousTask, StageSpec
from arihpc.runner.process import ProcessResult, finished_unwatched, run_process

LOG_TAIL = 20
# A stage that failed without a known line while its work filesystem had less than this free
# failed for the disk: on a full filesystem its log, in the same directory, gets no line either.
FULL_BELOW_BYTES = 1 << 20
OUTCOME_TOPIC = "arihpc-outcome"    # the dask event topic of run_in_worker's outcomes
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What became of one run: done, staged (stopped after ``task.last_stage``), yielded,
    interrupted or failed."""

    uid: str
    status: str
    stage: str | None = None            # the stage it stopped at (next to run, or failed)
    error_class: str | None = None
    message: str | None = None
    log_lines: tuple[str, ...] = ()
    stages_run: tuple[str, ...] = ()
    records: dict = field(default_factory=dict)     # stage -> checkpoint written this run
    needs_s: float | None = None        # yielded: the time a job must have left to continue
    peak_rss: int | None = None         # bytes: the largest process tree of this run's stages


def _first_to_run(task: MousTask, plan: list[StageSpec]) -> int:
    """Index of the first stage without a checkpoint; later checkpoints are dropped."""
    for index, stage in enumerate(plan):
        if wd.read_checkpoint(task.workdir, stage.name) is None:
            for later in plan[index + 1:]:
                wd.drop_checkpoint(task.workdir, later.name)   # its inputs will change
            return index
    return len(plan)


def _fits(stage: StageSpec, deadline: float | None) -> bool:
    if deadline is None:
        return True
    margin = float(config.get("runner.walltime-margin-s"))
    return time.time() + stage.predicted_s + margin <= deadline


def _run_stage(task: MousTask, stage: StageSpec, stop: threading.Event | None):
    """Run one stage from clean outputs; returns (process result, start time, log path)."""
    out = task.workdir / stage.output_folder
    if out.exists():
        shutil.rmtree(out)          # a stage cut earlier left partial outputs
    log_path = task.workdir / "log" / f"{stage.name}.log"
    started = time.time()
    if stage.call is not None:
        return _run_call(stage, out, log_path), started, log_path
    with live.running(task.uid, stage.name, task.attempt) as now:
        result = run_process(stage.argv, cwd=task.workdir, log_path=log_path,
                             memory_limit=stage.memory_limit, stop=stop,
                             timeout_s=float(config.get("runner.stage-timeout-s")),
                             on_sample=now.sample)
    return result, started, log_path


def _run_call(stage: StageSpec, out: Path, log_path: Path) -> ProcessResult:
    """A stage that is a Python call: an exception is its failure, its traceback its log."""
    wall, cpu = time.monotonic(), time.thread_time()
    returncode = 0
    try:
        stage.call(out)
    except Exception:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        returncode = 1
    return ProcessResult(returncode, time.monotonic() - wall, time.thread_time() - cpu, 0, None)


def _failure(task: MousTask, stage: StageSpec, result, log_path: Path, done: list[str],
             records: dict):
    """The outcome of a stage that failed; ``records``: the stages this run completed
    before it (the store records them: they were run, and are not run again)."""
    lines = log_path.read_text(errors="replace").splitlines()[-2000:]
    if result.killed_for == "oom":
        name, line = "oom", f"arihpc: memory limit exceeded: tree RSS {result.peak_rss} bytes"
    elif result.killed_for == "timeout":
        name, line = "unknown", "arihpc: stage ran longer than runner.stage-timeout-s"
    elif result.killed_for == "stopped":
        name, line = "walltime", "arihpc: stopped by SIGTERM (batch system kill)"
    else:
        found = classify(lines, result.returncode)
        name, line = found.name or "unknown", found.line
        # classify calls a non-zero exit with no known line "unknown", never None
        if found.name in (None, "unknown") and \
                (free := _free_bytes(task.workdir)) < FULL_BELOW_BYTES:
            name, line = "disk-space", f"arihpc: work filesystem full ({free} bytes free)"
    status = "interrupted" if name == "walltime" else "failed"
    return Outcome(task.uid, status, stage.name, name, line,
                   tuple([line or ""] + lines[-LOG_TAIL:]), tuple(done), dict(records),
                   peak_rss=result.peak_rss or None)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return FULL_BELOW_BYTES         # cannot tell: not a reason to call it full


def _adopt(task: MousTask, stage: StageSpec) -> dict | None:
    """Checkpoint a stage whose command finished after its runner died (killed between the
    command's exit and the checkpoint): its outputs are complete, it is not run again."""
    report = finished_unwatched(task.workdir / "log" / f"{stage.name}.log")
    if report is None:
        return None
    record = {"stage": stage.name, "attempt": task.attempt, "start": report["start"],
              "end": report["end"], "wall_s": report["end"] - report["start"],
              "cpu_s": report["cpu_s"], "peak_rss": report["maxrss"],
              "outputs": wd.output_sizes(task.workdir, stage.output_folder),
              "command": list(stage.argv)}
    wd.write_checkpoint(task.workdir, stage.name, record)
    log.info("%s: %s finished after its runner died; checkpointed", task.uid, stage.name)
    return record


def run_mous(task: MousTask, deadline: float | None = None, owner: str | None = None,
             stop: threading.Event | None = None) -> Outcome:
    """Run the stages of one MOUS that are not done yet; never two runners at once."""
    disk_name(task.uid)             # a uid names a path only once validated
    task = replace(task, workdir=task.workdir.resolve())    # stages run inside it
    owner = owner or os.environ.get("ARIHPC_BATCH_JOB") or f"pid {os.getpid()}"
    lock = wd.MousLock(task.workdir, owner, float(config.get("runner.lock-refresh-s")),
                       float(config.get("runner.lock-stale-s")))
    try:
        task.workdir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except wd.MousLocked as e:
        return Outcome(task.uid, "failed", None, "lock", str(e), (str(e),))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        lock.path.unlink(missing_ok=True)      # a lock file half written names nobody
        line = f"arihpc: work filesystem full before the first stage: {e}"
        return Outcome(task.uid, "failed", None, "disk-space", line, (line,))
    try:
        outcome = _run_stages(task, deadline, stop)
    finally:
        lock.release()
    ran = [r["peak_rss"] for r in outcome.records.values()
           if r and r.get("attempt") == task.attempt and r.get("peak_rss")]
    return replace(outcome, peak_rss=max([outcome.peak_rss or 0, *ran]) or None)


def _run_stages(task: MousTask, deadline: float | None, stop: threading.Event | None):
    try:
        plan = PAYLOADS[task.payload](task)
    except CasaVersionError as e:
        return Outcome(task.uid, "failed", None, "casa-version", str(e), (str(e),))
    done: list[str] = []
    records: dict = {}
    first = _first_to_run(task, plan)
    names = [stage.name for stage in plan]
    if task.last_stage in names and first < len(plan) and names.index(task.last_stage) < first:
        return Outcome(task.uid, "staged", names[first])       # that far already
    for stage in plan[first:]:
        adopted = _adopt(task, stage)
        if adopted:
            records[stage.name] = adopted
            done.append(stage.name)
            continue
        if stop is not None and stop.is_set():
            return Outcome(task.uid, "interrupted", stage.name, "walltime",
                           "stopped before the stage started", (), tuple(done), records)
        if not _fits(stage, deadline):
            return Outcome(task.uid, "yielded", stage.name, None,
                           f"{stage.name} needs ~{stage.predicted_s:.0f} s; "
                           f"{max(0, deadline - time.time()):.0f} s left before the deadline",
                           (), tuple(done), records,
                           stage.predicted_s + float(config.get("runner.walltime-margin-s")))
        result, started, log_path = _run_stage(task, stage, stop)
        if result.returncode != 0 or result.killed_for:
            return _failure(task, stage, result, log_path, done, records)
        records[stage.name] = {
            "stage": stage.name, "attempt": task.attempt, "start": started, "end": time.time(),
            "wall_s": result.wall_s, "cpu_s": result.cpu_s, "peak_rss": result.peak_rss,
            "outputs": wd.output_sizes(task.workdir, stage.output_folder),
            "command": list(stage.argv)}        # the weblog shows it; the store ignores it
        wd.write_checkpoint(task.workdir, stage.name, records[stage.name])
        done.append(stage.name)
        if stage.name == task.last_stage and stage is not plan[-1]:
            following = plan[plan.index(stage) + 1].name
            return Outcome(task.uid, "staged", following, None, None, (), tuple(done), records)
    # Every checkpoint, also those of earlier jobs whose outcome never reached the store
    # (an orchestrator killed meanwhile): the store records each stage once, by start time.
    records = {s.name: wd.read_checkpoint(task.workdir, s.name) for s in plan}
    return Outcome(task.uid, "done", None, None, None, (), tuple(done), records)


def run_in_worker(tasks: list[MousTask]) -> list[dict]:
    """run_mous for each task in turn, inside a dask worker of a batch job: the job's deadline
    bounds every stage. Several tasks are short MOUS the orchestrator batched into one MOUS
    slot (``batching`` in arihpc.yaml); usually there is one.

    Returns each outcome with its run time and the worker's address and batch job, so the
    orchestrator can retire a worker that could fit no more work, and announces them on
    ``OUTCOME_TOPIC``. A worker that closes (SIGTERM from the batch system, its --lifetime,
    scancel) stops the running stage at once, so a stage is either checkpointed or left
    unfinished, never completed without its checkpoint; the tasks after it stop before
    their first stage.
    """
    from distributed import get_worker
    from distributed.core import Status

    worker = get_worker()
    config.apply(tasks[0].settings)     # a batch job's worker never read the campaign's config
    live.publish(worker)
    stop, finished = threading.Event(), threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if worker.status in (Status.closing, Status.closing_gracefully, Status.closed):
                stop.set()
                return
    threading.Thread(target=watch, daemon=True).start()
    deadline = os.environ.get("ARIHPC_DEADLINE")
    # A batch job's worker is named SITE-CLASS-N (sites.cluster): the store keeps the name,
    # which tells the node class; a worker without one by its address.
    name = worker.name if isinstance(worker.name, str) else worker.address
    where = {"worker": name, "batch_job": os.environ.get("ARIHPC_BATCH_JOB")}
    replies = []
    try:
        for task in tasks:
            started = time.monotonic()
            outcome = run_mous(task, float(deadline) if deadline else None, stop=stop)
            replies.append({**asdict(outcome), **where,
                            "elapsed_s": time.monotonic() - started})
    finally:
        finished.set()
    announcement = announce(worker.get_current_task(), replies)
    if announcement is not None:
        worker.log_event(OUTCOME_TOPIC, announcement)
    return replies


def announce(key: str, replies: list[dict]) -> str | None:
    """The announcement of a task's outcomes, or None when it is larger than
    ``runner.announce-max-bytes`` per outcome. Announced as well as returned: the scheduler
    forwards it to the orchestrator ahead of the task's completion, so it needs no round trip
    to the worker to read the result (the returned value is the fallback). JSON, encoded
    here: a value the scheduler's msgpack could not take would break the worker's stream, not
    this call."""
    text = json.dumps({"key": key, "replies": replies}, default=str)
    limit = int(config.get("runner.announce-max-bytes")) * len(replies)
    return text if len(text) <= limit else None


def retry_task(task: MousTask, outcome: Outcome, failures_of_class: int) -> MousTask | None:
    """The next attempt the retry policy of the outcome's class allows, or None.

    ``failures_of_class``: earlier failed attempts of this MOUS with the same class.
    walltime resumes without counting; oom asks for memory-factor times the memory.
    """
    if outcome.status in ("done", "yielded"):
        return None
    policy = retry_policy(outcome.error_class or "unknown")
    if policy.get("resume"):
        return replace(task, attempt=task.attempt + 1)
    if failures_of_class >= int(policy.get("retries", 0)):
        return None
    memory = task.memory_gb
    if memory and policy.get("memory-factor"):
        memory = memory * float(policy["memory-factor"])
    return replace(task, attempt=task.attempt + 1, memory_gb=memory)


def main(argv: list[str] | None = None) -> int:
    """Run one MOUS as a batch job's payload; the outcome goes to WORKDIR/outcome.json."""
    parser = argparse.ArgumentParser(description="Run the stages of one MOUS.")
    parser.add_argument("--uid", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--payload", choices=sorted(PAYLOADS), default="emulator")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--memory-gb", type=float)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--options", default="{}", help="payload options as JSON")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())    # the batch system's walltime kill
    task = MousTask(args.uid, args.workdir, args.payload, args.size_gb, args.memory_gb,
                    args.attempt, json.loads(args.options))
    deadline = os.environ.get("ARIHPC_DEADLINE")
    outcome = run_mous(task, float(deadline) if deadline else None, stop=stop)
    wd.write_json_atomic(args.workdir / "outcome.json", asdict(outcome))
    sys.stdout.write(f"{outcome.uid}: {outcome.status}"
                     f"{' at ' + outcome.stage if outcome.stage else ''}"
                     f"{' (' + outcome.error_class + ')' if outcome.error_class else ''}\n")
    return 0 if outcome.status in ("done", "yielded") else 1


if __name__ == "__main__":
    sys.exit(main())
