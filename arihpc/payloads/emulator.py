"""The emulated payload: a stage command for tests and benchmarks of the HPC layer, not science.

It spends CPU time and touches memory in proportion to the MOUS's raw size, writes a real
output file, and can fail on purpose in the way a real failure of a given class looks in a
log (or by what it does: an ``oom`` failure grows until the memory guard kills it).

    python -m arihpc.payloads.emulator --stage image --workdir D --size-gb 13 [--fail CLASS]
        [--trace FILE] [--fault-dir DIR]

With ``--trace FILE`` each run appends one JSON line to FILE (benchmarks count useful and lost
CPU from it): ``{"mous": workdir name, "stage", "outcome": "done"|"killed", "cpu_s", "time",
"wall_s"}`` (CPU seconds of the run, when it ended, seconds since it parsed its arguments), on
completion after the output is written, or on SIGTERM (a walltime kill) with the CPU used so far,
before exiting 143.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

LEAP_SECOND = ("2026-01-01 00:00:00\tSEVERE\tMeasTable::dUTC(Double) (file "
               "casacore/measures/Measures/MeasTable.cc, line 4290)\tLeap second table "
               "TAI_UTC seems out-of-date. Until the table is updated (see the CASA "
               "documentation or your system admin), times and coordinates derived from UTC "
               "could be wrong by 1s or more.")

# failure class -> (log line, exit status) of a stage failing that way
FAILURE_LINES = {
    "download": ("arihpc-fetch: download failed: https://almascience.example/dataPortal/"
                 "2016.1.00650.S_uid___A002_Xc1c1f1_Xa9b.asdm.sdm.tar: HTTP Error 404", 3),
    "disk-space": ("OSError: [Errno 28] No space left on device: 'uid___A002_X1.ms'", 1),
    "casa-version": ("ERROR: PLEASE USE THE SAME VERSION OF CASA THAT YOU USED FOR GENERATING "
                     "THE SCRIPT: 4.7.2", 1),
    "unsupported-mode": ("arihpc: unsupported observing mode: total power", 1),
    "importasdm": ("2026-01-01 00:00:00\tSEVERE\timportasdm::::\tException Reported: Error "
                   "in asdm2MS", 1),
    "tclean": ("2026-01-01 00:00:00\tSEVERE\ttclean::::\tTask tclean raised an exception of "
               "class RuntimeError with the following message: Error in making PSF", 1),
    "unknown": ("the emulator failed in a way nobody has a rule for", 1),
}


def spend_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x = (x * 31 + 7) % 1000003


def touch_memory(megabytes: float) -> bytearray:
    block = bytearray(int(megabytes * 2**20))
    for i in range(0, len(block), 4096):
        block[i] = 1            # real pages, not just an address range
    return block


def fail(kind: str) -> int:
    """Fail the way a real stage of this class fails."""
    if kind == "oom":
        hoard = []
        while True:             # grows until the memory guard kills the group
            hoard.append(touch_memory(50))
            time.sleep(0.05)
    if kind == "segfault":
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "walltime":
        while True:             # runs past any deadline: only the batch system ends it
            time.sleep(1)
    line, status = FAILURE_LINES[kind]
    print(line, flush=True)
    return status


class Trace:
    """The trace of one stage run: a ``killed`` line on SIGTERM (then exit 143), or a ``done``
    line once the output is written. The previous SIGTERM handler is back after ``close``."""

    def __init__(self, path: Path, workdir: Path, stage: str):
        self.path, self.mous, self.stage = path, workdir.name, stage
        self.started = time.time()
        self.done = False
        self.previous = None

    def start(self) -> "Trace":
        """Catch SIGTERM from now on (a walltime kill): a ``killed`` line, then exit 143."""
        self.previous = signal.signal(signal.SIGTERM, self._killed)
        return self

    def _write(self, outcome: str) -> None:
        now = time.time()
        # the batch job it ran in: benchmarks split each job's time into start-up, stages, tail
        job = os.environ.get("ARIHPC_BATCH_JOB") or os.environ.get("SLURM_JOB_ID", "")
        line = json.dumps({"mous": self.mous, "stage": self.stage, "outcome": outcome,
                           "job": job,
                           "cpu_s": round(time.process_time(), 3), "time": round(now, 3),
                           "wall_s": round(now - self.started, 3)})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())    # one write: concurrent runs never mix
        finally:
            os.close(fd)

    def _killed(self, signum: int, frame) -> None:
        if not self.done:
            self._write("killed")
        os._exit(128 + signum)

    def finish(self) -> None:
        """Done is final: a SIGTERM while (or after) it is written must not count as killed."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self.done = True
            self._write("done")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size-gb", type=float, required=True)
    parser.add_argument("--cpu-s-per-gb", type=float, default=0.1)
    parser.add_argument("--memory-mb-per-gb", type=float, default=5)
    parser.add_argument("--output-mb-per-gb", type=float, default=0.1)
    parser.add_argument("--fail", choices=sorted([*FAILURE_LINES, "oom", "segfault",
                                                  "walltime"]))
    parser.add_argument("--trace", type=Path, help="append this run's CPU use to this file")
    parser.add_argument("--fault-dir", type=Path,
                        help="a file <workdir name>.<class> here makes this run fail that way "
                             "(it is removed: once)")
    args = parser.parse_args(argv)
    trace = Trace(args.trace, args.workdir, args.stage).start() if args.trace else None
    try:
        return stage(args, trace)
    finally:
        if trace:
            trace.close()


def injected_failure(fault_dir: Path, workdir: Path) -> str | None:
    """The class of a fault injected for this MOUS (a file ``<workdir name>.<class>`` in
    ``fault_dir``), taken once: the file is removed. None when there is none."""
    for marker in sorted(fault_dir.glob(f"{workdir.name}.*")):
        try:
            marker.unlink()
        except FileNotFoundError:
            continue                # another stage run took it
        return marker.suffix[1:]
    return None


def stage(args: argparse.Namespace, trace: Trace | None) -> int:
    """One stage: CPU and memory in proportion to the size, then its output file."""
    print(LEAP_SECOND, flush=True)      # real CASA logs have it; it is not a failure
    print(f"emulating stage {args.stage} of a {args.size_gb:g} GB MOUS", flush=True)
    failure = args.fail or (injected_failure(args.fault_dir, args.workdir)
                            if args.fault_dir else None)
    if failure:
        return fail(failure)
    held = touch_memory(args.memory_mb_per_gb * args.size_gb)
    spend_cpu(args.cpu_s_per_gb * args.size_gb)
    out = args.workdir / args.stage
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stage}.out").write_bytes(
        os.urandom(max(1024, int(args.output_mb_per_gb * args.size_gb * 2**20))))
    if trace:
        trace.finish()
    print(f"stage {args.stage} done ({len(held) // 2**20} MB touched)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
