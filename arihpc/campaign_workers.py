"""The site's dask workers as the orchestrator sees them: node class, deadline, load.

Each worker's deadline (when it leaves, from its job prologue) is read once with
``client.run(probe)``. A MOUS that yielded on a worker short of time waits, parked, until a
worker with enough time left has a free slot; the worker it yielded on drains: it is retired
once idle, and a fresh job takes its place.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from distributed import Client

from arihpc.jobs.probe import probe

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

    def pick(self, node_class: str, needs_s: float, taken: dict[str, int]) -> str | None:
        """A worker of this class with a free MOUS slot and ``needs_s`` seconds left (the
        one with the most time left), or None. ``taken``: slots promised this round."""
        now, best = time.time(), None
        for address, info in self.info.items():
            if self.classes.get(address) != node_class or address in self.draining:
                continue
            slots = info.get("resources", {}).get("slots", 1)
            free = slots - self.compute_load(address) - taken.get(address, 0)
            left = self.deadlines.get(address, 0) - now
            if free > 0 and left >= needs_s and (best is None or left > best[0]):
                best = (left, address)
        return best[1] if best else None

    def drain_short(self, needs_s: float) -> None:
        """Idle workers with less than ``needs_s`` left can run nothing that waits: drain."""
        now = time.time()
        for address in self.info:
            if not self.processing.get(address) and not self.holding.get(address) \
                    and self.deadlines.get(address, math.inf) - now < needs_s:
                self.draining.add(address)

    def retire_idle_draining(self) -> None:
        """Let draining workers go once they run nothing; their jobs end, fresh ones follow."""
        idle = [a for a in self.draining
                if not self.processing.get(a) and not self.holding.get(a)]
        if idle:
            log.info("retiring %d drained worker(s)", len(idle))
            self.client.retire_workers(idle, close_workers=True)
            self.draining -= set(idle)


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
