"""Campaigns on the local SLURM: two sites sharing one PostgreSQL store, and walltime resumes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import run, select_mous

from arihpc.store.schema import attempts, events, mous, stages

CONFIG = ("arihpc:\n  planning:\n    median-memory-gb: 0.4\n    min-memory-gb: 0.1\n")


def make_campaign(url: str, tmp_path: Path, count: int) -> list[str]:
    uids = [f"uid://A001/X30/X{i:x}" for i in range(1, count + 1)]
    select_mous(url, tmp_path, uids)
    return uids


def site_copy(name: str, tmp_path: Path, **changes: str) -> Path:
    """A CI site profile with its work directory in this test's folder."""
    text = (Path(__file__).resolve().parents[1] / "site-configs" / f"{name}.yaml").read_text()
    text = text.replace("work-dir: /tmp/arihpc-ci/work", f"work-dir: {tmp_path}/work")
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def orchestrator(url: str, site: Path, tmp_path: Path, options: dict) -> subprocess.Popen:
    (tmp_path / "c.yaml").write_text(CONFIG)
    return subprocess.Popen(
        [sys.executable, "-m", "arihpc.cli", "--store", url, "--config", str(tmp_path / "c.yaml"),
         "run", "--site", str(site), "--payload", "emulator",
         "--payload-options", json.dumps(options)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


@pytest.mark.slurm
@pytest.mark.pbs
@pytest.mark.postgres
def test_two_sites_share_one_postgresql_store_and_never_take_the_same_mous(
        postgres_url, tmp_path):
    uids = make_campaign(postgres_url, tmp_path, 30)
    sites = [site_copy("ci-slurm", tmp_path), site_copy("ci-pbspro", tmp_path)]
    running = [orchestrator(postgres_url, s, tmp_path, {"cpu-s-per-gb": 0.1}) for s in sites]
    outputs = [p.communicate(timeout=600) for p in running]
    for process, (out, err) in zip(running, outputs):
        assert process.returncode == 0, err[-2000:]
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(mous.c.uid, mous.c.state)).all())
        claims = conn.execute(sa.select(events.c.uid, sa.func.count()).where(
            events.c.kind == "claim").group_by(events.c.uid)).all()
        by_site = conn.execute(sa.select(attempts.c.uid, sa.func.count(sa.distinct(
            attempts.c.site))).group_by(attempts.c.uid)).all()
        stage_rows = conn.execute(sa.select(sa.func.count()).select_from(stages)).scalar()
    engine.dispose()
    assert states == {u: "done" for u in uids}
    assert sorted(c for _, c in claims) == [1] * 30          # each MOUS claimed once
    assert all(n == 1 for _, n in by_site)                    # and run by one site only
    assert stage_rows == 30 * 4                               # every stage done once
    done = [int(out.split(": ")[1].split(" done")[0]) for out, _ in outputs]
    assert sum(done) == 30 and min(done) > 0                  # both sites did part of it



@pytest.mark.slurm
def test_thirty_mous_on_one_minute_jobs_all_done_with_walltime_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/campaign.db"
    uids = make_campaign(url, tmp_path, 30)
    big = uids[:3]          # 4 stages of ~12 s: more than one 50-second worker can hold
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("uid,size_bytes,size_source\n" + "".join(
        f"{u},{40_000_000_000 if u in big else 1_000_000_000},datalink\n" for u in uids))
    assert run(url, "catalog", "import", sizes).exit_code == 0
    assert run(url, "select").exit_code == 0
    site = site_copy("ci-slurm", tmp_path, **{'walltime: "00:10:00"': 'walltime: "00:01:00"',
                                               'drain-margin: "00:01:00"':
                                               'drain-margin: "00:00:10"'})
    (tmp_path / "c.yaml").write_text(CONFIG + "  runner:\n    walltime-margin-s: 5\n")
    process = subprocess.run(
        [sys.executable, "-m", "arihpc.cli", "--store", url, "--config", str(tmp_path / "c.yaml"),
         "-v", "run", "--site", str(site), "--payload", "emulator",
         "--payload-options", json.dumps({"cpu-s-per-gb": 0.3})],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(mous.c.uid, mous.c.state)).all())
        rows = conn.execute(sa.select(stages.c.uid, stages.c.stage, stages.c.started_at)).all()
        outcomes = conn.execute(sa.select(attempts.c.uid, attempts.c.outcome)).all()
    engine.dispose()
    assert states == {u: "done" for u in uids}
    assert len(rows) == 30 * 4 and len(set(rows)) == 30 * 4       # each stage once
    from arihpc.mous import disk_name
    from arihpc.runner.workdir import read_checkpoint
    for uid in uids:
        for stage in ("fetch", "restore", "image", "export"):
            check = read_checkpoint(tmp_path / "work" / disk_name(uid), stage)
            assert (uid, stage, check["start"]) in set(rows)        # store and checkpoint agree
            log = (tmp_path / "work" / disk_name(uid) / "log" / f"{stage}.log").read_text()
            assert log.count(f"stage {stage} done") == 1             # completed exactly once
    resumes = {u: sum(1 for v, o in outcomes if v == u and o in ("yielded", "interrupted"))
               for u in big}
    assert all(n >= 1 for n in resumes.values()), resumes        # they needed 2+ jobs
