"""The site's dask workers as the orchestrator sees them: node class, deadline, load.

Each worker's deadline (when it leaves, from its job prologue) is read once with
``client.run(probe)``. Every MOUS goes to a chosen worker with a free slot. A MOUS that yielded
on a worker short of time waits, parked, until a worker with enough time left has a free
slot; when none has, idle workers with too little time drain: each is retired once idle, and
a fresh job takes its place.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

from distributed import Client, wait

from arihpc.jobs.probe import probe
from arihpc.sites.profile import SiteProfile

log = logging.getLogger(__name__)
FETCH_PREFIX = "fetch-"         # keys of fetch-ahead tasks (I/O slots, not MOUS slots)


async def _scheduler_view(client: Client) -> tuple[dict, dict, dict]:
    """The scheduler's workers, what each one processes and what it holds: the three
    requests of scheduler_info, processing and has_what at once, one round trip in all."""
    identity, processing, holding = await asyncio.gather(
        client.scheduler.identity(n_workers=-1), client.scheduler.processing(workers=None),
        client.scheduler.has_what(workers=None))
    return identity["workers"], processing, holding


class WorkerPool:
    """Live workers of one site's scheduler; ``refresh`` reads the scheduler again."""

    def __init__(self, client: Client):
        self.client = client
        self.info: dict[str, dict] = {}         # address -> scheduler's worker info
        self.deadlines: dict[str, float] = {}
        self.classes: dict[str, str] = {}
        self.processing: dict[str, list] = {}
        self.holding: dict[str, list] = {}
        self.draining: set[str] = set()
        self.joined = threading.Event()         # a worker joined since the last refresh

    def watch(self) -> None:
        """From now on, set ``joined`` the moment a worker joins: a fresh job's worker gets
        its MOUS then, not up to a round later (the scheduler's "all" events)."""
        self.client.subscribe_topic("all", self._event)

    def unwatch(self) -> None:
        """Stop listening before the client closes: the scheduler would send this client's
        own remove-client event down a closing connection, and log that as CRITICAL."""
        self.client.unsubscribe_topic("all")

    def _event(self, event: tuple) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("action") == "add-worker":
            self.joined.set()

    def refresh(self) -> None:
        self.info, self.processing, self.holding = self.client.sync(_scheduler_view,
                                                                    self.client)
        new = [address for address in self.info if address not in self.deadlines]
        if new:
            for address, report in self.client.run(probe, workers=new,
                                                    on_error="return").items():
                if isinstance(report, dict):     # else it left while we asked
                    self.deadlines[address] = float(report["deadline"] or math.inf)
                    self.classes[address] = report["node_class"]
        for known in (self.deadlines, self.classes):
            for address in set(known) - set(self.info):
                del known[address]
        self.draining &= set(self.info)

    def alive(self, address: str) -> bool:
        return address in self.info

    def compute_load(self, address: str) -> int:
        return sum(1 for key in self.processing.get(address, ())
                   if not str(key).startswith(FETCH_PREFIX))

    def names(self) -> set[str]:
        """Names of the connected workers (each one's batch job, as the cluster names it)."""
        return {info["name"] for info in self.info.values()}

    def busy(self) -> set[str]:
        """Names of workers running a task or holding a result: never the ones to let go."""
        return {info["name"] for address, info in self.info.items()
                if self.processing.get(address) or self.holding.get(address)}

    def draining_per_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for address in self.draining:
            name = self.classes.get(address, "")
            counts[name] = counts.get(name, 0) + 1
        return counts

    def pick(self, node_class: str, needs_s: float, ours: dict[str, int]) -> str | None:
        """A worker of this class with a free MOUS slot and ``needs_s`` seconds left (the
        one with the most time left), or None. ``ours``: the slots our MOUS hold on each
        worker, those sent this round included (the scheduler's view may not show them yet)."""
        now, best = time.time(), None
        for address, info in self.info.items():
            if self.classes.get(address) != node_class or address in self.draining:
                continue
            slots = info.get("resources", {}).get("slots", 1)
            free = slots - max(self.compute_load(address), ours.get(address, 0))
            left = self.deadlines.get(address, 0) - now
            if free > 0 and left >= needs_s and (best is None or left > best[0]):
                best = (left, address)
        return best[1] if best else None

    def _idle(self, address: str, ours: dict[str, int]) -> bool:
        return not (self.processing.get(address) or self.holding.get(address)
                    or ours.get(address))

    def drain_short(self, needs_s: float, ours: dict[str, int]) -> None:
        """Idle workers with less than ``needs_s`` left can run nothing that waits: drain."""
        now = time.time()
        for address in self.info:
            if self._idle(address, ours) and self.deadlines.get(address, math.inf) - now < needs_s:
                self.draining.add(address)

    def retire_idle_draining(self, ours: dict[str, int]) -> None:
        """Let draining workers go once they run nothing; their jobs end, fresh ones follow.
        ``ours``: as for ``pick``; a worker just sent a MOUS is not idle."""
        idle = [a for a in self.draining if self._idle(a, ours)]
        if idle:
            log.info("retiring %d drained worker(s)", len(idle))
            self.client.retire_workers(idle, close_workers=True)
            self.draining -= set(idle)


