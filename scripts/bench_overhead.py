#!/usr/bin/env python3
"""Time arihpc's own overhead: no-op MOUS through the orchestrator against raw dask.

    .venv/bin/python scripts/bench_overhead.py [--mous 5000] [--command-mous 1000]
                                               [--workers 2] [--slots 4]
                                               [--store URL] [--keep DIR] [--profile]

Fills a fresh SQLite store (or the given empty one) with selected MOUS and runs the real
orchestrator over them on a ``local`` site (a dask LocalCluster) with the ``noop`` payload:
each MOUS is claimed in the store, gets an attempt, is sent to a worker with a free slot, its
runner takes the lock file in its work directory, runs its one stage (a Python call that does
nothing, as a raw dask no-op does nothing), writes that stage's checkpoint (temp file, fsync,
rename), announces its outcome, and the orchestrator records it in the store. Once the first
MOUS are seen to take milliseconds, a free slot gets a batch of them, as ``arihpc run`` does
(``batching`` in arihpc.yaml): one dask task, run one after another. Before that, on
the same workers, it times raw ``client.map`` of a no-op Python function + gather, and (for
reference only) raw ``client.map`` of one ``true`` command each (the floor of one external
command per item) and raw dask used as arihpc uses it for MOUS that are not batched (one
no-op pinned to each free slot, announced, one ``client.map`` per worker per round). After
it, for reference, ``--command-mous`` MOUS of the ``noop-command`` payload, whose stage is
``true`` under the process runner and its guard, as every real stage is (in a second SQLite
store). The workers run the paths once before anything is timed. It
prints items per second and CPU time per item (where it went) of each, the store's commits
and statements per MOUS, and the ratio arihpc / raw dask; the goal is a ratio of at least 0.5.
Exit status 1 when the store is not as it should be after the run (goal met or not: the
figures are the result).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dask
import dask.config
import distributed
import sqlalchemy as sa
from distributed import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arihpc.campaign.orchestrator import Orchestrator  # noqa: E402
from arihpc.campaign.outcomes import Tally  # noqa: E402
from arihpc.mous import disk_name  # noqa: E402
from arihpc.runner.workdir import checkpoint_path  # noqa: E402
from arihpc.sites.cluster import SiteCluster  # noqa: E402
from arihpc.sites.command import run_command  # noqa: E402
from arihpc.sites.profile import SiteProfile, load_profile  # noqa: E402
from arihpc.store.campaign import CampaignStore  # noqa: E402
from arihpc.store.schema import attempts, mous, stages  # noqa: E402

GOAL = 0.5              # arihpc keeps at least half of raw dask's items per second
WARMUP = 50             # items of each kind run before anything is timed
DISPATCH_TOPIC = "bench-dispatch"
# A no-op MOUS needs no memory: the planning model's median (8 GB) would not fit a laptop.
NOOP_SETTINGS = {"arihpc.planning.median-memory-gb": 0.1,
                 "arihpc.planning.min-memory-gb": 0.1}


def uids(count: int, group: int = 0x2000) -> list[str]:
    """``count`` valid ALMA MOUS uids: uid://A001/X2000/X1, ..."""
    return [f"uid://A001/X{group:x}/X{i:x}" for i in range(1, count + 1)]


def fill(store: CampaignStore, names: list[str]) -> None:
    """The MOUS as ``catalog import`` + ``select`` leave them: selected, prioritised, new."""
    now = time.time()
    rows = [{"uid": uid, "project": "2015.1.00001.S", "qa2": "PASS", "imported_at": now,
             "selected": True, "tier": 1, "reasons": "", "flags": "", "priority": i + 1,
             "decided_at": now, "state": "new"} for i, uid in enumerate(names)]
    with store.engine.begin() as conn:
        conn.execute(mous.insert(), rows)


