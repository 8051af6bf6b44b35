"""The orchestrator: keeps one site busy with the right MOUS until the campaign is done.

It claims selected MOUS from the store in priority order (exclusive claims), submits
``run_in_worker`` to the site's dask scheduler with the MOUS's priority and resources, keeps
the batch queue topped up within the site's job limit, and turns every outcome into store
updates: done; yielded or interrupted -> continued from its next stage on a worker with time
enough (a worker that yielded drains and is retired when idle, a fresh job replaces it);
failed -> the retry policy. Only this process writes the store. Killed at any moment, the next
run recovers.

Batching: MOUS seen to take seconds go to a MOUS slot several at a time, one dask task run
one after another (``batching`` settings, ``outcomes.Pace``).

Staging: with I/O slots (``storage.io-slots``), the fetch of the next MOUS runs ahead of compute
(within ``storage.staging-gb`` of raw data), so a MOUS slot does not wait for a download.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from distributed import Client

from arihpc import config
from arihpc.campaign.outage import RoundState, ride_out
from arihpc.campaign.outcomes import Item, OutcomeRecorder, Pace, Tally, interrupted
from arihpc.campaign.workers import (
    News,
    WorkerPool,
    fetch_results,
    jobs_wanted,
    slots_held,
)
from arihpc.mous import disk_name
from arihpc.planning import model as planning
from arihpc.planning.routing import node_class_for
from arihpc.runner.plans import FETCH_STAGE, MousTask
from arihpc.runner.run import run_in_worker
from arihpc.sites.cluster import SiteCluster
from arihpc.sites.profile import SiteProfile
from arihpc.store.campaign import CampaignStore, Claim, Finish

log = logging.getLogger(__name__)
GB = 1e9
FETCH_PREFIX = "fetch-"  # keys of fetch-ahead tasks (I/O slots, not MOUS slots)
PACE_AFTER = 3          # MOUS done in this run before the ETA follows the pace seen


class Orchestrator(OutcomeRecorder):
    def __init__(self, store: CampaignStore, profile: SiteProfile, cluster: SiteCluster,
                 client: Client, payload: str, options: dict, workroot: Path,
                 limit: int | None = None, progress: Callable[[Tally], None] | None = None):
        self.store, self.profile, self.cluster, self.client = store, profile, cluster, client
        self.payload, self.options, self.workroot = payload, options, workroot
        self.limit, self.progress = limit, progress or (lambda tally: None)
        self.owner = f"{profile.name}@{time.time():.0f}"
        self.tally = Tally()
        self.items: list[Item] = []
        self.futures: dict = {}             # future -> its Items (several: short MOUS batched)
        self.outbox: list = []              # submissions waiting for their store commit
        self.outcomes: list = []            # (item, result) fetched, not yet in the store
        self.finishing: list[Finish] = []   # attempts ended, for the store's next write
        self.claimed = 0
        self.pool = WorkerPool(client)
        self.news = News(client)
        self.pace = Pace()
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
        ride_out(lambda: self.store.log_event(
            "site-start", site=self.profile.name, owner=self.owner,
            scheduler=self.cluster.cluster.scheduler_address,
            dashboard=self.cluster.cluster.dashboard_link,
            profile=str(Path(self.profile.path).resolve()) if self.profile.path else None),
            "logging the start")
        self.news.watch()
        try:
            return self._run(stop)
        finally:
            self.news.unwatch()
            ride_out(lambda: self.store.log_event("site-stop", site=self.profile.name,
                                                  owner=self.owner), "logging the stop")

    def _run(self, stop: threading.Event) -> Tally:
        orphans = self.cluster.cancel_orphans()
        if orphans:
            log.warning("cancelled %d batch job(s) of an earlier run of %s: %s", len(orphans),
                        self.profile.name, " ".join(orphans))
        self.tally.recovered = ride_out(lambda: self.store.recover(self.profile.name),
                                        "recovering")
        self.models = ride_out(self._models, "fitting the planning model")
        self.settings = config.overrides()      # --config reaches the workers with each task
        while not stop.is_set():
            self.pool.refresh()
            self._store_round()
            self._submit()                      # dask runs only what the store knows of
            ride_out(self._estimate, "estimating")
            self.progress(self.tally)
            if not self.items:
                retry_at = ride_out(lambda: self.store.next_retry_at(self.profile.name),
                                    "looking for retries")
                if retry_at is None or (self.limit is not None and self.claimed >= self.limit):
                    break
                stop.wait(min(max(0.0, retry_at - time.time()), 5.0))   # a retry backs off
                continue
            self.cluster.keep_jobs(self._jobs_wanted(), self.pool.busy(), self.pool.names())
            self.pool.retire_idle_draining(slots_held(self.futures))
            self._collect()
            self._repark_orphans()
        if stop.is_set():
            self._store_round(claim=False)
            self._abandon()
        return self.tally

    def _store_round(self, claim: bool = True) -> None:
        """One commit a round (one fsync of an SQLite store) for all of its writes: the
        outcomes fetched last round, then the claims and attempts they make room for. Tried
        again, from the state before it, while the store is unavailable."""
        before = RoundState.of(self)

        def round_() -> None:
            before.restore(self)
            with self.store.transaction():
                self._record_outcomes()
                if claim:
                    self._claim()
                    self._start_compute()
                    self._fetch_ahead()
                self._flush()

        def release_strays() -> None:
            before.restore(self)
            held = self.items + [item for item, _ in self.outcomes]
            attempts = {item.attempt for item in held if item.attempt is not None}
            attempts |= {finish.attempt for finish in self.finishing}
            uids = {item.claim.uid for item in held}
            uids |= {finish.result["uid"] for finish in self.finishing}
            given = self.store.release_strays(self.profile.name, self.owner, uids, attempts)
            if given:
                log.warning("gave back %d MOUS whose claim was stored during the outage", given)

        ride_out(round_, "a round", after_outage=release_strays)

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
        """Claim MOUS for the free MOUS slots (each a batch of short MOUS once they are seen
        to be short) and I/O slots; their attempts start."""
        room = self.capacity * self.pace.batch_size() + self.lookahead - len(self.items)
        if self.limit is not None:
            room = min(room, self.limit - self.claimed)
        claims = self.store.claim(self.profile.name, self.owner, room)
        self.claimed += len(claims)
        sized = [self._sized(claim) for claim in claims]
        numbers = self.store.start_attempts([(claim.uid, memory_gb)
                                             for claim, _, memory_gb, _ in sized],
                                            self.profile.name, "staging")
        for (claim, size_gb, memory_gb, node_class), number in zip(sized, numbers):
            self._take(claim, number, size_gb, memory_gb, node_class)

    def _staged_gb(self) -> float:
        return sum(item.task.size_gb or 0 for item in self.items
                   if item.phase in ("fetching", "staged"))

    def _sized(self, claim: Claim) -> tuple:
        """(claim, size in GB, memory in GB, node class or None) for a fresh attempt."""
        size_gb = claim.size_bytes / GB if claim.size_bytes else None
        memory_gb = claim.memory_gb
        if memory_gb is None:
            memory_gb = planning.predict(size_gb, *self.models).memory_gb
        return claim, size_gb, memory_gb, node_class_for(self.profile, memory_gb,
                                                                  size_gb)

    def _take(self, claim: Claim, number: int, size_gb: float | None, memory_gb: float,
              node_class) -> None:
        """An attempt started: its fetch ahead on an I/O slot, or all of it when no staging."""
        if node_class is None:
            self._finish(number, {
                "uid": claim.uid, "status": "failed", "error_class": "needs-bigger-node",
                "message": f"no node class of {self.profile.name} has {memory_gb:g} GB"},
                "failed")
            self.tally.failed += 1
            return
        task = MousTask(claim.uid, self.workroot / disk_name(claim.uid), self.payload,
                        size_gb, memory_gb, claim.attempts + 1, self.options,
                        settings=self.settings, project=claim.project)
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
                self._send([item], [replace(item.task, last_stage=FETCH_STAGE)],
                           f"{FETCH_PREFIX}{disk_name(item.claim.uid)}-a{item.attempt}", {"io": 1})

    def _send(self, items: list[Item], tasks: list[MousTask], key: str, resources: dict,
              worker: str | None = None) -> None:
        """One task for ``items``: submitted once the store has committed their attempts
        (``_submit``)."""
        self.outbox.append((items, tasks, key, resources, worker))
        for item in items:
            item.worker = worker

    def _submit(self) -> None:
        """One ``client.map`` per worker and resources: one message to the scheduler for
        the round's MOUS, not one each. In claim order, at the priority of the first: those
        sent to a worker have a free slot there and start at once, and dask runs the rest
        (fetches ahead) in the order given, after those of earlier rounds."""
        groups: dict[tuple, list] = {}
        for items, tasks, key, resources, worker in self.outbox:
            groups.setdefault((worker, tuple(sorted(resources.items()))), []).append(
                (items, tasks, key))
        for (worker, resources), sent in groups.items():
            futures = self.client.map(run_in_worker, [tasks for _, tasks, _ in sent],
                                      key=[key for _, _, key in sent], pure=False,
                                      priority=-sent[0][0][0].claim.priority,
                                      resources=dict(resources),
                                      workers=[worker] if worker else None)
            self.futures.update(zip(futures, [items for items, _, _ in sent]))
        self.outbox.clear()

    def _compute(self, items: list[Item], worker: str) -> None:
        """``items`` to one MOUS slot of ``worker``, one after another."""
        for item in items:
            item.phase = "computing"
        self.tally.tasks += 1
        memory_gb = max(item.task.memory_gb or 0.0 for item in items)
        self._send(items, [item.task for item in items],
                   f"{disk_name(items[0].claim.uid)}-a{items[0].attempt}",
                   {"slots": 1, "memory_gb": memory_gb}, worker)

    def _batch(self, first: int, size: int) -> list[Item]:
        """The item at ``first`` and, when it is short, the next short ones of its node class
        waiting to compute, up to ``size`` in all; in claim order: the batch ends at one of
        its class that cannot join it."""
        lead = self.items[first]
        batch = [lead]
        if size == 1 or not self.pace.short(lead.task):
            return batch
        for item in self.items[first + 1:]:
            if item.node_class != lead.node_class or item.phase in ("computing", "parked"):
                continue
            if item.phase not in ("claimed", "staged") or not self.pace.short(item.task):
                break
            batch.append(item)
            if len(batch) == size:
                break
        return batch

    def _start_compute(self) -> None:
        """Parked MOUS first (to a worker with time enough), then the staged ones in claim
        order, each to a worker with a free slot (dask, without work stealing, would pile
        them on the first worker up). Within a node class a MOUS never starts computing
        before one claimed earlier."""
        held = slots_held(self.futures)
        resuming = []
        for item in [i for i in self.items if i.phase == "parked"]:
            worker = self.pool.pick(item.node_class, item.needs_s, held)
            if worker is None:
                self.pool.drain_short(item.needs_s, held)
                continue
            held[worker] = held.get(worker, 0) + 1
            resuming.append((item, worker))
        numbers = self.store.start_attempts([(item.claim.uid, item.task.memory_gb)
                                             for item, _ in resuming], self.profile.name)
        for (item, worker), number in zip(resuming, numbers):
            item.attempt = number
            self._compute([item], worker)
        starting: list[str] = []
        waiting: set[str] = set()           # classes with a MOUS that found no worker
        size = self.pace.batch_size()
        for index, item in enumerate(self.items):
            if item.phase == "fetching":
                waiting.add(item.node_class)    # it computes first once staged
            if item.phase not in ("claimed", "staged") or item.node_class in waiting:
                continue
            worker = self.pool.pick(item.node_class, 0.0, held)
            if worker is None:
                waiting.add(item.node_class)
                continue
            held[worker] = held.get(worker, 0) + 1
            batch = self._batch(index, size)
            starting.extend(item.claim.uid for item in batch)
            self._compute(batch, worker)
        self.store.computing(starting)

    def _jobs_wanted(self) -> dict[str, int]:
        return jobs_wanted(self.items, self.profile, self.pool.draining_per_class())

    # --- results ---

    def _collect(self) -> None:
        finished = self.news.wait(list(self.futures))
        announced = {future: self.news.take(future.key) for future in finished}
        # Fetch every other result before any worker is retired: a result lost with its
        # worker would make dask run the MOUS again.
        results = fetch_results(self.client, [f for f in finished if announced[f] is None])
        for future in finished:
            items = self.futures.pop(future)
            replies = announced[future] or results[future]
            if isinstance(replies, Exception):  # its worker died (walltime, node failure)
                lost = f"worker lost: {type(replies).__name__}: {replies}"
                replies = [interrupted(item, lost) for item in items]
            for item, result in zip(items, replies):
                if item.phase == "computing":
                    self.pace.saw(item.task, result)
                self.outcomes.append((item, result))
            future.release()
        if finished:
            self.news.forget({future.key for future in self.futures})


def campaign_options(profile: SiteProfile, extra: dict | None = None) -> dict:
    """Payload options from the site profile (archive, CASA installations), plus ``extra``."""
    return {"source": profile.archive, "casa": profile.casa, "imaging": profile.casa_imaging,
            "delivery": profile.delivery, "ms-store": profile.storage.ms_store,
            "ms-retention-years": profile.storage.ms_retention_years, **(extra or {})}


def run_site(store: CampaignStore, profile: SiteProfile, payload: str, options: dict,
             limit: int | None = None, stop: threading.Event | None = None,
             progress: Callable[[Tally], None] | None = None) -> Tally:
    """Start the site's scheduler, keep the site busy until the campaign is done (or ``stop``),
    then release every batch job."""
    with SiteCluster.start(profile) as site_cluster, Client(site_cluster.cluster) as client:
        orchestrator = Orchestrator(store, profile, site_cluster, client, payload, options,
                                    Path(profile.storage.work_dir), limit, progress)
        return orchestrator.run(stop or threading.Event())

