#!/usr/bin/env python3
"""A whole campaign under random faults: three sites, three batch systems, one PostgreSQL store.

    .venv/bin/python scripts/chaos_campaign.py [--quick] [--mous 5000] [--seed 1]
        [--store URL] [--dir DIR] [--fault-every S] [--json FILE]

Needs the local SLURM with its PBS wrappers (scripts/local-slurm.sh start) and a PostgreSQL
server: ``--store`` (default $ARIHPC_TEST_POSTGRES_URL, what scripts/test.sh starts) names the
server; a fresh database is made on it for the run and dropped after (``--keep`` keeps it and
DIR). The restart fault needs the server's pg_ctl, data directory and user in
ARIHPC_TEST_PG_CTL/_DATA/_USER (scripts/test.sh exports them); the full work filesystem needs
root (a tmpfs is mounted). A fault kind that cannot be done is reported, and fails the run.

What it runs: an export of N MOUS (sizes drawn lognormal around the study's median, scaled
down; emulator payload of 2-4 stages whose run times are seconds; a share of them fail on
purpose in each failure class: ``--fail-share``), fetched over HTTP from an archive on
127.0.0.1, by one ``arihpc run`` per site: ci-slurm (sbatch), ci-torque and ci-pbspro (the
qsub wrappers), each with 1-minute jobs so that many MOUS yield or are cut and resume. The
faults (scripts/chaos_faults.py), at random times drawn from the seed, every kind in turn:
kill -9 of an orchestrator (started again), SIGKILL of a worker (or of its xvfb-run), scancel
of a running job, the archive server down for seconds, a stage growing past its memory, the
work filesystem full, PostgreSQL restarted. At the end the invariants are checked from the
store, the checkpoints, the lock files, the process table and the batch queue
(scripts/chaos_checks.py) and printed as one table. Exit status 1 if one does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

from bench_campaign_trace import slurm_jobcomp  # noqa: E402
from chaos_checks import check_campaign, jobs_left, orphans, print_table  # noqa: E402
from chaos_faults import (  # noqa: E402
    FAULTS,
    ArchiveServer,
    Chaos,
    PostgresServer,
    inject,
)

from arihpc.mous import disk_name  # noqa: E402
from arihpc.sites.command import run_command  # noqa: E402
from arihpc.store.campaign import CampaignStore  # noqa: E402

SITES = ("ci-slurm", "ci-torque", "ci-pbspro")
FAIL_SHARE = {"casa-version": 0.02, "download": 0.02, "importasdm": 0.02, "oom": 0.02,
              "segfault": 0.02, "tclean": 0.02, "unknown": 0.02, "unsupported-mode": 0.02}
CONFIG = """arihpc:
  store-wait-s: 300
  planning: {{median-memory-gb: 0.15, min-memory-gb: 0.1}}
  # Predictions until the campaign has history: the archive on 127.0.0.1 is fast.
  runner: {{walltime-margin-s: 5, predict-min-s: 1, predict-s-per-gb: {{fetch: 0.02}}}}
  failures:
    retry:
      # The faults add to the drawn failures: a MOUS drawn to fail a download once may meet
      # the archive down too, a MOUS drawn to exceed its memory may be the one made to,
      # and one drawn to fail unknown may meet the full filesystem after its free space came back.
      download: {{retries: 4, backoff-s: 2}}
      oom: {{retries: 2, memory-factor: 2}}
      unknown: {{retries: 2}}
      disk-space: {{retries: 2, backoff-s: 3}}
      lock: {{retries: 3, backoff-s: 5}}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true",
                        help="a few hundred MOUS and a fault every few seconds (the test suite)")
    parser.add_argument("--mous", type=int, help="MOUS in the export (default 5000; quick 300)")
    parser.add_argument("--seed", type=int, default=1, help="draws the export and the faults")
    parser.add_argument("--store", default=os.environ.get("ARIHPC_TEST_POSTGRES_URL"),
                        help="PostgreSQL server URL (a fresh database is made on it)")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--fault-every", type=float,
                        help="mean seconds between faults (default 40; quick 6)")
    parser.add_argument("--cpu-s-per-gb", type=float, default=0.008,
                        help="the emulator's CPU per GB of raw data in each stage")
    parser.add_argument("--timeout", type=float, help="give up after S seconds (default 3 h; "
                                                      "quick 15 min)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database and DIR")
    args = parser.parse_args(argv)
    args.mous = args.mous or (300 if args.quick else 5000)
    args.fault_every = args.fault_every or (6.0 if args.quick else 40.0)
    args.timeout = args.timeout or (900.0 if args.quick else 3 * 3600.0)
    if not args.store:
        parser.error("no PostgreSQL: give --store URL or run under scripts/test.sh")
    return args


