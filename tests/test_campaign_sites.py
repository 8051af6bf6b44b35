"""Campaigns on the local SLURM: two sites sharing one PostgreSQL store, and walltime resumes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import run

from arihpc.store import attempts, events, mous, stages

CONFIG = ("arihpc:\n  planning:\n    median-memory-gb: 0.4\n    min-memory-gb: 0.1\n")


def make_campaign(url: str, tmp_path: Path, count: int) -> list[str]:
    lines = ["Member ous id\tProject code\tQA2 Status\tArray"]
    uids = [f"uid://A001/X30/X{i:x}" for i in range(1, count + 1)]
    lines += [f"{u}\t2016.1.{i:05d}.S\tPASS\t12m" for i, u in enumerate(uids)]
    (tmp_path / "aq.tsv").write_text("\n".join(lines) + "\n")
    assert run(url, "catalog", "import", tmp_path / "aq.tsv").exit_code == 0
    assert run(url, "select").exit_code == 0
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

