"""Workers brought up through the real local SLURM (sbatch) and its PBS wrappers (qsub)."""

import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dask.config
import psutil
import pytest
from click.testing import CliRunner
from distributed import Client, wait

from arihpc.cli.main import main
from arihpc.runner.probe import probe
from arihpc.sites.batch import JobState, read_queue
from arihpc.sites.cluster import SiteCluster
from arihpc.sites.command import run_command
from arihpc.sites.profile import load_profile


@pytest.fixture(autouse=True)
def submit_from_tmp(tmp_path, monkeypatch):
    """SLURM's qsub wrapper writes job output to the submit folder whatever #PBS -o says."""
    monkeypatch.chdir(tmp_path)


def slurm_start_time(job_id: str) -> float:
    """When SLURM says the job started (epoch seconds), asked independently of the job."""
    text = run_command(["squeue", "-h", "-j", job_id, "-o", "%S"]).stdout.strip()
    return dt.datetime.fromisoformat(text).timestamp()


def bring_up(site: str, jobs: int):
    """Workers of a site with their probe reports, and SLURM's start time of each job."""
    profile = load_profile(site)
    with SiteCluster.start(profile) as cluster:
        for i in range(jobs):
            cluster.add_jobs(1, profile.node_classes[i % len(profile.node_classes)].name)
        with Client(cluster.cluster) as client:
            client.wait_for_workers(jobs, timeout=120)
            reports = list(client.run(probe).values())
            # What the job script set up for the worker's own start and CPU (a lambda:
            # cloudpickle sends it by value, the workers cannot import this test module).
            for report, setup in zip(reports, client.run(lambda: {
                    "bokeh loaded": "bokeh" in sys.modules,
                    "profiler": dask.config.get("distributed.worker.profile.enabled"),
                    "tick": dask.config.get("distributed.admin.tick.interval")}).values()):
                report.update(setup)
            starts = {r["batch_job"]: slurm_start_time(r["batch_job"]) for r in reports}
            queue = read_queue(profile)
    return profile, reports, starts, queue


@pytest.mark.slurm
@pytest.mark.parametrize("site", [
    "ci-slurm", pytest.param("ci-torque", marks=pytest.mark.pbs),
    pytest.param("ci-pbspro", marks=pytest.mark.pbs)])
def test_workers_come_up_in_xvfb_with_deadline_job_id_and_resources(site):
    profile, reports, starts, queue = bring_up(site, 2)
    assert len(reports) == 2
    for report in reports:
        node_class = profile.node_class(report["node_class"])
        assert report["site"] == site
        assert report["display"] and report["display"].startswith(":")     # xvfb-run set it
        assert report["batch_job"] and report["batch_job"].isdigit()
        # the worker leaves (and its stages end) drain-margin before the walltime kill
        expected = starts[report["batch_job"]] + profile.walltime_s - profile.drain_margin_s
        assert abs(report["deadline"] - expected) <= 5
        assert report["resources"] == {"slots": node_class.slots, "io": 1,
                                       "memory_gb": node_class.job_memory_gb}
        # no worker dashboard (bokeh) to import, no profiler, a slower event-loop watch
        assert (report["bokeh loaded"], report["profiler"], report["tick"]) == \
            (False, False, "100ms")
    # the batch queue, read by arihpc, shows those same jobs running
    running = {job.job_id for job in queue if job.state is JobState.RUNNING}
    assert set(starts) <= running
    if site == "ci-torque":
        assert {r["node_class"] for r in reports} == {"large", "small"}     # one scheduler


@pytest.mark.slurm
@pytest.mark.pbs
def test_a_task_needing_more_memory_than_the_small_class_runs_on_a_large_worker():
    profile = load_profile("ci-torque")
    need = profile.node_class("small").job_memory_gb + 0.5
    assert need <= profile.node_class("large").job_memory_gb
    with SiteCluster.start(profile) as cluster:
        cluster.add_jobs(1, "small")
        cluster.add_jobs(1, "large")
        with Client(cluster.cluster) as client:
            client.wait_for_workers(2, timeout=120)
            # probe reports the node class of the worker that ran it (a task must be importable)
            big = [client.submit(probe, resources={"memory_gb": need}, pure=False)
                   for _ in range(6)]
            small = [client.submit(probe, resources={"memory_gb": 0.1}, pure=False)
                     for _ in range(20)]
            wait(big + small, timeout=120)         # a lost worker fails the test, not hangs it
            assert {r["node_class"] for r in client.gather(big)} == {"large"}
            assert {r["node_class"] for r in client.gather(small)} <= {"large", "small"}


@pytest.mark.slurm
def test_jobs_never_exceed_the_site_maximum_and_are_released():
    profile = load_profile("ci-slurm")
    with SiteCluster.start(profile) as cluster:
        assert cluster.add_jobs(5) == profile.max_jobs
        assert cluster.add_jobs(1) == 0
        ours = {job.job_id for job in read_queue(profile) if job.state in ACTIVE}
        assert len(ours) == profile.max_jobs
    deadline = time.time() + 30        # close() cancels them; SLURM needs a moment
    while time.time() < deadline and active(profile, ours):
        time.sleep(1)
    assert not active(profile, ours)


