"""The orchestrator: keeps one site busy with the right MOUS until the campaign is done.

It claims selected MOUS from the store in priority order (exclusive claims), submits
``run_in_worker`` to the site's dask scheduler with the MOUS's priority and resources, keeps
the batch queue topped up within the site's job limit, and turns every outcome into store
updates: done; yielded or interrupted -> resubmitted to continue from its next stage (a worker
that yielded cannot fit more work and is retired, a fresh job replaces it); failed -> the retry
policy. Only this process writes the store. Killed at any moment, the next run recovers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distributed import Client, wait

from arihpc import planning
from arihpc.jobs.failures import retry_policy
from arihpc.jobs.payloads import MousTask
from arihpc.jobs.runner import Outcome, retry_task, run_in_worker
from arihpc.mous import disk_name
from arihpc.sites.cluster import SiteCluster
from arihpc.sites.profile import NodeClass, SiteProfile
from arihpc.store_campaign import CampaignStore, Claim

log = logging.getLogger(__name__)
GB = 1e9


@dataclass
class Running:
    claim: Claim
    task: MousTask
    node_class: str
    attempt: int


@dataclass
class Tally:
    """What one ``arihpc run`` did, for its progress line and summary."""

    done: int = 0
    failed: int = 0
    resumed: int = 0
    retried: int = 0
    recovered: int = 0
    started: float = field(default_factory=time.time)


class Orchestrator:
    def __init__(self, store: CampaignStore, profile: SiteProfile, cluster: SiteCluster,
                 client: Client, payload: str, options: dict, workroot: Path,
                 limit: int | None = None, progress: Callable[[Tally], None] | None = None):
        self.store, self.profile, self.cluster, self.client = store, profile, cluster, client
        self.payload, self.options, self.workroot = payload, options, workroot
        self.limit, self.progress = limit, progress or (lambda tally: None)
        self.owner = f"{profile.name}@{time.time():.0f}"
        self.tally = Tally()
        self.running: dict = {}          # future -> Running
        self.claimed = 0

    @property
    def capacity(self) -> int:
        return self.profile.max_jobs * max(c.slots for c in self.profile.node_classes)

    def run(self, stop: threading.Event) -> Tally:
        """Work until nothing is left to claim and nothing runs, or ``stop`` is set."""
        self.tally.recovered = self.store.recover(self.profile.name)
        self.models = self._models()
        while not stop.is_set():
            self._fill()
            if not self.running:
                retry_at = self.store.next_retry_at()
                if retry_at is None or (self.limit is not None and self.claimed >= self.limit):
                    break
                stop.wait(min(max(0.0, retry_at - time.time()), 5.0))   # a retry backs off
                continue
            self.cluster.keep_jobs(self._jobs_wanted(), self._busy_workers())
            try:
                finished, _ = wait(list(self.running), timeout=1,
                                   return_when="FIRST_COMPLETED")
            except TimeoutError:            # dask's wait raises when nothing finished
                finished = []
            # Fetch every result before any worker is retired: a result lost with its worker
            # would make dask run the MOUS again.
            results = {future: self._result(future) for future in finished}
            for future in finished:
                self._settle(self.running.pop(future), results[future])
                future.release()
            self.progress(self.tally)
        if stop.is_set():
            self._abandon()
        return self.tally

    def _models(self) -> tuple[planning.PowerLaw, planning.PowerLaw]:
        runtime, memory = planning.default_models()
        sizes, hours, peaks = self.store.history()
        return (planning.fit(sizes, hours, runtime), planning.fit(sizes, peaks, memory))

    def _fill(self) -> None:
        room = self.capacity - len(self.running)
        if self.limit is not None:
            room = min(room, self.limit - self.claimed)
        for claim in self.store.claim(self.profile.name, self.owner, room):
            self.claimed += 1
            self._submit(claim, claim.attempts + 1, claim.memory_gb)

    def _node_class(self, memory_gb: float, size_gb: float | None) -> NodeClass | None:
        return planning.node_class_for(self.profile, memory_gb, size_gb)

    def _submit(self, claim: Claim, attempt: int, memory_gb: float | None) -> None:
        size_gb = claim.size_bytes / GB if claim.size_bytes else None
        if memory_gb is None:
            memory_gb = planning.predict(size_gb, *self.models).memory_gb
        node_class = self._node_class(memory_gb, size_gb)
        result = {"uid": claim.uid, "status": "failed", "error_class": "needs-bigger-node",
                  "message": f"no node class of {self.profile.name} has {memory_gb:g} GB"}
        if node_class is None:
            self.store.finish_attempt(self.store.start_attempt(claim.uid, self.profile.name,
                                                               memory_gb), result, "failed")
            self.tally.failed += 1
            return
        task = MousTask(claim.uid, self.workroot / disk_name(claim.uid), self.payload,
                        size_gb, memory_gb, attempt, self.options)
        number = self.store.start_attempt(claim.uid, self.profile.name, memory_gb)
        future = self.client.submit(run_in_worker, task, key=f"{disk_name(claim.uid)}-a{number}",
                                    priority=-claim.priority, pure=False,
                                    resources={"slots": 1, "memory_gb": memory_gb})
        self.running[future] = Running(claim, task, node_class.name, number)

    def _busy_workers(self) -> set[str]:
        processing, holding = self.client.processing(), self.client.has_what()
        workers = self.client.scheduler_info()["workers"]
        return {info["name"] for address, info in workers.items()
                if processing.get(address) or holding.get(address)}

    def _jobs_wanted(self) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for item in self.running.values():
            wanted[item.node_class] = wanted.get(item.node_class, 0) + 1
        slots = {c.name: c.slots for c in self.profile.node_classes}
        return {name: math.ceil(n / slots[name]) for name, n in wanted.items()}

    def _result(self, future) -> dict:
        item = self.running[future]
        try:
            return future.result(timeout=60)
        except Exception as e:          # the worker died under it (walltime, node failure)
            future.cancel()
            return {"uid": item.claim.uid, "status": "interrupted", "error_class": "walltime",
                    "message": f"worker lost: {type(e).__name__}: {e}"}

    def _settle(self, item: Running, result: dict) -> None:
        outcome = Outcome(**{k: v for k, v in result.items() if k in Outcome.__annotations__})
        if outcome.status == "done":
            self.store.finish_attempt(item.attempt, result, "done")
            self.tally.done += 1
        elif outcome.status in ("yielded", "interrupted"):
            self.store.finish_attempt(item.attempt, result, "queued", item.task.memory_gb)
            if outcome.status == "yielded" and result.get("worker"):
                # it could fit no more work: let it go, a fresh job takes over
                self.client.retire_workers([result["worker"]], close_workers=True)
            self.tally.resumed += 1
            self._submit(item.claim, item.task.attempt + 1, item.task.memory_gb)
        else:
            self._failed(item, outcome, result)

    def _failed(self, item: Running, outcome: Outcome, result: dict) -> None:
        earlier = self.store.failures_of_class(item.claim.uid, outcome.error_class or "unknown")
        retry = retry_task(item.task, outcome, earlier)
        if retry is None:
            self.store.finish_attempt(item.attempt, result, "failed")
            self.tally.failed += 1
            return
        if retry.memory_gb and self._node_class(retry.memory_gb, retry.size_gb) is None:
            result = {**result, "error_class": "needs-bigger-node", "message":
                      f"{outcome.error_class}: a retry needs {retry.memory_gb:g} GB, more than "
                      f"any node class of {self.profile.name}"}
            self.store.finish_attempt(item.attempt, result, "failed")
            self.tally.failed += 1
            return
        backoff = float(retry_policy(outcome.error_class or "unknown").get("backoff-s", 0))
        self.store.finish_attempt(item.attempt, result, "waiting", retry.memory_gb,
                                  not_before=time.time() + backoff * 2 ** earlier)
        self.tally.retried += 1

    def _abandon(self) -> None:
        """Ctrl-C/SIGTERM: no new work; running attempts are recorded and given back."""
        for future, item in self.running.items():
            future.cancel()
            self.store.finish_attempt(item.attempt, {
                "uid": item.claim.uid, "status": "interrupted", "error_class": "walltime",
                "message": "arihpc run stopped"}, "new", item.task.memory_gb)
        self.running.clear()


def campaign_options(profile: SiteProfile, extra: dict | None = None) -> dict:
    """Payload options from the site profile (archive, CASA installations), plus ``extra``."""
    return {"source": profile.archive, "casa": profile.casa, "imaging": profile.casa_imaging,
            **(extra or {})}


def run_site(store: CampaignStore, profile: SiteProfile, payload: str, options: dict,
             limit: int | None = None, stop: threading.Event | None = None,
             progress: Callable[[Tally], None] | None = None) -> Tally:
    """Start the site's scheduler, keep the site busy until the campaign is done (or ``stop``),
    then release every batch job."""
    with SiteCluster.start(profile) as site_cluster, Client(site_cluster.cluster) as client:
        orchestrator = Orchestrator(store, profile, site_cluster, client, payload, options,
                                    Path(profile.storage.work_dir), limit, progress)
        return orchestrator.run(stop or threading.Event())

