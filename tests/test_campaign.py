"""The orchestrator on the local site with the emulated payload: order, retries, kill -9."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.config
import pytest
import sqlalchemy as sa
from distributed import Client
from helpers import run

from arihpc.campaign.orchestrator import Orchestrator
from arihpc.campaign.workers import News
from arihpc.mous import disk_name
from arihpc.runner.workdir import read_checkpoint
from arihpc.sites.cluster import SiteCluster
from arihpc.sites.command import run_command
from arihpc.sites.profile import load_profile
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, stages

STAGES = ("fetch", "restore", "image", "export")
SETTINGS = {"arihpc.planning.median-memory-gb": 0.4, "arihpc.planning.min-memory-gb": 0.1,
            "arihpc.failures.retry.download": {"retries": 2, "backoff-s": 0.05},
            "arihpc.failures.retry.lock": {"retries": 3, "backoff-s": 1}}
CONFIG_FILE = ("arihpc:\n  planning:\n    median-memory-gb: 0.4\n    min-memory-gb: 0.1\n"
               "  failures:\n    retry:\n      download: {retries: 2, backoff-s: 0.05}\n"
               "      lock: {retries: 3, backoff-s: 1}\n")


@pytest.fixture(autouse=True)
def small_memory_model():
    with dask.config.set(SETTINGS):
        yield


def campaign(tmp_path: Path, count: int) -> tuple[str, list[str]]:
    """A store with ``count`` selected MOUS of mixed tier and cycle."""
    lines = ["Member ous id\tProject code\tQA2 Status\tArray"]
    uids = [f"uid://A001/X20/X{i:x}" for i in range(1, count + 1)]
    for i, uid in enumerate(uids):
        year = (2013, 2015, 2016)[i % 3]
        lines.append(f"{uid}\t{year}.1.{i:05d}.S\t{'SEMIPASS' if i % 4 == 3 else 'PASS'}\t12m")
    (tmp_path / "aq.tsv").write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{tmp_path}/campaign.db"
    assert run(url, "catalog", "import", tmp_path / "aq.tsv").exit_code == 0
    assert run(url, "select").exit_code == 0
    return url, uids


def site_profile(tmp_path: Path, classes: str, max_jobs: int):
    path = tmp_path / "site.yaml"
    path.write_text(f"batch-system: local\nmax-jobs: {max_jobs}\nx11: false\n"
                    f"node-classes:\n{classes}"
                    f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp}}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n"
                    "payload: emulator\n")
    return load_profile(str(path))


def orchestrate(url: str, profile, options: dict) -> CampaignStore:
    store = CampaignStore.open(url)
    with SiteCluster.start(profile) as cluster, Client(cluster.cluster) as client:
        Orchestrator(store, profile, cluster, client, "emulator", options,
                     Path(profile.storage.work_dir)).run(threading.Event())
    return store


def test_with_one_slot_mous_start_in_queue_order(tmp_path):
    url, uids = campaign(tmp_path, 6)
    queue = [row["uid"] for row in json.loads(run(url, "queue", "--format", "json").stdout)]
    profile = site_profile(tmp_path, "  one: {cores: 1, memory: 1GB}\n", max_jobs=1)
    store = orchestrate(url, profile, {"cpu-s-per-gb": 0.02})
    with store.engine.connect() as conn:
        started = [r.uid for r in conn.execute(sa.select(attempts.c.uid)
                                               .order_by(attempts.c.started_at))]
    assert started == queue and len(queue) == 6
    with store.engine.connect() as conn:        # and compute (after each fetch) in that order
        computed = [r.uid for r in conn.execute(sa.select(stages.c.uid).where(
            stages.c.stage == "restore").order_by(stages.c.started_at))]
    assert computed == queue
    assert store.status()["states"] == {"done": 6}


def test_injected_failures_are_retried_or_not_by_class(tmp_path):
    url, uids = campaign(tmp_path, 5)
    download, oom, version = uids[0], uids[1], uids[2]
    plan = [{"uid": download, "class": "download", "stage": "fetch", "attempt": 1},
            {"uid": download, "class": "download", "stage": "fetch", "attempt": 2},
            {"uid": oom, "class": "oom", "stage": "restore", "attempt": 1},
            {"uid": version, "class": "casa-version", "stage": "restore", "attempt": 1}]
    profile = site_profile(tmp_path, "  small: {cores: 1, memory: 0.5GB}\n"
                                     "  large: {cores: 1, memory: 2GB}\n", max_jobs=2)
    store = orchestrate(url, profile, {"cpu-s-per-gb": 0.02, "fail-plan": plan})
    report = store.status()
    assert report["states"] == {"done": 4, "failed": 1}
    assert {k: v for k, v in report["failure_classes"].items() if k != "lock"} == {
        "download": 2, "oom": 1, "casa-version": 1}
    with store.engine.connect() as conn:
        tries = {u: [(r.outcome, r.error_class, r.memory_gb) for r in conn.execute(
            sa.select(attempts).where(attempts.c.uid == u).order_by(attempts.c.id))]
            for u in (download, oom, version)}
    assert [t[0] for t in tries[download]] == ["failed", "failed", "done"]
    # the oom retry asked twice the memory: more than the small class has, so the large one
    assert tries[oom][0] == ("failed", "oom", 0.4) and tries[oom][-1] == ("done", None, 0.8)
    assert tries[version] == [("failed", "casa-version", 0.4)]          # never retried
    # The stages an attempt completed before it failed are in the store, under that attempt,
    # and not again under the one that resumed after them.
    with store.engine.connect() as conn:
        ran = {u: [(r.stage, r.outcome) for r in conn.execute(
            sa.select(stages.c.stage, attempts.c.outcome).join(
                attempts, attempts.c.id == stages.c.attempt_id)
            .where(stages.c.uid == u).order_by(stages.c.started_at))]
            for u in (oom, version)}
    assert ran[version] == [("fetch", "failed")]
    assert ran[oom] == [("fetch", "failed"), ("restore", "done"), ("image", "done"),
                        ("export", "done")]
    status = run(url, "status").stdout
    assert "casa-version 1, download 2" in status and "oom 1" in status


def ci_slurm_site(tmp_path: Path) -> Path:
    text = (Path(__file__).resolve().parents[1] / "site-configs" / "ci-slurm.yaml").read_text()
    path = tmp_path / "ci-slurm.yaml"
    path.write_text(text.replace("work-dir: /tmp/arihpc-ci/work", f"work-dir: {tmp_path}/work"))
    return path


@pytest.mark.parametrize("site", ["local", pytest.param("ci-slurm", marks=pytest.mark.slurm)])
def test_kill_9_of_the_orchestrator_loses_nothing_and_runs_no_stage_twice(tmp_path, site):
    url, uids = campaign(tmp_path, 5)
    if site == "local":
        site_profile(tmp_path, "  one: {cores: 1, memory: 1GB}\n", max_jobs=1)
        path = tmp_path / "site.yaml"
    else:           # its jobs outlive the orchestrator: the next run cancels them
        path = ci_slurm_site(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG_FILE)
    command = [sys.executable, "-m", "arihpc.cli", "--store", url, "--config",
               str(tmp_path / "c.yaml"), "run", "--site", str(path), "--payload", "emulator",
               "--payload-options", json.dumps({"cpu-s-per-gb": 0.6})]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, cwd=tmp_path)
    store = CampaignStore.open(url)
    deadline = time.time() + 120
    while store.status()["states"].get("done", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert store.status()["states"].get("done", 0) >= 2, first.stderr.read()[-2000:] \
        if first.poll() is not None else "the first run made no progress"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    if site == "local":
        time.sleep(6)       # its worker notices and takes its stage down with it
    else:   # its workers end with their scheduler; a job still queued would wait for nothing
        queued = run_command(["sbatch", "--parsable", "--hold", "-J", "arihpc-ci-slurm-small",
                              "--wrap", "sleep 600"], timeout=30).stdout.strip()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "recovered" in second.stdout
    assert "CRITICAL" not in second.stderr, second.stderr[-2000:]      # a clean shutdown
    if site == "ci-slurm":
        cancelled = re.search(r"earlier run of ci-slurm: (.*)", second.stderr)
        assert cancelled and queued in cancelled.group(1).split(), second.stderr[-2000:]
        assert run_command(["squeue", "-h", "-j", queued, "--states=all", "-o", "%T"],
                           timeout=30).stdout.strip() == "CANCELLED"
    assert store.status()["states"] == {"done": 5}
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(stages.c.uid, stages.c.stage, stages.c.started_at)).all()
    assert len(rows) == 5 * len(STAGES)                     # every stage recorded once
    for uid in uids:
        for stage in STAGES:
            check = read_checkpoint(tmp_path / "work" / disk_name(uid), stage)
            assert (uid, stage, check["start"]) in set(rows)
            log = (tmp_path / "work" / disk_name(uid) / "log" / f"{stage}.log").read_text()
            assert log.count(f"stage {stage} done") == 1    # no stage completed twice


def test_eta_follows_the_planning_model_then_the_pace_seen(tmp_path):
    url, uids = campaign(tmp_path, 4)
    (tmp_path / "sizes.csv").write_text("uid,size_bytes,size_source\n" + "".join(
        f"{u},{(i + 1) * 10_000_000_000},datalink\n" for i, u in enumerate(uids)))
    assert run(url, "catalog", "import", tmp_path / "sizes.csv").exit_code == 0
    profile = site_profile(tmp_path, "  one: {cores: 1, memory: 1GB, slots: 2}\n", max_jobs=3)
    store = CampaignStore.open(url)
    orchestrator = Orchestrator(store, profile, None, None, "emulator", {}, tmp_path)
    orchestrator.models = orchestrator._models()
    orchestrator._estimate()
    runtime = orchestrator.models[0]
    expected = sum(runtime(size) for size in (10, 20, 30, 40)) / 6 * 3600     # 6 MOUS slots
    assert orchestrator.tally.left == 4
    assert orchestrator.tally.eta_basis == "model"
    assert abs(orchestrator.tally.eta_s - expected) < 1e-6 * expected
    orchestrator.tally.done, orchestrator.tally.started = 3, time.time() - 30
    orchestrator._estimate(every_s=0)
    assert orchestrator.tally.eta_basis == "pace"
    assert 39 < orchestrator.tally.eta_s < 42                # 10 s per MOUS, 4 left


def test_progress_bar_shows_counts_and_the_eta_on_a_terminal(monkeypatch, capsys):
    from arihpc.campaign.outcomes import Tally
    from arihpc.cli.campaign import duration, progress

    assert (duration(90), duration(3 * 3600), duration(5 * 86400)) == ("2 min", "3.0 h", "5.0 d")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    show = progress(store=None, width=10)
    show(Tally(done=3, failed=1, left=4, eta_s=7200, eta_basis="pace"))
    line = capsys.readouterr().err
    assert line.startswith("\r[#####.....] done 3  failed 1") and "left 4" in line
    assert line.rstrip().endswith("ETA 2.0 h (pace)")


def attempts_of(store: CampaignStore) -> list[tuple]:
    with store.engine.connect() as conn:
        return [(r.uid, r.outcome, r.error_class, r.message) for r in conn.execute(
            sa.select(attempts).order_by(attempts.c.id))]


def test_a_stage_longer_than_any_job_fails_as_exceeds_walltime_instead_of_churning_jobs(
        tmp_path):
    url, uids = campaign(tmp_path, 2)
    path = tmp_path / "site.yaml"       # a job's worker leaves 90 s after it starts
    path.write_text("batch-system: local\nmax-jobs: 1\nx11: false\nwalltime: '00:02:00'\n"
                    "drain-margin: '00:00:30'\nnode-classes:\n  one: {cores: 1, memory: 1GB}\n"
                    f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp}}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    profile = load_profile(str(path))
    store, stop = CampaignStore.open(url), threading.Event()
    # Every stage of this payload is predicted to take 200 s: more than any job has.
    threading.Timer(90, stop.set).start()       # the old code never ended: fail, not hang
    with SiteCluster.start(profile) as cluster, Client(cluster.cluster) as client:
        tally = Orchestrator(store, profile, cluster, client, "emulator",
                             {"cpu-s-per-gb": 0.02, "predicted-s": 200},
                             Path(profile.storage.work_dir)).run(stop)
        jobs_started = cluster._serial
    assert not stop.is_set() and tally.failed == 2
    stop.set()
    assert store.status()["states"] == {"failed": 2}
    tries = attempts_of(store)
    assert [t[1:3] for t in tries] == [("failed", "exceeds-walltime")] * 2
    assert "fetch needs ~230 s in one job; a job of site has 90 s" in tries[0][3]
    assert jobs_started <= 2


@pytest.mark.slurm
def test_the_campaign_config_file_reaches_run_mous_in_batch_jobs(tmp_path):
    """A runner margin bigger than a job's whole time: the worker, in a SLURM job, must use
    it (and yield) rather than the packaged 30 s (and finish)."""
    url, uids = campaign(tmp_path, 1)
    (tmp_path / "c.yaml").write_text(CONFIG_FILE + "  runner:\n    walltime-margin-s: 1000\n")
    done = subprocess.run(
        [sys.executable, "-m", "arihpc.cli", "--store", url, "--config", str(tmp_path / "c.yaml"),
         "run", "--site", str(ci_slurm_site(tmp_path)), "--payload", "emulator",
         "--payload-options", json.dumps({"cpu-s-per-gb": 0.02})],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (attempt,) = attempts_of(CampaignStore.open(url))
    assert attempt[1:3] == ("failed", "exceeds-walltime"), attempt
    assert "needs ~1001 s in one job; a job of ci-slurm has 540 s" in attempt[3]


def test_with_nothing_running_the_loop_waits_a_round_or_until_a_worker_joins():
    """dask's wait returns at once on no futures: the orchestrator would spin, asking the
    scheduler and the store each time, while its first jobs start."""
    news = News(client=None)
    started = time.monotonic()
    assert news.wait([], tick_s=0.5) == []
    assert time.monotonic() - started >= 0.45
    threading.Timer(0.1, news._event, [(0, {"action": "add-worker"})]).start()
    started = time.monotonic()
    assert news.wait([], tick_s=5) == []
    assert time.monotonic() - started < 2 and not news.joined.is_set()     # woken, and reset


class _Pending:
    """A future that has not finished (as the client sees it) while its outcome is
    announced: the announcement is what ends the wait."""

    def __init__(self, key: str):
        self.key = key

    def done(self) -> bool:
        return False


def test_an_announced_outcome_ends_the_wait_at_once_and_is_taken_once():
    news = News(client=None)
    futures = [_Pending("a-1"), _Pending("b-1")]
    reply = {"uid": "uid://A001/X1/X1", "status": "done"}
    threading.Timer(0.1, news._outcome,
                    [(0, json.dumps({"key": "b-1", "replies": [reply]}))]).start()
    started = time.monotonic()
    assert news.wait(futures, tick_s=5) == [futures[1]]
    assert time.monotonic() - started < 1
    assert news.take("b-1") == [reply] and news.take("b-1") is None
    news._outcome((0, json.dumps({"key": "gone-1", "replies": [reply]})))
    news.forget({"a-1"})                # a cancelled task's late announcement goes
    assert news.announced == {}
