"""scripts/bench_overhead.py's arihpc path: no-op MOUS go through the real orchestrator, store,
runner lock and checkpoints (and, with ``noop-command``, the process runner), each exactly once
(no timing asserted here). Once a few are seen to be short, they go to their slots in batches."""

import importlib.util
import sys
from pathlib import Path

import dask.config
import pytest
import sqlalchemy as sa

from arihpc.campaign import orchestrator as campaign
from arihpc.campaign.orchestrator import Orchestrator
from arihpc.campaign.workers import fetch_results
from arihpc.mous import disk_name
from arihpc.runner.workdir import read_checkpoint
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, events, stages

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"
COUNT = 50


def load_script():
    spec = importlib.util.spec_from_file_location("bench_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def keys(store: CampaignStore) -> list[tuple[str, int]]:
    """(uid, attempt number) of every attempt: the orchestrator's task keys."""
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(attempts.c.uid, attempts.c.id))]


@pytest.mark.parametrize("payload, announce", [("noop", True), ("noop-command", True),
                                              ("noop", False)])
def test_each_noop_mous_is_claimed_run_checkpointed_and_recorded_once(tmp_path, payload,
                                                                      announce, monkeypatch):
    """With announce False no outcome is small enough to be announced (the limit travels
    to the workers with each task): every one is fetched from its worker instead."""
    bench = load_script()
    fetched = {}        # results the orchestrator had to fetch from workers: key -> replies

    def fetch(client, finished):
        results = fetch_results(client, finished)
        fetched.update({future.key: replies for future, replies in results.items()})
        return results
    monkeypatch.setattr(campaign, "fetch_results", fetch)
    batches = []        # the MOUS of each task sent to a MOUS slot
    compute = Orchestrator._compute
    monkeypatch.setattr(Orchestrator, "_compute", lambda self, items, worker: (
        batches.append([item.claim.uid for item in items]), compute(self, items, worker))[1])
    store = CampaignStore.open(f"sqlite:///{tmp_path}/bench.db")
    names = bench.uids(COUNT)
    bench.fill(store, names)
    profile = bench.site_profile(tmp_path, workers=2, slots=4)
    cluster, client = bench.start_site(profile)
    try:
        with dask.config.set({"arihpc.runner.announce-max-bytes": 16000 if announce else 0}):
            tally = bench.run_arihpc(store, profile, cluster, client, payload)
    finally:
        client.close()
        cluster.close()
    assert (tally.done, tally.failed, tally.resumed, tally.retried) == (COUNT, 0, 0, 0)
    # The first round fills the 8 slots one MOUS each; once 10 MOUS were seen to take
    # milliseconds, a slot gets up to batching.max-mous at once, in claim order.
    assert [len(batch) for batch in batches[:8]] == [1] * 8
    assert 1 < max(len(batch) for batch in batches) <= 16
    assert sum(batches, []) == names
    attempt_of = dict(keys(store))
    if announce:
        assert fetched == {}    # every outcome came announced, with its task's end
    else:                       # one task per batch, keyed by its first MOUS's attempt
        assert fetched.keys() == {f"{disk_name(batch[0])}-a{attempt_of[batch[0]]}"
                                  for batch in batches}
        assert sorted(reply["uid"] for replies in fetched.values() for reply in replies) == \
            sorted(names)
    assert store.status()["states"] == {"done": COUNT}
    workroot = tmp_path / "work"
    assert bench.check(store, workroot, names) == {
        "done": COUNT, "attempts": COUNT, "attempts done": COUNT, "stages": COUNT,
        "checkpoints": COUNT, "locks left": 0}
    with store.engine.connect() as conn:
        tries = dict(conn.execute(sa.select(attempts.c.uid, sa.func.count())
                                  .group_by(attempts.c.uid)).all())
        recorded = {r.uid: r for r in conn.execute(sa.select(stages))}
        claims = conn.execute(sa.select(sa.func.count()).select_from(events)
                              .where(events.c.kind == "claim")).scalar_one()
    assert tries == {uid: 1 for uid in names} and claims == COUNT
    for uid in names:
        workdir = workroot / disk_name(uid)
        checkpoint = read_checkpoint(workdir, "noop")
        assert checkpoint["attempt"] == 1
        # the store's stage row is the one the checkpoint describes
        assert (recorded[uid].stage, recorded[uid].started_at) == ("noop", checkpoint["start"])
        if payload == "noop-command":       # `true` ran under the guard, its report was read
            assert (workdir / "log" / "noop.log").is_file()
            assert not list((workdir / "log").glob(".*rusage*"))
        else:                               # a call in the runner's thread: no command, no log
            assert not (workdir / "log").exists()
    store.close()
