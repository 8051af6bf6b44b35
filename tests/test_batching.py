"""Short MOUS share one MOUS slot: the pace that decides it, and which MOUS a batch takes."""

from pathlib import Path
from types import SimpleNamespace

import dask.config
import pytest

from arihpc.campaign.orchestrator import Orchestrator
from arihpc.campaign.outcomes import Item, Pace
from arihpc.runner.plans import MousTask
from arihpc.store.campaign import Claim

SETTINGS = {"arihpc.batching.batch-s": 1.0, "arihpc.batching.max-mous": 16,
            "arihpc.batching.min-seen": 10}


@pytest.fixture(autouse=True)
def batching():
    with dask.config.set(SETTINGS):
        yield


def done(elapsed_s: float, stages=("a", "b"), ran=("a", "b"), status="done") -> dict:
    return {"status": status, "stages_run": list(ran), "records": {s: {} for s in stages},
            "elapsed_s": elapsed_s}


def task(size_gb: float | None = 1.0) -> MousTask:
    return MousTask("uid://A001/X1/X1", Path("/nonexistent"), "noop", size_gb)


def test_one_mous_a_slot_until_enough_whole_runs_are_seen_then_as_many_as_fit():
    pace = Pace()
    for _ in range(9):
        pace.saw(task(), done(0.01))
    assert pace.batch_size() == 1
    pace.saw(task(), done(0.2))
    assert pace.batch_size() == 5       # 1 s at the pace of the slowest, 0.2 s
    pace.saw(task(), done(0.001))
    assert pace.batch_size() == 5
    pace.saw(task(), done(3.0))         # one slow MOUS: one a slot again
    assert pace.batch_size() == 1


def test_only_whole_runs_that_ended_done_set_the_pace():
    pace = Pace()
    for result in (done(0.001, status="failed"), done(0.001, status="yielded"),
                   done(0.001, ran=("b",)),         # resumed at its last stage
                   {"status": "done", "stages_run": [], "records": {}, "elapsed_s": 0.001}):
        for _ in range(20):
            pace.saw(task(), result)
    assert pace.batch_size() == 1 and not pace.seen
    for _ in range(20):
        pace.saw(task(), done(0.0001))
    assert pace.batch_size() == 16      # max-mous


def test_a_mous_larger_than_those_seen_is_not_short():
    pace = Pace()
    for _ in range(10):
        pace.saw(task(2.0), done(0.01))
    assert pace.short(task(2.0)) and pace.short(task(None))
    assert not pace.short(task(2.5))


def item(uid: int, node_class: str = "small", phase: str = "claimed",
         size_gb: float = 1.0) -> Item:
    name = f"uid://A001/X1/X{uid:x}"
    return Item(Claim(name, uid, None, 0.5, 0), replace_uid(task(size_gb), name), node_class,
                uid, phase)


def replace_uid(mous: MousTask, uid: str) -> MousTask:
    return MousTask(uid, mous.workdir, mous.payload, mous.size_gb, 0.5)


def orchestrator(items: list[Item], seen_gb: float = 1.0) -> Orchestrator:
    """An orchestrator's batching state only: no store, cluster or client is touched."""
    orch = Orchestrator(None, SimpleNamespace(name="test"), None, None, "noop", {},
                        Path("/nonexistent"))
    orch.items = items
    for _ in range(10):
        orch.pace.saw(task(seen_gb), done(0.01))
    return orch


def test_a_batch_takes_the_next_short_mous_of_its_class_in_claim_order():
    items = [item(1), item(2, "big"), item(3, phase="computing"), item(4), item(5),
             item(6, phase="parked"), item(7, phase="staged"), item(8)]
    orch = orchestrator(items)
    assert [i.claim.priority for i in orch._batch(0, 4)] == [1, 4, 5, 7]
    assert [i.claim.priority for i in orch._batch(0, 1)] == [1]


def test_a_batch_stops_at_a_mous_of_its_class_that_cannot_join():
    """Never past one claimed earlier: a larger MOUS, or one still fetching, ends it."""
    items = [item(1), item(2), item(3, size_gb=5.0), item(4)]
    assert [i.claim.priority for i in orchestrator(items)._batch(0, 16)] == [1, 2]
    items = [item(1), item(2, phase="fetching"), item(3)]
    assert [i.claim.priority for i in orchestrator(items)._batch(0, 16)] == [1]
    items = [item(1, size_gb=5.0), item(2)]         # the lead itself is not short: alone
    assert [i.claim.priority for i in orchestrator(items)._batch(0, 16)] == [1]
