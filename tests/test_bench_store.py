"""scripts/bench_store.py on a small catalog against the test PostgreSQL: three claimer
processes and a status poller at once, then the store checked (no timing asserted here)."""

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, mous

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_dashboard  # noqa: E402
import bench_store  # noqa: E402  (by name: the spawned processes import it so too)

pytestmark = pytest.mark.postgres


def test_fill_on_postgresql_leaves_the_attempt_ids_to_the_store(postgres_url):
    store = CampaignStore.open(postgres_url)
    rows = bench_dashboard.fill(store, 300)
    with store.engine.connect() as conn:
        highest = conn.execute(sa.select(sa.func.max(attempts.c.id))).scalar_one()
        new = conn.execute(sa.select(mous.c.uid).where(mous.c.state == "new",
                                                       mous.c.selected.is_(True))
                           .limit(2)).scalars().all()
    assert rows["attempts"] == highest > 0
    assert store.start_attempts([(uid, None) for uid in new], "eso") == [highest + 1,
                                                                        highest + 2]
    store.close()


def test_three_claimers_and_a_poller_share_the_store_and_no_mous_is_held_twice(postgres_url):
    result = bench_store.run(postgres_url, 2000, list(bench_store.SITES), seconds=5, repeat=1)
    load, check = result["load"], result["check"]
    assert result["store"] == "postgresql"
    assert sorted(load["sites"]) == sorted(bench_store.SITES)
    for site, data in load["sites"].items():
        assert data["mous"] > 0 and data.get("done", 0) > 0, (site, data)
    assert load["status_queries"] > 0 and load["site_queries"] > 0
    assert check["duplicates"] == 0 and check["at_two_sites"] == 0, check["duplicate_examples"]
    assert check["open_attempts"] == 0 and check["bad_states"] == 0, check["bad_examples"]
    assert check["mous"] > 0
    assert set(result["views"]) == {bench_dashboard.PAGE, bench_dashboard.REPORT}
    assert all(view["median_s"] > 0 and view["bytes"] > 0 for view in result["views"].values())

    store = CampaignStore.open(postgres_url)
    first = result["first_attempt"]
    with store.engine.connect() as conn:
        # nothing the claimers touched is still held by them, and the attempts started after
        # the fill took ids after its own
        held = conn.execute(sa.select(sa.func.count()).select_from(mous).where(
            mous.c.owner.like("bench-store-%"),
            mous.c.state.in_(("queued", "staging", "running")))).scalar_one()
        ids = conn.execute(sa.select(sa.func.min(attempts.c.id), sa.func.count()).where(
            attempts.c.id >= first)).one()
        # one MOUS done by the claimers, to plant an attempt overlapping its last one
        uid, started, ended = conn.execute(
            sa.select(attempts.c.uid, attempts.c.started_at, attempts.c.ended_at)
            .join(mous, mous.c.uid == attempts.c.uid)
            .where(attempts.c.id >= first, mous.c.state == "done")
            .order_by(attempts.c.id.desc()).limit(1)).one()
    assert held == 0
    assert ids == (first, check["attempts"])
    assert sum(d["mous"] for d in load["sites"].values()) >= check["mous"]

    # the check can fail: another site's attempt, begun with the last one and open after it
    assert ended > started
    with store.engine.begin() as conn:
        conn.execute(attempts.insert().values(uid=uid, site="elsewhere", started_at=started,
                                              ended_at=ended + 1, outcome="done"))
    planted = bench_store.check(store, first)
    assert (planted["duplicates"], planted["at_two_sites"]) == (1, 1)
    store.close()