def fresh_database(server_url: str, name: str) -> str:
    """A new empty database on the server of ``server_url``; its URL."""
    server = sa.make_url(server_url)
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


def arihpc(url: str, *args: str, timeout: float = 600) -> str:
    return run_command([sys.executable, "-m", "arihpc.cli", "--store", url, *args],
                       timeout=timeout).stdout


def build_export(url: str, folder: Path, count: int, seed: int) -> list[str]:
    """An Archive Query export of ``count`` MOUS and their sizes, imported and selected."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.exp(rng.normal(np.log(13e9), 1.0, count)), 1e9, 100e9).astype(np.int64)
    uids = [f"uid://A001/X{9000 + i // 4096:x}/X{i % 4096 + 1:x}" for i in range(count)]
    rows = ["Member ous id\tProject code\tQA2 Status\tArray"]
    rows += [f"{uid}\t{(2013, 2015, 2016)[i % 3]}.1.{i:05d}.S\tPASS\t12m"
             for i, uid in enumerate(uids)]
    (folder / "export.tsv").write_text("\n".join(rows) + "\n")
    (folder / "sizes.csv").write_text("uid,size_bytes,size_source\n" + "".join(
        f"{uid},{size},datalink\n" for uid, size in zip(uids, sizes)))
    arihpc(url, "catalog", "import", str(folder / "export.tsv"), str(folder / "sizes.csv"))
    arihpc(url, "select")
    return uids


def build_archive(root: Path, uids: list[str]) -> None:
    """Each MOUS's folder: one small raw file and the MANIFEST.json the fetch stage reads."""
    import hashlib
    for uid in uids:
        folder = root / disk_name(uid)
        folder.mkdir(parents=True, exist_ok=True)
        data = (uid * 64).encode()
        name = f"member.{disk_name(uid)}.asdm.sdm.tar"
        (folder / name).write_bytes(data)
        (folder / "MANIFEST.json").write_text(json.dumps({"files": [
            {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}))


def mount_work_fs(path: Path, size_mb: int) -> Path | None:
    """A small tmpfs for the sites' work directories (root only); None elsewhere."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None
    run_command(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                timeout=30)
    return path


def site_profiles(folder: Path, work: Path) -> dict[str, Path]:
    """The CI site profiles with 1-minute jobs and their work directories under ``work``."""
    paths = {}
    for site in SITES:
        text = (ROOT / "site-configs" / f"{site}.yaml").read_text()
        text = (text.replace("work-dir: /tmp/arihpc-ci/work", f"work-dir: {work}/{site}")
                .replace('walltime: "00:10:00"', 'walltime: "00:01:00"')
                .replace('drain-margin: "00:01:00"', 'drain-margin: "00:00:10"'))
        paths[site] = folder / f"{site}.yaml"
        paths[site].write_text(text)
    return paths


class Orchestrators:
    """One ``arihpc run`` per site; each run's log in DIR/logs/SITE.N.log."""

    def __init__(self, url: str, folder: Path, profiles: dict[str, Path], options: dict):
        self.url, self.folder, self.profiles, self.options = url, folder, profiles, options
        self.running: dict[str, subprocess.Popen] = {}
        self.runs: dict[str, int] = {}
        self.exits: list[tuple[str, int, Path]] = []      # (site, status, log) of each run

    def log(self, site: str) -> Path:
        return self.folder / "logs" / f"{site}.{self.runs[site]}.log"

    def start(self, site: str) -> None:
        self.runs[site] = self.runs.get(site, 0) + 1
        self.log(site).parent.mkdir(exist_ok=True)
        with open(self.log(site), "w") as out:
            self.running[site] = subprocess.Popen(
                [sys.executable, "-m", "arihpc.cli", "--store", self.url, "--config",
                 str(self.folder / "chaos.yaml"), "-v", "run", "--site",
                 str(self.profiles[site]), "--payload", "emulator",
                 "--payload-options", json.dumps(self.options)],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)

    def kill_and_restart(self, site: str) -> None:
        process = self.running[site]
        process.kill()
        process.wait()
        self.exits.append((site, -9, self.log(site)))   # ours: not a crash
        self.start(site)

    def poll(self) -> list[str]:
        """Sites whose run ended since the last call (a run ending in error is restarted: the
        campaign goes on, and the error counts against the invariants)."""
        ended = []
        for site, process in list(self.running.items()):
            if process.poll() is None:
                continue
            self.exits.append((site, process.returncode, self.log(site)))
            del self.running[site]
            ended.append(site)
            if process.returncode != 0:
                self.start(site)
        return ended

    def stop_all(self) -> None:
        for site, process in self.running.items():
            process.terminate()
        for site, process in self.running.items():
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()


def running_uids(url: str):
    store = CampaignStore.open(url)

    def uids() -> list[str]:
        try:
            return [row["uid"] for row in store.status()["running"]]
        except sa.exc.DBAPIError:
            return []               # the server is restarting
    return uids


def fault_plan(rng: random.Random, kinds: list[str]) -> list[str]:
    """Every kind in turn, the order of each round shuffled."""
    order = []
    for _ in range(100):
        round_ = list(kinds)
        rng.shuffle(round_)
        order += round_
    return order


def campaign_ended(url: str) -> bool:
    store = CampaignStore.open(url)
    try:
        return store.remaining() == 0
    except sa.exc.DBAPIError:
        return False
    finally:
        store.close()


def run_campaign(args: argparse.Namespace, chaos: Chaos, orchestrators: Orchestrators,
                 url: str) -> bool:
    """Start the sites, inject faults until every site's run has ended with the campaign
    done; False on timeout."""
    rng = random.Random(args.seed)
    plan = fault_plan(rng, sorted(FAULTS))
    for site in SITES:
        orchestrators.start(site)
    began = time.time()
    next_fault = began + rng.expovariate(1 / args.fault_every)
    while time.time() - began < args.timeout:
        orchestrators.poll()
        if not orchestrators.running and campaign_ended(url):
            return True
        if time.time() >= next_fault and orchestrators.running:
            kind = plan.pop(0)
            what = inject(chaos, rng, kind)
            print(f"{time.time() - began:7.1f} s  {kind:18} {what or 'nothing to do it to'}",
                  flush=True)
            if what is None:
                plan.insert(1, kind)            # again soon
            next_fault = time.time() + rng.expovariate(1 / args.fault_every)
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="arihpc-chaos."))
    folder.mkdir(parents=True, exist_ok=True)
    url = fresh_database(args.store, f"arihpc_chaos_{args.seed}_{os.getpid()}")
    work_fs = mount_work_fs(folder / "work", 256 if args.quick else 1024)
    archive = ArchiveServer(folder / "archive", _free_port())
    try:
        return chaos_run(args, folder, url, work_fs, archive)
    finally:
        archive.stop()
        if work_fs is not None:
            run_command(["umount", "-l", str(work_fs)], timeout=60, check=False)
        if not args.keep:
            drop_database(url)
            shutil.rmtree(folder, ignore_errors=True)


