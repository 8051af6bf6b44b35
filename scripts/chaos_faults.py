"""The faults of scripts/chaos_campaign.py, each one function: it does its fault to the running
campaign and says what it did (None: nothing to do it to right now, e.g. no job running).

The campaign's moving parts are in ``Chaos``: the orchestrators (one ``arihpc run`` per site),
the archive's HTTP server, the small work filesystem and the PostgreSQL server. Every command
goes through ``arihpc.sites.command.run_command`` (argv list, timeout, no shell).
"""

from __future__ import annotations

import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from arihpc.mous import disk_name
from arihpc.sites.command import run_command

FILLER = "chaos-filler"     # the file that fills the work filesystem for a few seconds


@dataclass
class PostgresServer:
    """The PostgreSQL behind the store, as scripts/test.sh names it (ARIHPC_TEST_PG_*)."""

    pg_ctl: str
    data: str
    user: str

    @classmethod
    def from_env(cls) -> "PostgresServer | None":
        names = ("ARIHPC_TEST_PG_CTL", "ARIHPC_TEST_PG_DATA", "ARIHPC_TEST_PG_USER")
        values = [os.environ.get(name) for name in names]
        return cls(*values) if all(values) else None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop it (fast: every connection is dropped), wait ``down_s``, start it again with
        the options it was started with (postmaster.opts)."""
        prefix = [] if self.user == _me() else ["runuser", "-u", self.user, "--"]
        run_command([*prefix, self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"],
                    timeout=60)
        time.sleep(down_s)
        options = (Path(self.data) / "postmaster.opts").read_text().split(" ", 1)[1]
        run_command([*prefix, self.pg_ctl, "-D", self.data, "-w", "-l",
                     str(Path(self.data).parent / "log"), "-o", _start_options(options),
                     "start"], timeout=60)


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _start_options(opts: str) -> str:
    """postmaster.opts holds the server's argv ("-D" "DIR" "-c" "x=y" ...): the part after
    the data directory is what ``pg_ctl -o`` takes."""
    words = [w.strip('"') for w in opts.split()]
    if "-D" in words:
        at = words.index("-D")
        del words[at:at + 2]
    return " ".join(words)


@dataclass
class ArchiveServer:
    """The archive's HTTP server (``python -m http.server`` on 127.0.0.1), as its own process
    so that it can be dropped and started again on the same port."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):        # until it answers
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the archive server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Chaos:
    """What the faults act on."""

    sites: list[str]
    restart_orchestrator: Callable[[str], None]     # kill -9 it, start it again
    running_sites: Callable[[], list[str]]          # sites whose orchestrator runs now
    archive: ArchiveServer
    work_fs: Path | None                            # the small work filesystem (None: not root)
    fault_dir: Path
    postgres: PostgresServer | None
    running_uids: Callable[[], list[str]]           # MOUS the store says are running
    done: list[tuple[float, str, str]] = field(default_factory=list)   # (time, kind, what)


def kill_orchestrator(chaos: Chaos, rng: random.Random) -> str | None:
    running = chaos.running_sites()         # a site whose run ended has nothing to kill
    if not running:
        return None
    site = rng.choice(running)
    chaos.restart_orchestrator(site)
    return f"kill -9 of the {site} orchestrator, started again"


def _workers(sites: list[str]) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if "distributed.cli.dask_worker" in argv and any(
                f"{site}-" in word for site in sites for word in argv):
            found.append(process)
    return found


def kill_worker(chaos: Chaos, rng: random.Random) -> str | None:
    workers = _workers(chaos.sites)
    if not workers:
        return None
    # the worker's python or the xvfb-run shell around it (its argv names the worker too):
    # either way the job must end and leave no process behind
    victim = rng.choice(workers)
    argv = victim.cmdline()
    name = argv[argv.index("--name") + 1]
    what = "xvfb-run of worker" if any(a.endswith("xvfb-run") for a in argv) else "worker"
    victim.send_signal(signal.SIGKILL)
    return f"SIGKILL of {what} {name} (pid {victim.pid})"


def running_jobs(prefix: str = "arihpc-") -> list[tuple[str, str]]:
    """(job id, name) of the running batch jobs whose name starts with ``prefix``."""
    out = run_command(["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], timeout=30).stdout
    return [tuple(line.split(None, 1)) for line in out.splitlines()
            if line.split(None, 1)[-1].startswith(prefix)]


def scancel_job(chaos: Chaos, rng: random.Random) -> str | None:
    jobs = [job for job in running_jobs()
            if any(job[1].startswith(f"arihpc-{site}-") for site in chaos.sites)]
    if not jobs:
        return None
    job, name = rng.choice(jobs)
    run_command(["scancel", job], timeout=30, check=False)
    return f"scancel of job {job} ({name})"


def drop_archive(chaos: Chaos, rng: random.Random) -> str:
    down = rng.uniform(2, 6)
    chaos.archive.stop()
    time.sleep(down)
    chaos.archive.start()
    return f"archive HTTP server down for {down:.1f} s"


def inject_oom(chaos: Chaos, rng: random.Random) -> str | None:
    running = chaos.running_uids()
    if not running:
        return None
    uid = rng.choice(running)
    (chaos.fault_dir / f"{disk_name(uid)}.oom").touch()
    return f"oom: the next stage of {uid} grows past its memory limit"


def fill_work_fs(chaos: Chaos, rng: random.Random) -> str | None:
    if chaos.work_fs is None:
        return None
    filler = chaos.work_fs / FILLER
    held = rng.uniform(2, 5)
    free = os.statvfs(chaos.work_fs).f_bavail * os.statvfs(chaos.work_fs).f_frsize
    with open(filler, "wb") as f:       # every byte left: writes now fail with ENOSPC
        try:
            os.posix_fallocate(f.fileno(), 0, free)
        except OSError:
            pass                        # full already: what we wanted
    time.sleep(held)
    filler.unlink()
    return f"work filesystem full for {held:.1f} s ({free / 2**20:.0f} MB filled)"


def restart_postgres(chaos: Chaos, rng: random.Random) -> str | None:
    if chaos.postgres is None:
        return None
    down = rng.uniform(1, 4)
    chaos.postgres.restart(down)
    return f"PostgreSQL restarted (down {down:.1f} s)"


FAULTS: dict[str, Callable[[Chaos, random.Random], str | None]] = {
    "kill-orchestrator": kill_orchestrator,
    "kill-worker": kill_worker,
    "scancel": scancel_job,
    "archive-down": drop_archive,
    "oom": inject_oom,
    "disk-full": fill_work_fs,
    "postgres-restart": restart_postgres,
}


def inject(chaos: Chaos, rng: random.Random, kind: str) -> str | None:
    """Do one fault of ``kind``; record it in ``chaos.done`` when it was done."""
    what = FAULTS[kind](chaos, rng)
    if what is not None:
        chaos.done.append((time.time(), kind, what))
    return what