ACTIVE = (JobState.PENDING, JobState.RUNNING)


def active(profile, job_ids) -> list:
    """Those of the jobs still pending or running (ended jobs stay listed for a while)."""
    return [j for j in read_queue(profile) if j.job_id in job_ids and j.state in ACTIVE]


@pytest.mark.slurm
def test_sites_up_command():
    result = CliRunner().invoke(main, ["sites", "up", "ci-slurm", "--jobs", "2",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and all(r["display"] for r in rows)
    assert all(r["resources"] == ["io=1", "memory_gb=1", "slots=1"] for r in rows)


@pytest.mark.slurm
def test_a_refused_sbatch_is_reported_and_nothing_stays_submitted(tmp_path):
    text = (Path(load_profile("ci-slurm").path).read_text()
            .replace("queue: debug", "queue: no-such-partition"))
    path = tmp_path / "refused.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["sites", "up", str(path), "--jobs", "2"])
    assert result.exit_code == 1
    assert "command failed (exit status 1): sbatch " in result.stderr
    assert "invalid partition specified: no-such-partition" in result.stderr
    assert not active(load_profile(str(path)), {j.job_id for j in read_queue(
        load_profile(str(path)))})


@pytest.mark.slurm
@pytest.mark.pbs
def test_qsub_not_found_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no qsub anywhere
    result = CliRunner().invoke(main, ["sites", "up", "ci-pbspro", "--jobs", "1"])
    assert result.exit_code == 1
    assert "qsub could not run: No such file or directory" in result.stderr


@pytest.mark.slurm
def test_local_slurm_start_twice_is_harmless_and_stop_leaves_no_daemon(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "local-slurm.sh"
    env = {**os.environ, "ARIHPC_SLURM_DIR": str(tmp_path / "slurm")}
    env.pop("SLURM_CONF", None)
    run = lambda action: subprocess.run(["bash", str(script), action], env=env,  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    try:
        first, second = run("start"), run("start")
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        assert f"export SLURM_CONF={tmp_path}/slurm/slurm.conf" in second.stdout
        assert run("status").returncode == 0
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}/slurm/"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    assert run("status").returncode == 3


def test_local_site_workers_advertise_resources_and_a_deadline():
    profile = load_profile("local")
    before = time.time()
    with SiteCluster.start(profile) as cluster:
        assert cluster.add_jobs(3) == profile.max_jobs == 1
        with Client(cluster.cluster) as client:
            client.wait_for_workers(1, timeout=60)
            (report,) = client.run(probe).values()
            done = client.submit(probe, resources={"slots": 1}, pure=False).result(timeout=60)
    assert report["site"] == "local" and report["batch_job"].startswith("local-")
    assert report["resources"] == {"slots": 1, "memory_gb": 8, "io": 1}
    leaves = profile.walltime_s - profile.drain_margin_s
    assert before - 1 <= report["deadline"] - leaves <= time.time() + 1
    assert done["node_class"] == "local"


@pytest.mark.slurm
def test_the_queue_is_read_when_a_worker_left_and_else_every_queue_poll(monkeypatch):
    import arihpc.sites.cluster as cluster_module

    reads = []
    real = cluster_module.read_queue
    monkeypatch.setattr(cluster_module, "read_queue", lambda p: reads.append(p.name) or real(p))
    profile = load_profile("ci-slurm")
    assert profile.queue_poll_s == 30               # the default of arihpc.yaml
    with SiteCluster.start(profile) as cluster:
        for connected in (set(), {"ci-slurm-small-1"}, {"ci-slurm-small-1"}):
            cluster.keep_jobs({}, connected=connected)
        assert len(reads) == 1                      # the first round only: nothing changed
        cluster.keep_jobs({}, connected=set())      # its worker left: read at once
        cluster.keep_jobs({}, connected=set())      # its job is not ours to wait for
        assert len(reads) == 2
        monkeypatch.setattr(cluster, "profile", replace(profile, queue_poll_s=0))
        cluster.keep_jobs({}, connected=set())      # queue-poll passed: read again
        assert len(reads) == 3


@pytest.mark.slurm
def test_a_worker_and_its_x_server_end_when_their_xvfb_run_is_gone():
    """Without a nanny, nothing else would end the worker: it is a child of init, out of the
    job's process tracking (proctrack/linuxproc), and a worker signalled while closing can
    hang. Its Xvfb, orphaned too, is ended by the job script's trap when the job's shell ends."""
    profile = load_profile("ci-slurm")
    assert profile.x11
    with SiteCluster.start(profile) as cluster:
        cluster.add_jobs(1)
        with Client(cluster.cluster) as client:
            client.wait_for_workers(1, timeout=120)
            (pid,) = client.run(os.getpid).values()
            xvfb_run = psutil.Process(pid).parent()
            assert "xvfb-run" in " ".join(xvfb_run.cmdline())
            (x_server,) = [p for p in xvfb_run.children() if p.name() == "Xvfb"]
            job_shell = xvfb_run.parent()
            xvfb_run.kill()
            gone, alive = psutil.wait_procs([psutil.Process(pid), x_server, job_shell],
                                            timeout=15)
            assert not alive, f"outlived their xvfb-run: {[p.cmdline()[:2] for p in alive]}"
