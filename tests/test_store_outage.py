"""A store that goes away under a running orchestrator: PostgreSQL restarted, connections dropped.

`arihpc run` must ride it out (try the round again once the store answers), never exit with
MOUS claimed and not released, run no stage twice and lose nothing.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import run

from arihpc.mous import disk_name
from arihpc.runner.workdir import read_checkpoint
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, events, stages, unavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from chaos_faults import PostgresServer  # noqa: E402

STAGES = ("fetch", "restore", "image", "export")
CONFIG = ("arihpc:\n  store-wait-s: 120\n  planning:\n    median-memory-gb: 0.4\n"
          "    min-memory-gb: 0.1\n")


def select(url: str, tmp_path: Path, count: int) -> list[str]:
    uids = [f"uid://A001/X40/X{i:x}" for i in range(1, count + 1)]
    lines = ["Member ous id\tProject code\tQA2 Status\tArray"]
    lines += [f"{uid}\t2016.1.{i:05d}.S\tPASS\t12m" for i, uid in enumerate(uids)]
    (tmp_path / "aq.tsv").write_text("\n".join(lines) + "\n")
    assert run(url, "catalog", "import", tmp_path / "aq.tsv").exit_code == 0
    assert run(url, "select").exit_code == 0
    return uids


def test_a_dropped_server_is_unavailable_and_a_broken_query_is_not(tmp_path):
    refused = sa.create_engine("postgresql+psycopg://arihpc@127.0.0.1:9/none")
    with pytest.raises(sa.exc.DBAPIError) as down:
        refused.connect()
    assert unavailable(down.value)
    lite = sa.create_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(sa.exc.DBAPIError) as broken, lite.connect() as conn:
        conn.execute(sa.text("select * from no_such_table"))
    assert not unavailable(broken.value)          # a bug, not an outage: never retried
    assert not unavailable(ValueError("x"))


def test_strays_of_a_commit_whose_answer_was_lost_are_given_back(sqlite_url, tmp_path):
    uids = select(sqlite_url, tmp_path, 3)
    store = CampaignStore.open(sqlite_url)
    claims = store.claim("s1", "s1@1", 3)
    numbers = store.start_attempts([(c.uid, 1.0) for c in claims], "s1", "staging")
    other = store.claim("s2", "s2@1", 3)            # nothing left for another site
    assert other == []
    given = store.release_strays("s1", "s1@1", {uids[0]}, {numbers[0]})
    assert given == 2
    with store.engine.connect() as conn:
        rows = dict(conn.execute(sa.select(attempts.c.id, attempts.c.outcome)).all())
    assert rows == {numbers[0]: None, numbers[1]: "lost", numbers[2]: "lost"}
    assert store.status()["states"] == {"staging": 1, "new": 2}
    assert [c.uid for c in store.claim("s2", "s2@1", 3)] == uids[1:]


def wait_for_done(store: CampaignStore, count: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if store.status()["states"].get("done", 0) >= count:
                return
        except sa.exc.OperationalError:
            pass                                    # the server is coming back
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} MOUS done; run exited {process.poll()}")


@pytest.mark.postgres
@pytest.mark.pg_restart
def test_postgresql_restarted_twice_under_a_running_orchestrator_loses_nothing(
        postgres_url, tmp_path):
    uids = select(postgres_url, tmp_path, 12)
    site = tmp_path / "site.yaml"
    site.write_text("batch-system: local\nmax-jobs: 1\nx11: false\n"
                    "node-classes:\n  one: {cores: 2, memory: 2GB}\n"
                    f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp}}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    (tmp_path / "c.yaml").write_text(CONFIG)
    process = subprocess.Popen(
        [sys.executable, "-m", "arihpc.cli", "--store", postgres_url, "--config",
         str(tmp_path / "c.yaml"), "run", "--site", str(site), "--payload", "emulator",
         "--payload-options", json.dumps({"cpu-s-per-gb": 0.5})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    store = CampaignStore.open(postgres_url)
    server = PostgresServer.from_env()
    try:
        for done in (2, 6):
            wait_for_done(store, done, process)
            server.restart(down_s=2.0)              # every connection dropped, then refused
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    assert "store unavailable" in err, err[-3000:]
    assert store.status()["states"] == {"done": 12}
    assert store.status()["running"] == []
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(stages.c.uid, stages.c.stage)).all()
        still_open = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
            attempts.c.ended_at.is_(None))).scalar()
        claims = conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.kind == "claim")).scalar()
    store.close()
    assert sorted(rows) == sorted((u, s) for u in uids for s in STAGES)   # each stage once
    assert still_open == 0
    assert claims >= 12
    for uid in uids:
        for stage in STAGES:
            assert read_checkpoint(tmp_path / "work" / disk_name(uid), stage) is not None
            log = (tmp_path / "work" / disk_name(uid) / "log" / f"{stage}.log").read_text()
            assert log.count(f"stage {stage} done") == 1        # completed exactly once
    assert not list((tmp_path / "work").glob("*/arihpc.lock"))     # no runner left holding one


def site_profile(tmp_path: Path) -> Path:
    site = tmp_path / "site.yaml"
    site.write_text("batch-system: local\nmax-jobs: 1\nx11: false\n"
                    "node-classes:\n  one: {cores: 2, memory: 2GB}\n"
                    f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp}}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    return site


@pytest.mark.postgres
@pytest.mark.pg_restart
def test_a_run_started_while_postgresql_restarts_waits_for_it_then_runs(postgres_url, tmp_path):
    """Found by the chaos campaign (seed 4): a restart in an orchestrator's first seconds
    ended it with a traceback (its site-start event was not ridden out)."""
    uids = select(postgres_url, tmp_path, 3)
    (tmp_path / "c.yaml").write_text(CONFIG)
    server = PostgresServer.from_env()
    restart = threading.Thread(target=server.restart, kwargs={"down_s": 6.0})
    restart.start()
    time.sleep(2.0)                                 # stopped: connections refused
    try:
        result = subprocess.run(
            [sys.executable, "-m", "arihpc.cli", "--store", postgres_url, "--config",
             str(tmp_path / "c.yaml"), "run", "--site", str(site_profile(tmp_path)),
             "--payload", "emulator"], capture_output=True, text=True, cwd=tmp_path,
            timeout=300)
    finally:
        restart.join()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "store unavailable (opening the store)" in result.stderr, result.stderr[-3000:]
    assert "3 done, 0 failed" in result.stdout
    store = CampaignStore.open(postgres_url)
    assert store.status()["states"] == {"done": 3}
    with store.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(stages.c.uid, stages.c.stage)).all()) == sorted(
            (u, s) for u in uids for s in STAGES)
    store.close()


def test_a_store_that_never_answers_ends_the_run_with_the_drivers_words(tmp_path):
    (tmp_path / "c.yaml").write_text("arihpc:\n  store-open-wait-s: 2\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "arihpc.cli", "--store",
         "postgresql+psycopg://arihpc@127.0.0.1:9/none", "--config", str(tmp_path / "c.yaml"),
         "run", "--site", str(site_profile(tmp_path)), "--payload", "emulator"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert "(opening the store; store-open-wait-s is 2)" in result.stderr, result.stderr
    assert "Connection refused" in result.stderr or "connection failed" in result.stderr
    assert "Traceback" not in result.stderr