def site_profile(folder: Path, workers: int, slots: int) -> SiteProfile:
    """A local site of ``workers`` jobs with ``slots`` MOUS each; no fetch ahead (io-slots 0):
    a no-op MOUS has nothing to fetch, so each MOUS is one dask task, like each raw item."""
    path = folder / "bench.yaml"
    path.write_text(f"batch-system: local\nmax-jobs: {workers}\nx11: false\n"
                    f"node-classes:\n  bench: {{cores: 1, memory: 2GB, slots: {slots}}}\n"
                    f"storage: {{kind: local, work-dir: {folder}/work, scratch: {folder}, "
                    "io-slots: 0}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    return load_profile(str(path))


def run_arihpc(store: CampaignStore, profile: SiteProfile, cluster: SiteCluster,
               client: Client, payload: str = "noop") -> Tally:
    """The orchestrator over every claimable MOUS of the store, payload ``noop`` (or
    ``noop-command``): the code path of ``arihpc run``."""
    with dask.config.set(NOOP_SETTINGS):
        orchestrator = Orchestrator(store, profile, cluster, client, payload, {},
                                    Path(profile.storage.work_dir))
        return orchestrator.run(threading.Event())


def check(store: CampaignStore, workroot: Path, names: list[str]) -> dict[str, int]:
    """What the store and the work directories hold after a run of ``names``."""
    with store.engine.connect() as conn:
        def count(table, where=sa.true()) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(table)
                                .where(where)).scalar_one()
        found = {"done": count(mous, mous.c.state == "done"),
                 "attempts": count(attempts),
                 "attempts done": count(attempts, attempts.c.outcome == "done"),
                 "stages": count(stages)}
    found["checkpoints"] = sum(checkpoint_path(workroot / disk_name(uid), "noop").is_file()
                               for uid in names)
    found["locks left"] = sum((workroot / disk_name(uid) / "arihpc.lock").exists()
                              for uid in names)
    return found


def noop(item: int) -> int:
    return item


def true_command(item: int) -> int:
    return run_command(["true"]).returncode + item


def raw_map(client: Client, count: int,
            function: Callable[[int], int] = noop) -> Callable[[], None]:
    """``client.map`` of ``count`` items + gather."""
    def run() -> None:
        client.gather(client.map(function, range(count), pure=False))
    return run


def announced_noop(item: int) -> int:
    """A no-op that announces its end as ``run_in_worker`` does."""
    worker = distributed.get_worker()
    worker.log_event(DISPATCH_TOPIC, json.dumps({"key": worker.get_current_task()}))
    return item


def slot_dispatch(client: Client, count: int, slots: int) -> Callable[[], None]:
    """arihpc's way of using dask for MOUS that are not batched, with nothing of arihpc in
    it: every MOUS slot of every worker kept busy with one task pinned to it; the tasks
    announce their end; each round sends one ``client.map`` per worker for the slots that
    came free."""
    def run() -> None:
        ended: list[str] = []
        lock, wake = threading.Lock(), threading.Event()

        def on_end(event: tuple) -> None:
            with lock:
                ended.append(json.loads(event[1])["key"])
            wake.set()
        client.subscribe_topic(DISPATCH_TOPIC, on_end)
        futures: dict[str, tuple] = {}
        sent = 0

        def send(worker: str, free: int) -> None:
            nonlocal sent
            items = range(sent, min(sent + free, count))
            sent += len(items)
            for future in client.map(announced_noop, items, key=[f"dispatch-{i}" for i in items],
                                     pure=False, resources={"slots": 1}, workers=[worker]):
                futures[future.key] = (future, worker)
        for worker in client.scheduler_info(n_workers=-1)["workers"]:
            send(worker, slots)
        while futures:
            wake.wait(1)
            wake.clear()
            with lock:
                keys, ended[:] = list(ended), []
            freed: dict[str, int] = {}
            for key in keys:
                future, worker = futures.pop(key)
                future.release()
                freed[worker] = freed.get(worker, 0) + 1
            for worker, free in freed.items():
                send(worker, free)
        client.unsubscribe_topic(DISPATCH_TOPIC)
    return run


def cpu_times() -> tuple[float, float]:
    """CPU seconds of this process, and of its children that ended (stage commands)."""
    times = os.times()
    return times.user + times.system, times.children_user + times.children_system


