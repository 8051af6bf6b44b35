"""Run one stage command: own process group, psutil accounting, memory guard, timeout, log.

The command runs under arihpc.runner.guard, which kills the group if this process dies.
Every sample walks the whole process tree: peak RSS is the sum over the tree, CPU the sum of
user + system time of every process ever seen in it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import psutil

log = logging.getLogger(__name__)

KILL_AFTER_S = 3.0      # after SIGTERM, the group gets this long before SIGKILL
GUARD = str(Path(__file__).with_name("guard.py"))


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    killed_for: str | None       # "oom", "timeout", "stopped" (SIGTERM), or None


class _TreeSampler:
    """Peak RSS and CPU time of a process and all its descendants."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0

    def sample(self) -> int:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        return rss


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(argv: Sequence[str], cwd: Path, log_path: Path,
                memory_limit: int | None = None, timeout_s: float | None = None,
                stop: threading.Event | None = None, poll_s: float = 0.2,
                env: dict[str, str] | None = None,
                on_sample: Callable[[int, float], None] | None = None) -> ProcessResult:
    """Run ``argv`` in its own process group, stdout+stderr appended to ``log_path``.
    ``on_sample`` gets the process tree's RSS and CPU seconds so far at every sample."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    rusage = _rusage_path(log_path)
    rusage.unlink(missing_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(guard_argv(argv, rusage), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    sampler = _TreeSampler(proc.pid)
    killed_for, signalled_at = None, None
    with _ExitWaiter(proc) as waiter:
        # The first sample one period in: a process just started has nothing to show yet,
        # and the guard's report (below) has all of a command that ends sooner.
        waiter.wait(poll_s)
        while proc.poll() is None:
            rss = sampler.sample()
            if on_sample is not None:
                on_sample(rss, sum(sampler.cpu.values()))
            reason = _why_stop(rss, memory_limit, time.monotonic() - start, timeout_s, stop)
            if reason and killed_for is None:
                killed_for, signalled_at = reason, time.monotonic()
                log.warning("stopping %s: %s (tree rss %d bytes)", argv[0], reason, rss)
                # A memory hog dies at once; otherwise SIGTERM lets the guard end the group.
                _signal_group(proc.pid, signal.SIGKILL if reason == "oom" else signal.SIGTERM)
            elif signalled_at is not None and time.monotonic() - signalled_at > KILL_AFTER_S:
                _signal_group(proc.pid, signal.SIGKILL)
            waiter.wait(poll_s)
    _signal_group(proc.pid, signal.SIGKILL)       # nothing of the stage outlives it
    cpu_s, peak = sum(sampler.cpu.values()), sampler.peak_rss
    if rusage.exists():     # the kernel's count also has what ran between two samples
        counted = json.loads(rusage.read_text())
        cpu_s, peak = max(cpu_s, counted["cpu_s"]), max(peak, counted["maxrss"])
        rusage.unlink()
    return ProcessResult(proc.returncode, time.monotonic() - start, cpu_s, peak, killed_for)


def guard_argv(argv: Sequence[str], rusage: Path) -> list[str]:
    """The guard around ``argv``: run as a script without ``site`` (it needs only the standard
    library), so a short stage does not pay for the site-packages and editable-install
    import machinery of a full interpreter start."""
    return [sys.executable, "-S", GUARD, "--rusage", str(rusage), "--", *argv]


class _ExitWaiter:
    """Waits until a process exits or a timeout passes. Where the kernel has pidfds (Linux
    5.3+) the exit wakes it at once; subprocess's own wait with a timeout sleeps in steps of
    up to 50 ms, a large share of a short stage."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
            return
        self.poller = select.poll()
        self.poller.register(self.pidfd, select.POLLIN)     # readable once it has exited

    def wait(self, timeout: float) -> None:
        if self.pidfd is not None:
            self.poller.poll(timeout * 1000)
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "_ExitWaiter":
        return self

    def __exit__(self, *exc) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _rusage_path(log_path: Path) -> Path:
    return log_path.with_name(f".{log_path.name}.rusage")


def finished_unwatched(log_path: Path) -> dict | None:
    """A stage command that exited 0 after its runner died (nobody read its guard's report):
    its ``start``, ``end``, ``cpu_s`` and ``maxrss``, or None. The report is consumed."""
    path = _rusage_path(log_path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    path.unlink()
    return report if report.get("returncode") == 0 else None


def _why_stop(rss: int, memory_limit: int | None, elapsed: float, timeout_s: float | None,
              stop: threading.Event | None) -> str | None:
    if memory_limit is not None and rss > memory_limit:
        return "oom"
    if timeout_s is not None and elapsed > timeout_s:
        return "timeout"
    if stop is not None and stop.is_set():
        return "stopped"
    return None
