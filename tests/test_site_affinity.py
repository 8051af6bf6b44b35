"""A MOUS cut or failed part-way at a site stays with that site: its work directory and
checkpoints are there. Found by the chaos campaign (a MOUS cut at ci-pbspro, refused by its own
next job while the lock was held, was claimed by ci-torque and run again from its first stage)."""

import time

import dask.config
import sqlalchemy as sa
from test_store_outage import select

from arihpc.store.campaign import CampaignStore, Finish
from arihpc.store.schema import mous


def end(store, attempt, uid, status, stage, error_class=None, state="waiting"):
    store.finish_attempts([Finish(attempt, {"uid": uid, "status": status, "stage": stage,
                                            "error_class": error_class}, state,
                                  not_before=time.time() - 1)])


def next_stage(store, uid):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(mous.c.next_stage).where(mous.c.uid == uid)).scalar()


def test_a_mous_with_work_done_at_a_site_is_claimed_again_only_there(store_url, tmp_path):
    [uid] = select(store_url, tmp_path, 1)
    store = CampaignStore.open(store_url)
    [claim] = store.claim("s1", "s1@1", 1)
    [attempt] = store.start_attempts([(uid, 1.0)], "s1")
    end(store, attempt, uid, "failed", "image", "segfault")
    assert next_stage(store, uid) == "image"
    assert store.next_retry_at("s2") is None             # nothing s2 may take: it can stop
    assert store.next_retry_at("s1") is not None
    assert store.claim("s2", "s2@1", 1) == []
    [again] = store.claim("s1", "s1@2", 1)
    # Refused by a lock (no stage reached): the stage work stopped at is kept, and the site.
    [attempt] = store.start_attempts([(uid, 1.0)], "s1")
    end(store, attempt, uid, "failed", None, "lock")
    assert next_stage(store, uid) == "image"
    assert store.claim("s2", "s2@1", 1) == []
    # A site gone for longer than site-affinity-s gives its MOUS up to any site.
    with dask.config.set({"arihpc.site-affinity-s": 0}):
        assert store.next_retry_at("s2") is not None
        [moved] = store.claim("s2", "s2@1", 1)
    assert moved.uid == uid and moved.attempts == 2
    [attempt] = store.start_attempts([(uid, 1.0)], "s2")
    end(store, attempt, uid, "done", None, state="done")
    assert next_stage(store, uid) is None


def test_a_mous_never_started_is_claimed_by_any_site(store_url, tmp_path):
    uids = select(store_url, tmp_path, 2)
    store = CampaignStore.open(store_url)
    claims = store.claim("s1", "s1@1", 2)
    assert store.recover("s1") == 2                  # s1 died before any attempt began
    assert sorted(c.uid for c in store.claim("s2", "s2@1", 2)) == sorted(uids)
    assert len(claims) == 2


def test_a_mous_whose_attempt_was_cut_before_it_said_how_far_stays_at_its_site(
        store_url, tmp_path):
    """Found by the chaos campaign (seed 2): a worker lost mid-stage gives an interrupted
    attempt with no stage, then a lock refusal; ci-slurm took the MOUS and ran its checkpointed
    stages again. Nor may another site take a MOUS given back by a killed orchestrator."""
    uids = select(store_url, tmp_path, 2)
    store = CampaignStore.open(store_url)
    store.claim("s1", "s1@1", 2)
    attempt, lost = store.start_attempts([(uid, 1.0) for uid in uids], "s1")
    end(store, attempt, uids[0], "interrupted", None, "walltime")
    assert next_stage(store, uids[0]) is None
    assert store.recover("s1") == 1                 # uids[1]: its attempt lost, given back
    assert store.claim("s2", "s2@1", 2) == []
    assert store.next_retry_at("s2") is None
    assert sorted(c.uid for c in store.claim("s1", "s1@2", 2)) == sorted(uids)