@dataclass
class Timing:
    """Wall time and where the CPU went: this thread (the orchestrator's loop), this
    process's other threads (the dask client's and, with a LocalCluster, the scheduler's
    event loop), the worker processes, and their children (the stage commands)."""

    wall_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    items: int | None = None            # when not --mous


def timed(client: Client, run: Callable[[], object], profile_to: Path | None = None):
    """(Timing, what ``run`` returned), under cProfile when asked."""
    profiler = cProfile.Profile() if profile_to else None
    workers = client.run(cpu_times)
    here, thread, start = cpu_times()[0], time.thread_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    returned = run()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_to)
    timing = Timing(time.perf_counter() - start)
    timing.cpu["this thread"] = time.thread_time() - thread
    timing.cpu["scheduler+client"] = cpu_times()[0] - here - timing.cpu["this thread"]
    after = client.run(cpu_times)
    timing.cpu["workers"] = sum(after[w][0] - workers[w][0] for w in after)
    timing.cpu["their commands"] = sum(after[w][1] - workers[w][1] for w in after)
    return timing, returned


def count_sql(store: CampaignStore) -> dict[str, int]:
    """Commits (each one fsync of an SQLite store) and statements from now on."""
    counts = {"commits": 0, "statements": 0}

    def commit(_conn) -> None:
        counts["commits"] += 1

    def statement(*_args) -> None:
        counts["statements"] += 1
    sa.event.listen(store.engine, "commit", commit)
    sa.event.listen(store.engine, "before_cursor_execute", statement)
    return counts


def start_site(profile: SiteProfile) -> tuple[SiteCluster, Client]:
    """The site's scheduler and all its workers, up and connected."""
    cluster = SiteCluster.start(profile)
    client = Client(cluster.cluster)
    cluster.add_jobs(profile.max_jobs)
    client.wait_for_workers(profile.max_jobs, timeout=120)
    return cluster, client


def warm_up(folder: Path, profile: SiteProfile, cluster: SiteCluster, client: Client) -> None:
    """Every worker imports and runs both paths once before anything is timed."""
    raw_map(client, WARMUP)()
    raw_map(client, WARMUP, true_command)()
    slot_dispatch(client, WARMUP, profile.node_classes[0].slots)()
    store = CampaignStore.open(f"sqlite:///{folder}/warmup.db")
    fill(store, uids(WARMUP, group=0x2001))
    run_arihpc(store, profile, cluster, client)
    store.close()


