"""The site's dask workers as the orchestrator sees them: node class, deadline, load.

Each worker's deadline (when it leaves, from its job prologue) is read once with
``client.run(probe)``. Every MOUS goes to a chosen worker with a free slot. A MOUS that yielded
on a worker short of time waits, parked, until a worker with enough time left has a free
slot; when none has, idle workers with too little time drain: each is retired once idle, and
a fresh job takes its place.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time

from distributed import Client

from arihpc.runner.probe import probe
from arihpc.runner.run import OUTCOME_TOPIC
from arihpc.sites.profile import SiteProfile

log = logging.getLogger(__name__)
STEP_S = 0.25                   # how often a wait looks for tasks that ended unannounced


def _pool_view(dask_scheduler) -> dict[str, dict]:
    """Run on the scheduler: each worker's name and MOUS slots, and how many tasks it runs
    and results it holds; one small reply, not the scheduler's whole view."""
    return {address: {"name": state.name, "slots": state.resources.get("slots", 1),
                      "tasks": len(state.processing), "holding": len(state.has_what)}
            for address, state in dask_scheduler.workers.items()}


class WorkerPool:
    """Live workers of one site's scheduler; ``refresh`` reads the scheduler again."""

    def __init__(self, client: Client):
        self.client = client
        self.view: dict[str, dict] = {}         # address -> _pool_view's entry
        self.deadlines: dict[str, float] = {}
        self.classes: dict[str, str] = {}
        self.draining: set[str] = set()

    def refresh(self) -> None:
        self.view = self.client.run_on_scheduler(_pool_view)
        new = [address for address in self.view if address not in self.deadlines]
        if new:
            for address, report in self.client.run(probe, workers=new,
                                                    on_error="return").items():
                if isinstance(report, dict):     # else it left while we asked
                    self.deadlines[address] = float(report["deadline"] or math.inf)
                    self.classes[address] = report["node_class"]
        for known in (self.deadlines, self.classes):
            for address in set(known) - set(self.view):
                del known[address]
        self.draining &= set(self.view)

    def alive(self, address: str) -> bool:
        return address in self.view

    def names(self) -> set[str]:
        """Names of the connected workers (each one's batch job, as the cluster names it)."""
        return {entry["name"] for entry in self.view.values()}

    def _has_work(self, address: str) -> bool:
        entry = self.view.get(address, {})
        return bool(entry.get("tasks") or entry.get("holding"))

    def busy(self) -> set[str]:
        """Names of workers running a task or holding a result: never the ones to let go."""
        return {entry["name"] for address, entry in self.view.items() if self._has_work(address)}

    def draining_per_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for address in self.draining:
            name = self.classes.get(address, "")
            counts[name] = counts.get(name, 0) + 1
        return counts

    def pick(self, node_class: str, needs_s: float, ours: dict[str, int]) -> str | None:
        """A worker of this class with a free MOUS slot and ``needs_s`` seconds left (the
        one with the most time left), or None. ``ours``: the slots our MOUS hold on each
        worker, those sent this round included. Only ours count: the scheduler's view still
        shows a task whose outcome came and that this round released, and would hold its
        slot for a round more (a task not ours that still runs, one cancelled when its worker
        left, waits on the worker for its slot: the tasks' ``slots`` resource)."""
        now, best = time.time(), None
        for address, entry in self.view.items():
            if self.classes.get(address) != node_class or address in self.draining:
                continue
            free = entry["slots"] - ours.get(address, 0)
            left = self.deadlines.get(address, 0) - now
            if free > 0 and left >= needs_s and (best is None or left > best[0]):
                best = (left, address)
        return best[1] if best else None

    def _idle(self, address: str, ours: dict[str, int]) -> bool:
        return not (self._has_work(address) or ours.get(address))

    def drain_short(self, needs_s: float, ours: dict[str, int]) -> None:
        """Idle workers with less than ``needs_s`` left can run nothing that waits: drain."""
        now = time.time()
        for address in self.view:
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


def slots_held(futures: dict) -> dict[str, int]:
    """MOUS slots the orchestrator's tasks hold, per worker: one for each computing task
    (``futures``: future -> its ``outcomes.Item``s, one MOUS or a batch of short ones)."""
    held: dict[str, int] = {}
    for items in futures.values():
        if items[0].phase == "computing" and items[0].worker:
            held[items[0].worker] = held.get(items[0].worker, 0) + 1
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


class News:
    """What the orchestrator waits for: the outcomes ``run_in_worker`` announces (the
    scheduler forwards each one ahead of its task's completion, so reading it takes no round
    trip to a worker) and workers joining (the scheduler's "all" events)."""

    def __init__(self, client: Client):
        self.client = client
        self.announced: dict[str, list] = {}    # task key -> its outcomes
        self.joined = threading.Event()         # a worker joined since the last wait
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def watch(self) -> None:
        self.client.subscribe_topic("all", self._event)
        self.client.subscribe_topic(OUTCOME_TOPIC, self._outcome)

    def unwatch(self) -> None:
        """Stop listening before the client closes: the scheduler would send this client's
        own remove-client event down a closing connection, and log that as CRITICAL."""
        self.client.unsubscribe_topic("all")
        self.client.unsubscribe_topic(OUTCOME_TOPIC)

    def _event(self, event: tuple) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("action") == "add-worker":
            self.joined.set()
            self._wake.set()

    def _outcome(self, event: tuple) -> None:
        message = json.loads(event[1])
        with self._lock:
            self.announced[message["key"]] = message["replies"]
        self._wake.set()

    def take(self, key: str) -> list | None:
        """The announced outcomes of a task (once), or None."""
        with self._lock:
            return self.announced.pop(key, None)

    def forget(self, keys: set[str]) -> None:
        """Drop announcements of tasks no longer followed (cancelled, then ended anyway)."""
        with self._lock:
            for key in set(self.announced) - keys:
                del self.announced[key]

    def wait(self, futures: list, tick_s: float = 1.0) -> list:
        """The futures that finished or announced their outcome, once one has, or a worker
        joined, or ``tick_s`` passed. dask's ``wait`` cannot also wait for a worker, and
        returns at once given no futures (the orchestrator would spin)."""
        deadline = time.monotonic() + tick_s
        while True:
            self._wake.clear()          # what comes from now on wakes the wait below
            with self._lock:
                finished = [f for f in futures if f.key in self.announced or f.done()]
            left = deadline - time.monotonic()
            if finished or self.joined.is_set() or left <= 0:
                break
            # An end without an announcement (an error, a lost worker) shows at the next step.
            self._wake.wait(min(left, STEP_S))
        self.joined.clear()             # the refresh that follows sees the new worker
        return finished


def fetch_results(client: Client, finished: list) -> dict:
    """The result of each finished future, all in one round trip to the workers (what
    ``Future.result`` does for one, within 60 s), or the exception of a future whose worker
    died with its result (then it is cancelled: dask would run it again)."""
    if not finished:
        return {}
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
