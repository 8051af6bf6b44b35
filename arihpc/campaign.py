"""The orchestrator: keeps one site busy with the right MOUS until the campaign is done.

It claims selected MOUS from the store in priority order (exclusive claims), submits
``run_in_worker`` to the site's dask scheduler with the MOUS's priority and resources, keeps
the batch queue topped up within the site's job limit, and turns every outcome into store
updates: done; yielded or interrupted -> continued from its next stage on a worker with time
enough (a worker that yielded drains and is retired when idle, a fresh job replaces it);
failed -> the retry policy. Only this process writes the store. Killed at any moment, the next
run recovers.

Staging: with I/O slots (``storage.io-slots``), the fetch of the next MOUS runs ahead of compute
(within ``storage.staging-gb`` of raw data), so a MOUS slot does not wait for a download.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from distributed import Client

from arihpc import config, planning
from arihpc.campaign_workers import (
    FETCH_PREFIX,
    WorkerPool,
    fetch_results,
    jobs_wanted,
    slots_held,
    wait_for_news,
)
from arihpc.jobs.failures import retry_policy
from arihpc.jobs.payloads import FETCH_STAGE, MousTask
from arihpc.jobs.runner import Outcome, retry_task, run_in_worker
from arihpc.mous import disk_name
from arihpc.sites.cluster import SiteCluster, deadline_s
from arihpc.sites.profile import SiteProfile
from arihpc.store_campaign import CampaignStore, Claim

log = logging.getLogger(__name__)
GB = 1e9
PACE_AFTER = 3          # MOUS done in this run before the ETA follows the pace seen
REFIT_EVERY = 10        # MOUS done between two fits of the planning model


@dataclass
class Item:
    """One claimed MOUS in this orchestrator's hands, in claim (priority) order.

    phase: claimed, fetching (its fetch runs ahead on an I/O slot), staged (fetched, waiting
    for a MOUS slot), computing, or parked (it yielded: waiting for a worker with ``needs_s``
    left).
    """

    claim: Claim
    task: MousTask
    node_class: str
    attempt: int | None                 # the store's open attempt (None while parked)
    phase: str
    needs_s: float = 0.0
    worker: str | None = None           # the worker a parked MOUS was sent to


@dataclass
class Tally:
    """What one ``arihpc run`` did, for its progress line and summary."""

    done: int = 0
    failed: int = 0
    resumed: int = 0
    retried: int = 0
    recovered: int = 0
    started: float = field(default_factory=time.time)
    left: int | None = None             # MOUS of the campaign not yet done or failed
    eta_s: float | None = None          # until they are, at this site's pace
    eta_basis: str = "model"            # "model" (planning) or "pace" (seen in this run)


class Orchestrator:
    def __init__(self, store: CampaignStore, profile: SiteProfile, cluster: SiteCluster,
                 client: Client, payload: str, options: dict, workroot: Path,
                 limit: int | None = None, progress: Callable[[Tally], None] | None = None):
        self.store, self.profile, self.cluster, self.client = store, profile, cluster, client
        self.payload, self.options, self.workroot = payload, options, workroot
        self.limit, self.progress = limit, progress or (lambda tally: None)
        self.owner = f"{profile.name}@{time.time():.0f}"
        self.tally = Tally()
        self.items: list[Item] = []
        self.futures: dict = {}             # future -> Item
        self.outbox: list = []              # submissions waiting for their store commit
        self.outcomes: list = []            # (item, result) fetched, not yet in the store
        self.claimed = 0
        self.pool = WorkerPool(client)
        self._estimated = 0.0
        self.settings: dict = {}            # the campaign config, read at run()

    @property
    def capacity(self) -> int:
        """MOUS computing at once: every job of the site with its slots."""
        return self.profile.mous_slots

    @property
    def lookahead(self) -> int:
        """MOUS whose fetch may run ahead of compute: the site's I/O slots."""
        return self.profile.max_jobs * self.profile.storage.io_slots

    def run(self, stop: threading.Event) -> Tally:
        """Work until nothing is left to claim and nothing runs, or ``stop`` is set."""
        # Where the dashboards find this site's scheduler (arihpc/monitor/live.py).
        self.store.log_event("site-start", site=self.profile.name, owner=self.owner,
                             scheduler=self.cluster.cluster.scheduler_address,
                             dashboard=self.cluster.cluster.dashboard_link)
        self.pool.watch()
        try:
            return self._run(stop)
        finally:
            self.pool.unwatch()
            self.store.log_event("site-stop", site=self.profile.name, owner=self.owner)

    def _run(self, stop: threading.Event) -> Tally:
        orphans = self.cluster.cancel_orphans()
        if orphans:
            log.warning("cancelled %d batch job(s) of an earlier run of %s: %s", len(orphans),
                        self.profile.name, " ".join(orphans))
        self.tally.recovered = self.store.recover(self.profile.name)
        self.models = self._models()
        self.settings = config.overrides()      # --config reaches the workers with each task
        while not stop.is_set():
            self.pool.refresh()
            # One commit a round (one fsync of an SQLite store) for all of its writes: the
            # outcomes fetched last round, then the claims and attempts they make room for.
            with self.store.transaction():
                self._record_outcomes()
                self._claim()
                self._start_compute()
                self._fetch_ahead()
            self._submit()                      # dask runs only what the store knows of
            self._estimate()
            self.progress(self.tally)
            if not self.items:
                retry_at = self.store.next_retry_at()
                if retry_at is None or (self.limit is not None and self.claimed >= self.limit):
                    break
                stop.wait(min(max(0.0, retry_at - time.time()), 5.0))   # a retry backs off
                continue
            self.cluster.keep_jobs(self._jobs_wanted(), self.pool.busy(), self.pool.names())
            self.pool.retire_idle_draining(slots_held(self.items))
            self._collect()
            self._repark_orphans()
        if stop.is_set():
            with self.store.transaction():
                self._record_outcomes()
            self._abandon()
        return self.tally

    def _models(self) -> tuple[planning.PowerLaw, planning.PowerLaw]:
        runtime, memory = planning.default_models()
        sizes, hours, peaks = self.store.history()
        return (planning.fit(sizes, hours, runtime), planning.fit(sizes, peaks, memory))

    def _estimate(self, every_s: float = 5.0) -> None:
        """ETA: the planning model's run times of what is left over this site's MOUS slots,
        until this run has finished a few MOUS; then the pace seen."""
        if time.time() - self._estimated < every_s:
            return
        self._estimated = time.time()
        left = self.store.remaining_sizes()
        self.tally.left = len(left)
        if self.tally.done >= PACE_AFTER:
            pace = (time.time() - self.tally.started) / self.tally.done
            self.tally.eta_s, self.tally.eta_basis = pace * len(left), "pace"
            return
        predictions = [planning.predict(size, *self.models) for size in left]
        self.tally.eta_s = planning.campaign_hours(predictions, self.capacity) * 3600
        self.tally.eta_basis = "model"

    # --- claiming and submitting ---

    def _claim(self) -> None:
        """Claim MOUS for the free MOUS slots and I/O slots."""
        room = self.capacity + self.lookahead - len(self.items)
        if self.limit is not None:
            room = min(room, self.limit - self.claimed)
        for claim in self.store.claim(self.profile.name, self.owner, room):
            self.claimed += 1
            self._take(claim, claim.attempts + 1, claim.memory_gb)

    def _staged_gb(self) -> float:
        return sum(item.task.size_gb or 0 for item in self.items
                   if item.phase in ("fetching", "staged"))

    def _take(self, claim: Claim, attempt: int, memory_gb: float | None) -> None:
        """Start an attempt: its fetch ahead on an I/O slot, or all of it when no staging."""
        size_gb = claim.size_bytes / GB if claim.size_bytes else None
        if memory_gb is None:
            memory_gb = planning.predict(size_gb, *self.models).memory_gb
        node_class = planning.node_class_for(self.profile, memory_gb, size_gb)
        number = self.store.start_attempt(claim.uid, self.profile.name, memory_gb, "staging")
        if node_class is None:
            self.store.finish_attempt(number, {
                "uid": claim.uid, "status": "failed", "error_class": "needs-bigger-node",
                "message": f"no node class of {self.profile.name} has {memory_gb:g} GB"},
                "failed")
            self.tally.failed += 1
            return
        task = MousTask(claim.uid, self.workroot / disk_name(claim.uid), self.payload,
                        size_gb, memory_gb, attempt, self.options, settings=self.settings,
                        project=claim.project)
        self.items.append(Item(claim, task, node_class.name, number, "claimed"))

    def _fetch_ahead(self) -> None:
        """Fetch the next claimed MOUS on I/O slots while the staging budget holds its data."""
        fetching = sum(1 for item in self.items if item.phase == "fetching")
        for item in self.items:
            if fetching >= self.lookahead:
                return
            if item.phase == "claimed" and \
                    self._staged_gb() + (item.task.size_gb or 0) <= self.profile.storage.staging_gb:
                item.phase = "fetching"
                fetching += 1
                self._send(item, replace(item.task, last_stage=FETCH_STAGE),
                           f"{FETCH_PREFIX}{disk_name(item.claim.uid)}-a{item.attempt}", {"io": 1})

    def _send(self, item: Item, task: MousTask, key: str, resources: dict,
              worker: str | None = None) -> None:
        """Submit once the store has committed the attempt (``_submit``)."""
        self.outbox.append((item, task, key, resources, worker))
        item.worker = worker

    def _submit(self) -> None:
        for item, task, key, resources, worker in self.outbox:
            future = self.client.submit(run_in_worker, task, key=key, pure=False,
                                        priority=-item.claim.priority, resources=resources,
                                        workers=[worker] if worker else None)
            self.futures[future] = item
        self.outbox.clear()

    def _compute(self, item: Item, worker: str) -> None:
        if item.phase != "parked":
            self.store.computing(item.claim.uid)
        item.phase = "computing"
        self._send(item, item.task, f"{disk_name(item.claim.uid)}-a{item.attempt}",
                   {"slots": 1, "memory_gb": item.task.memory_gb}, worker)

    def _start_compute(self) -> None:
        """Parked MOUS first (to a worker with time enough), then the staged ones in claim
        order, each to a worker with a free slot (dask, without work stealing, would pile
        them on the first worker up). Within a node class a MOUS never starts computing
        before one claimed earlier."""
        held = slots_held(self.items)
        for item in [i for i in self.items if i.phase == "parked"]:
            worker = self.pool.pick(item.node_class, item.needs_s, held)
            if worker is None:
                self.pool.drain_short(item.needs_s, held)
                continue
            held[worker] = held.get(worker, 0) + 1
            item.attempt = self.store.start_attempt(item.claim.uid, self.profile.name,
                                                    item.task.memory_gb)
            self._compute(item, worker)
        waiting: set[str] = set()           # classes with a MOUS that found no worker
        for item in self.items:
            if item.phase == "fetching":
                waiting.add(item.node_class)    # it computes first once staged
            if item.phase not in ("claimed", "staged") or item.node_class in waiting:
                continue
            worker = self.pool.pick(item.node_class, 0.0, held)
            if worker is None:
                waiting.add(item.node_class)
                continue
            held[worker] = held.get(worker, 0) + 1
            self._compute(item, worker)

    def _jobs_wanted(self) -> dict[str, int]:
        return jobs_wanted(self.items, self.profile, self.pool.draining_per_class())

    # --- results ---

    def _collect(self) -> None:
        finished = wait_for_news(list(self.futures), self.pool.joined)
        # Fetch every result before any worker is retired: a result lost with its worker
        # would make dask run the MOUS again.
        results = fetch_results(self.client, finished)
        for future in finished:
            item, result = self.futures.pop(future), results[future]
            if isinstance(result, Exception):   # its worker died (walltime, node failure)
                result = {"uid": item.claim.uid, "status": "interrupted",
                          "error_class": "walltime",
                          "message": f"worker lost: {type(result).__name__}: {result}"}
            self.outcomes.append((item, result))
            future.release()

    def _record_outcomes(self) -> None:
        """The store learns what the results fetched by ``_collect`` say."""
        for item, result in self.outcomes:
            if item.phase == "fetching":
                self._staged(item, result)
            else:
                self._settle(item, result)
        self.outcomes.clear()

    def _staged(self, item: Item, result: dict) -> None:
        """A fetch ahead ended. Done or not, compute continues from the last checkpoint
        (a fetch cut short resumes its partial files); only a failure counts."""
        if result["status"] == "failed":
            self._settle(item, result)
            return
        self.store.record_stages(item.attempt, item.claim.uid, result.get("records") or {})
        item.phase = "staged"

    def _settle(self, item: Item, result: dict) -> None:
        outcome = Outcome(**{k: v for k, v in result.items() if k in Outcome.__annotations__})
        if outcome.status == "done":
            self.store.finish_attempt(item.attempt, result, "done")
            self.tally.done += 1
            self.items.remove(item)
            if self.tally.done % REFIT_EVERY == 0:
                self.models = self._models()
        elif outcome.status in ("yielded", "interrupted") and \
                (outcome.needs_s or 0) > deadline_s(self.profile):
            self.items.remove(item)
            self._exceeds_walltime(item, outcome, result)
        elif outcome.status in ("yielded", "interrupted"):
            self.store.finish_attempt(item.attempt, result, "queued", item.task.memory_gb)
            self.tally.resumed += 1
            item.attempt, item.phase = None, "parked"
            item.needs_s = outcome.needs_s or 0.0
            item.task = replace(item.task, attempt=item.task.attempt + 1)
        else:
            self.items.remove(item)
            self._failed(item, outcome, result)

    def _repark_orphans(self) -> None:
        """A MOUS sent to one worker that left before running it would wait forever."""
        for future, item in list(self.futures.items()):
            if item.worker and not self.pool.alive(item.worker) and not future.done():
                future.cancel()
                del self.futures[future]
                self._settle(item, {"uid": item.claim.uid, "status": "interrupted",
                                    "error_class": "walltime",
                                    "message": f"worker {item.worker} left"})

    def _exceeds_walltime(self, item: Item, outcome: Outcome, result: dict) -> None:
        """A stage predicted to need more than a whole job of this site: no job would ever
        start it, and draining and replacing jobs for it would go on for ever."""
        usable = deadline_s(self.profile)
        self.store.finish_attempt(item.attempt, {
            **result, "status": "failed", "error_class": "exceeds-walltime",
            "message": f"{outcome.stage} needs ~{outcome.needs_s:.0f} s in one job; a job of "
                       f"{self.profile.name} has {usable} s (walltime {self.profile.walltime} "
                       f"less drain-margin): raise walltime, or lower runner.walltime-margin-s"
                       f" or the stage's prediction"}, "failed")
        self.tally.failed += 1

    def _failed(self, item: Item, outcome: Outcome, result: dict) -> None:
        earlier = self.store.failures_of_class(item.claim.uid, outcome.error_class or "unknown")
        retry = retry_task(item.task, outcome, earlier)
        if retry is None:
            self.store.finish_attempt(item.attempt, result, "failed")
            self.tally.failed += 1
            return
        if retry.memory_gb and planning.node_class_for(
                self.profile, retry.memory_gb, retry.size_gb) is None:
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
        for future in self.futures:
            future.cancel()
        for item in self.items:
            if item.attempt is not None:
                self.store.finish_attempt(item.attempt, {
                    "uid": item.claim.uid, "status": "interrupted", "error_class": "walltime",
                    "message": "arihpc run stopped"}, "new", item.task.memory_gb)
        parked = [item.claim.uid for item in self.items if item.attempt is None]
        if parked:
            self.store.set_state(parked, "new", ("queued",))
        self.items.clear()
        self.futures.clear()


def campaign_options(profile: SiteProfile, extra: dict | None = None) -> dict:
    """Payload options from the site profile (archive, CASA installations), plus ``extra``."""
    return {"source": profile.archive, "casa": profile.casa, "imaging": profile.casa_imaging,
            "delivery": profile.delivery, **(extra or {})}


def run_site(store: CampaignStore, profile: SiteProfile, payload: str, options: dict,
             limit: int | None = None, stop: threading.Event | None = None,
             progress: Callable[[Tally], None] | None = None) -> Tally:
    """Start the site's scheduler, keep the site busy until the campaign is done (or ``stop``),
    then release every batch job."""
    with SiteCluster.start(profile) as site_cluster, Client(site_cluster.cluster) as client:
        orchestrator = Orchestrator(store, profile, site_cluster, client, payload, options,
                                    Path(profile.storage.work_dir), limit, progress)
        return orchestrator.run(stop or threading.Event())