def machine() -> str:
    """This machine, its load and the date, for the record."""
    return (f"{platform.node()}: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
            f"{platform.machine()}, Python {platform.python_version()}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}; load {os.getloadavg()[0]:.2f}; "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mous", type=int, default=5000, help="no-op MOUS (and raw items)")
    parser.add_argument("--command-mous", type=int, default=1000,
                        help="noop-command MOUS run after, for reference (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="dask workers (local jobs)")
    parser.add_argument("--slots", type=int, default=4, help="MOUS one worker runs at once "
                        "(its threads; raw items use the same threads)")
    parser.add_argument("--store", help="an empty store URL (default: a fresh SQLite file)")
    parser.add_argument("--keep", type=Path, help="keep the store, work directories and "
                        "profile in this folder (created) instead of a temporary one")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the orchestrator and print where its time goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")   # local workers too
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="arihpc-bench-") as tmp:
        folder = (args.keep or Path(tmp)).resolve()
        return bench(args, folder)


def bench(args: argparse.Namespace, folder: Path) -> int:
    print(f"machine: {machine()}")
    store = CampaignStore.open(args.store or f"sqlite:///{folder}/bench.db")
    names = uids(args.mous)
    fill(store, names)
    profile = site_profile(folder, args.workers, args.slots)
    print(f"store {store.engine.url.render_as_string()}: {len(names):,} selected no-op MOUS; "
          f"site: {args.workers} local worker(s) x {args.slots} MOUS slot(s); work {folder}/work")
    cluster, client = start_site(profile)
    try:
        warm_up(folder, profile, cluster, client)
        runs = {"raw": timed(client, raw_map(client, args.mous))[0],
                "command": timed(client, raw_map(client, args.mous, true_command))[0],
                "dispatch": timed(client, slot_dispatch(client, args.mous, args.slots))[0]}
        sql = count_sql(store)
        runs["arihpc"], tally = timed(client, lambda: run_arihpc(store, profile, cluster, client),
                                      folder / "orchestrator.prof" if args.profile else None)
        if args.command_mous:
            runs["arihpc-command"] = run_command_payload(args, folder, profile, cluster, client)
    finally:
        client.close()
        cluster.close()
    found = check(store, Path(profile.storage.work_dir), names)
    store.close()
    found.update({f"SQL {k}": v for k, v in sql.items()})
    return report(args, runs, tally, found, folder)


def run_command_payload(args: argparse.Namespace, folder: Path, profile: SiteProfile,
                        cluster: SiteCluster, client: Client) -> Timing:
    """``--command-mous`` MOUS of payload ``noop-command`` (one guarded ``true`` each), in a
    store of their own: what starting a stage's process adds to each MOUS."""
    store = CampaignStore.open(f"sqlite:///{folder}/bench-command.db")
    fill(store, uids(args.command_mous, group=0x2002))
    try:
        timing, tally = timed(client, lambda: run_arihpc(store, profile, cluster, client,
                                                         "noop-command"))
    finally:
        store.close()
    if tally.done != args.command_mous:
        raise RuntimeError(f"noop-command: {tally.done} of {args.command_mous} MOUS done")
    timing.items = args.command_mous
    return timing


LABELS = {"raw": "raw dask, client.map(noop) + gather",
          "command": "raw dask, client.map(one `true` each)",
          "dispatch": "raw dask, one no-op at a time pinned to each slot",
          "arihpc": "arihpc, no-op MOUS through `arihpc run`'s orchestrator",
          "arihpc-command": "arihpc, noop-command MOUS (one guarded `true` stage each)"}


def report(args, runs: dict[str, Timing], tally: Tally, found: dict[str, int],
           folder: Path) -> int:
    """Print the figures; exit status 0 when the store is right (goal met or not: the
    figures are the result), 1 when it is not."""
    n = args.mous
    rate = {name: (run.items or n) / run.wall_s for name, run in runs.items()}
    for name, run in runs.items():
        count = run.items or n
        cpu = ", ".join(f"{where} {1000 * s / count:.2f}" for where, s in run.cpu.items())
        print(f"{LABELS[name]:57} {count:,} in {run.wall_s:6.2f} s = {rate[name]:7.1f} "
              f"items/s; CPU ms per item: {cpu}")
    print("  (the `true` lines are a reference only: what one external command per item costs;")
    print("   the pinned line is dask used as arihpc uses it for MOUS that are not batched, one")
    print("   task in each MOUS slot, without arihpc's own work)")
    print(f"store after the arihpc run: {', '.join(f'{k} {v:,}' for k, v in found.items())}; "
          f"tally: {tally.done} done, {tally.failed} failed, in {tally.tasks:,} dask tasks "
          f"({n / max(tally.tasks, 1):.1f} MOUS per task)")
    print(f"  per MOUS: {found['SQL commits'] / n:.2f} store commits, "
          f"{found['SQL statements'] / n:.1f} SQL statements; 2 fsyncs for its checkpoint")
    ratio = rate["arihpc"] / rate["raw"]
    met = ratio >= GOAL
    print(f"ratio arihpc / raw dask: {ratio:.3f} (goal >= {GOAL:g}): "
          f"{'goal met' if met else 'not met'}")
    if args.profile:
        print(f"orchestrator profile ({folder / 'orchestrator.prof'}), by own time:")
        pstats.Stats(str(folder / "orchestrator.prof")).sort_stats("tottime").print_stats(25)
    correct = found["done"] == n and found["checkpoints"] == n and found["attempts done"] == n
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