def chaos_run(args, folder: Path, url: str, work_fs: Path | None, archive: ArchiveServer) -> int:
    print(f"chaos campaign: {args.mous} MOUS, seed {args.seed}, store {url}, dir {folder}",
          flush=True)
    uids = build_export(url, folder, args.mous, args.seed)
    build_archive(archive.root, uids)
    archive.start()
    (folder / "chaos.yaml").write_text(CONFIG.format())
    (folder / "faults").mkdir(exist_ok=True)
    options = {"source": f"http://127.0.0.1:{archive.port}/{{uid}}/",
               "cpu-s-per-gb": args.cpu_s_per_gb, "memory-mb-per-gb": 0.5,
               "output-mb-per-gb": 0, "stage-range": [2, 4], "fail-share": FAIL_SHARE,
               "fail-seed": args.seed, "trace": str(folder / "trace.jsonl"),
               "fault-dir": str(folder / "faults")}
    orchestrators = Orchestrators(url, folder, site_profiles(folder, folder / "work"), options)
    chaos = Chaos(list(SITES), orchestrators.kill_and_restart,
                  lambda: sorted(orchestrators.running), archive, work_fs,
                  folder / "faults", PostgresServer.from_env(), running_uids(url))
    jobcomp_offset = slurm_jobcomp().stat().st_size     # earlier lines are other runs' jobs
    began = time.time()
    try:
        finished = run_campaign(args, chaos, orchestrators, url)
    finally:
        orchestrators.stop_all()
    settle(folder)
    figures = check_campaign(url, folder, uids, SITES, chaos, orchestrators.exits,
                             began, time.time(), finished, jobcomp_offset)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0 if figures["ok"] else 1


def settle(folder: Path, grace_s: float = 60.0) -> None:
    """Give batch jobs being cancelled and their processes time to go (a job ends some
    seconds after its scancel) before they are counted as left."""
    end = time.time() + grace_s
    while time.time() < end and (jobs_left(SITES) or orphans(folder, SITES)):
        time.sleep(2)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
