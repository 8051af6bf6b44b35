"""What the orchestrator does with each outcome: the store's updates, resumes and retries.

A mixin of ``orchestrator.Orchestrator``, whose state it uses (store, profile, items, futures,
tally): done; yielded or interrupted -> parked, to continue from its next stage on a worker
with time enough; failed -> the retry policy. Attempts that end are written together, once a
round (``_flush``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace

from arihpc import config
from arihpc.campaign.outage import ride_out
from arihpc.planning.routing import node_class_for
from arihpc.runner.failures import retry_policy
from arihpc.runner.plans import MousTask
from arihpc.runner.run import Outcome, retry_task
from arihpc.sites.cluster import deadline_s
from arihpc.store.campaign import Claim, Finish

REFIT_EVERY = 10        # MOUS done between two fits of the planning model
PACE_WINDOW = 50        # the last MOUS whose run times decide a batch's size


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
    worker: str | None = None           # the worker it was last sent to


@dataclass
class Tally:
    """What one ``arihpc run`` did, for its progress line and summary."""

    done: int = 0
    failed: int = 0
    resumed: int = 0
    retried: int = 0
    recovered: int = 0
    tasks: int = 0                      # sent to MOUS slots: one MOUS, or a batch of short ones
    started: float = field(default_factory=time.time)
    left: int | None = None             # MOUS of the campaign not yet done or failed
    eta_s: float | None = None          # until they are, at this site's pace
    eta_basis: str = "model"            # "model" (planning) or "pace" (seen in this run)


def interrupted(item: Item, message: str) -> dict:
    """The outcome of a MOUS whose run was cut short from outside (its worker gone, the
    orchestrator stopped): it resumes from its last checkpoint."""
    return {"uid": item.claim.uid, "status": "interrupted", "error_class": "walltime",
            "message": message}


class Pace:
    """How long the MOUS of this run took, to batch short ones into one MOUS slot (the
    ``batching`` settings): (size in GB, seconds) of the last ``PACE_WINDOW`` that ran."""

    def __init__(self) -> None:
        self.seen: deque[tuple[float, float]] = deque(maxlen=PACE_WINDOW)

    def saw(self, task: MousTask, result: dict) -> None:
        """A MOUS's run ended. Only one that ran all its stages in this run shows what a
        whole MOUS takes: not a failure, a yield, or a resume of its last stage."""
        ran, stages = result.get("stages_run") or (), result.get("records") or {}
        if result.get("status") == "done" and ran and len(ran) == len(stages) and \
                "elapsed_s" in result:
            self.seen.append((task.size_gb or 0.0, float(result["elapsed_s"])))

    def batch_size(self) -> int:
        """MOUS one slot gets at once: as many as fit ``batching.batch-s`` at the pace of the
        slowest seen; 1 until ``batching.min-seen`` were seen."""
        if len(self.seen) < int(config.get("batching.min-seen")):
            return 1
        slowest = max(elapsed for _, elapsed in self.seen)
        fit = int(float(config.get("batching.batch-s")) / max(slowest, 1e-3))
        return max(1, min(int(config.get("batching.max-mous")), fit))

    def short(self, task: MousTask) -> bool:
        """No larger than the MOUS seen: a larger one may take far longer than they did."""
        return (task.size_gb or 0.0) <= max((size for size, _ in self.seen), default=0.0)


class OutcomeRecorder:
    """The orchestrator's outcome handling (see the module docstring)."""

    def _record_outcomes(self) -> None:
        """The store learns what the results fetched by ``_collect`` say."""
        for item, result in self.outcomes:
            if item.phase == "fetching":
                self._staged(item, result)
            else:
                self._settle(item, result)
        self.outcomes.clear()
        self._flush()

    def _finish(self, attempt: int, result: dict, state: str,
                memory_gb: float | None = None, not_before: float | None = None) -> None:
        """An attempt ended; the store learns it at the next ``_flush``, with the others."""
        self.finishing.append(Finish(attempt, result, state, memory_gb, not_before))

    def _flush(self) -> None:
        self.store.finish_attempts(self.finishing)
        self.finishing.clear()

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
            self._finish(item.attempt, result, "done")
            self.tally.done += 1
            self.items.remove(item)
            if self.tally.done % REFIT_EVERY == 0:
                self.models = self._models()
        elif outcome.status in ("yielded", "interrupted") and \
                (outcome.needs_s or 0) > deadline_s(self.profile):
            self.items.remove(item)
            self._exceeds_walltime(item, outcome, result)
        elif outcome.status in ("yielded", "interrupted"):
            self._finish(item.attempt, result, "queued", item.task.memory_gb)
            self.tally.resumed += 1
            item.attempt, item.phase = None, "parked"
            item.needs_s = outcome.needs_s or 0.0
            item.task = replace(item.task, attempt=item.task.attempt + 1)
        else:
            self.items.remove(item)
            self._failed(item, outcome, result)

    def _repark_orphans(self) -> None:
        """MOUS sent to one worker that left before running them would wait forever."""
        for future, items in list(self.futures.items()):
            worker = items[0].worker
            if worker and not self.pool.alive(worker) and not future.done():
                future.cancel()
                del self.futures[future]
                for item in items:     # the store learns it in the next round
                    self._settle(item, interrupted(item, f"worker {worker} left"))

    def _exceeds_walltime(self, item: Item, outcome: Outcome, result: dict) -> None:
        """A stage predicted to need more than a whole job of this site: no job would ever
        start it, and draining and replacing jobs for it would go on for ever."""
        usable = deadline_s(self.profile)
        self._finish(item.attempt, {
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
            self._finish(item.attempt, result, "failed")
            self.tally.failed += 1
            return
        if retry.memory_gb and node_class_for(
                self.profile, retry.memory_gb, retry.size_gb) is None:
            result = {**result, "error_class": "needs-bigger-node", "message":
                      f"{outcome.error_class}: a retry needs {retry.memory_gb:g} GB, more than "
                      f"any node class of {self.profile.name}"}
            self._finish(item.attempt, result, "failed")
            self.tally.failed += 1
            return
        backoff = float(retry_policy(outcome.error_class or "unknown").get("backoff-s", 0))
        self._finish(item.attempt, result, "waiting", retry.memory_gb,
                     not_before=time.time() + backoff * 2 ** earlier)
        self.tally.retried += 1

    def _abandon(self) -> None:
        """Ctrl-C/SIGTERM: no new work; running attempts are recorded and given back."""
        for future in self.futures:
            future.cancel()
        for item in self.items:
            if item.attempt is not None:
                self._finish(item.attempt, interrupted(item, "arihpc run stopped"), "new",
                             item.task.memory_gb)
        ride_out(self._flush, "giving MOUS back")
        parked = [item.claim.uid for item in self.items if item.attempt is None]
        if parked:
            ride_out(lambda: self.store.set_state(parked, "new", ("queued",)), "giving MOUS back")
        self.items.clear()
        self.futures.clear()
