"""The leader of a stage's process group: no orphan CASA.

The runner starts every stage command as ``python -m arihpc.jobs.guard -- ARGV...`` in a new
session. The guard runs ARGV in its own process group and kills the whole group when
  * its parent (the dask worker or the runner) dies: it is re-parented, which it polls for,
  * it gets SIGTERM (the batch system's walltime kill, or the runner stopping the stage).
Its exit status is the command's; a command killed by signal N exits 128 + N. With
``--rusage FILE`` it writes the command's CPU time and max RSS there (the kernel's count,
which misses nothing between two samples), its exit status and start and end times: a stage
that ended after its runner died is known to have finished (arihpc.jobs.process).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _kill_group(sig: int) -> None:
    try:
        os.killpg(os.getpgrp(), sig)
    except ProcessLookupError:
        pass


def _write_rusage(path: str, code: int, started: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    part = f"{path}.part"
    with open(part, "w") as f:
        json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024,
                   "returncode": code, "start": started, "end": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rusage_file = None
    if argv[:1] == ["--rusage"]:
        rusage_file, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m arihpc.jobs.guard -- COMMAND [ARGS...]\n")
        return 2
    parent = os.getppid()

    def on_term(signum, _frame):
        # Pass the signal to the command, give it a moment, then nothing may survive.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _kill_group(signal.SIGTERM)
        time.sleep(1.0)
        _kill_group(signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    child = subprocess.Popen(argv)      # same process group as the guard
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            code = code if code >= 0 else 128 - code
            if rusage_file:
                _write_rusage(rusage_file, code, started)
            return code
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # the worker died: take the stage down with it
                _kill_group(signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