def slots_held(items: list) -> dict[str, int]:
    """MOUS slots the orchestrator's computing MOUS (``campaign.Item``) hold, per worker."""
    held: dict[str, int] = {}
    for item in items:
        if item.phase == "computing" and item.worker:
            held[item.worker] = held.get(item.worker, 0) + 1
    return held


def jobs_wanted(items: list, profile: SiteProfile, draining: dict[str, int]) -> dict[str, int]:
    """Jobs per node class: MOUS slots for what computes or waits to (the first MOUS up to
    the site's capacity, in order), I/O slots for fetches ahead, and a replacement for each
    draining worker (``draining``: per class)."""
    slots = {c.name: c.slots for c in profile.node_classes}
    compute: dict[str, int] = {}
    fetch: dict[str, int] = {}
    computes = 0
    for item in items:
        into = fetch
        if item.phase != "fetching" and computes < profile.mous_slots:
            into, computes = compute, computes + 1
        into[item.node_class] = into.get(item.node_class, 0) + 1
    io = max(1, profile.storage.io_slots)
    wanted = {name: max(math.ceil(compute.get(name, 0) / slots[name]),
                        math.ceil(fetch.get(name, 0) / io) if not compute else 0)
              for name in set(compute) | set(fetch)}
    for name, count in draining.items():
        if name in wanted:
            wanted[name] += count
    return wanted


def wait_for_news(futures: list, joined: threading.Event, tick_s: float = 1.0,
                  step_s: float = 0.1) -> list:
    """The futures that finished, once one has, or a worker joined, or ``tick_s`` passed.
    dask's ``wait`` cannot also wait for a worker, and returns at once given no futures (the
    orchestrator would spin, asking the scheduler and the batch system each time): in steps."""
    deadline = time.monotonic() + tick_s
    finished: list = []
    while not finished and not joined.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not futures:
            joined.wait(left)
            continue
        try:
            finished = list(wait(futures, timeout=min(step_s, left),
                                 return_when="FIRST_COMPLETED").done)
        except TimeoutError:            # dask's wait raises when nothing finished
            pass
    joined.clear()                      # the refresh that follows sees the new worker
    return finished


def fetch_results(client: Client, finished: list) -> dict:
    """The result of each finished future, all in one round trip to the workers (what
    ``Future.result`` does for one, within 60 s), or the exception of a future whose worker
    died with its result (then it is cancelled: dask would run it again)."""
    ready = [future for future in finished if future.status == "finished"]
    try:        # Client.gather has no timeout; Future.result calls _gather like this
        results = dict(zip(ready, client.sync(client._gather, ready, callback_timeout=60)))
    except Exception:               # a worker left with a result: one by one, to see which
        results = {}
    for future in finished:
        if future not in results:
            try:
                results[future] = future.result(timeout=60)
            except Exception as e:
                future.cancel()
                results[future] = e
    return results
