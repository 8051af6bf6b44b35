"""The leader of a stage's process group: no orphan CASA.

The runner starts every stage command as ``python -S .../arihpc/runner/guard.py -- ARGV...`` in a
new session. The guard runs ARGV in its own process group and kills the whole group when
  * its parent (the dask worker or the runner) dies: it is re-parented, which it polls for,
  * it gets SIGTERM (the batch system's walltime kill, or the runner stopping the stage).
Its exit status is the command's; a command killed by signal N exits 128 + N, one that cannot
be started 127. With ``--rusage FILE`` it writes the command's CPU time and max RSS there (the
kernel's count, which misses nothing between two samples), its exit status and start and end
times: a stage that ended after its runner died is known to have finished
(arihpc.runner.process).

It starts for every stage, so it imports next to nothing (no json, subprocess or enum; run
without ``site``): a short stage costs a few milliseconds, not tens.
"""

from __future__ import annotations

import os
import resource
import sys
import time

try:        # the C module: ``signal`` wraps it in enums, whose import doubles the start time
    import _signal as signal
except ImportError:         # pragma: no cover - another Python implementation
    import signal  # type: ignore[no-redef]

POLL_S = 0.5


def _kill_group(sig: int) -> None:
    try:
        os.killpg(os.getpgrp(), sig)
    except ProcessLookupError:
        pass


def _write_rusage(path: str, code: int, started: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    part = f"{path}.part"
    # JSON by hand: numbers only (json would double the guard's start time).
    report = (f'{{"cpu_s": {usage.ru_utime + usage.ru_stime!r}, '
              f'"maxrss": {usage.ru_maxrss * 1024}, "returncode": {code}, '
              f'"start": {started!r}, "end": {time.time()!r}}}')
    with open(part, "w") as f:
        f.write(report)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def _spawn(argv: list[str]) -> int:
    """Start the command in the guard's process group, with the signal state a fresh process
    has (SIGCHLD unblocked, SIGPIPE and SIGXFSZ at their defaults, as subprocess does)."""
    return os.posix_spawnp(argv[0], argv, os.environ, setsigmask=(),
                           setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))


def _wait(child: int, parent: int) -> int:
    """The command's exit status; SIGCHLD wakes the guard at once, and every POLL_S it
    checks that its parent is alive (else it takes the whole group down)."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        signal.sigtimedwait([signal.SIGCHLD], POLL_S)
        if os.getppid() != parent:  # the worker died: take the stage down with it
            _kill_group(signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rusage_file = None
    if argv[:1] == ["--rusage"]:
        rusage_file, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m arihpc.runner.guard -- COMMAND [ARGS...]\n")
        return 2
    parent = os.getppid()

    def on_term(signum, _frame):
        # Pass the signal to the command, give it a moment, then nothing may survive.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _kill_group(signal.SIGTERM)
        time.sleep(1.0)
        _kill_group(signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    # SIGCHLD stays pending until sigtimedwait takes it: an exit is never missed.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    started = time.time()
    try:
        child = _spawn(argv)
    except OSError as e:
        sys.stderr.write(f"arihpc guard: cannot run {argv[0]}: {e}\n")
        code = 127
    else:
        code = _wait(child, parent)
    if rusage_file:
        _write_rusage(rusage_file, code, started)
    return code


if __name__ == "__main__":
    sys.exit(main())
