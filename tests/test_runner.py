"""run_mous with the emulated payload: checkpoints, resume, deadlines, memory guard, the lock,
and no orphan processes when the worker dies."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from distributed import Client, LocalCluster

from arihpc.runner.plans import MousTask, emulator_plan
from arihpc.runner.process import GUARD
from arihpc.runner.run import Outcome, retry_task, run_mous
from arihpc.runner.workdir import LOCK_NAME, MousLock, checkpoint_path, read_checkpoint

UID = "uid://A001/X87a/X706"
STAGES = ["fetch", "restore", "image", "export"]


def task(tmp_path: Path, **options) -> MousTask:
    return MousTask(UID, tmp_path / "uid___A001_X87a_X706", "emulator", size_gb=1.0,
                    options={"cpu-s-per-gb": 0.05, **options})


def test_checkpoints_are_written_and_a_second_run_skips_every_stage(tmp_path):
    job = task(tmp_path)
    first = run_mous(job)
    assert (first.status, first.stages_run) == ("done", tuple(STAGES))
    for stage in STAGES:
        record = read_checkpoint(job.workdir, stage)
        assert record["wall_s"] > 0 and record["cpu_s"] > 0 and record["peak_rss"] > 10**6
        output = job.workdir / stage / f"{stage}.out"
        assert record["outputs"] == {f"{stage}/{stage}.out": output.stat().st_size}
        assert record["end"] >= record["start"]
    logs = {s: (job.workdir / "log" / f"{s}.log").read_text() for s in STAGES}
    second = run_mous(job)
    assert (second.status, second.stages_run) == ("done", ())
    assert {s: (job.workdir / "log" / f"{s}.log").read_text() for s in STAGES} == logs


def test_dropping_stage_3_reruns_stage_3_onward_only(tmp_path):
    job = task(tmp_path)
    run_mous(job)
    kept = {s: checkpoint_path(job.workdir, s).read_text() for s in STAGES[:2]}
    checkpoint_path(job.workdir, "image").unlink()
    again = run_mous(job)
    assert again.stages_run == ("image", "export")
    assert {s: checkpoint_path(job.workdir, s).read_text() for s in STAGES[:2]} == kept


def test_a_stage_that_does_not_fit_before_the_deadline_never_starts(tmp_path):
    job = task(tmp_path, **{"predicted-s": 30})
    outcome = run_mous(job, deadline=time.time() + 10)
    assert (outcome.status, outcome.stage, outcome.stages_run) == ("yielded", "fetch", ())
    assert not (job.workdir / "log" / "fetch.log").exists()
    assert not (job.workdir / "fetch").exists()
    assert "30 s" in outcome.message


def test_memory_guard_kills_within_two_seconds_and_the_retry_doubles_memory(tmp_path):
    job = MousTask(UID, tmp_path / "w", "emulator", size_gb=1.0, memory_gb=0.3,
                   options={"fail-plan": [{"class": "oom", "stage": "restore", "attempt": 1}]})
    started = time.time()
    outcome = run_mous(job)
    assert (outcome.status, outcome.stage, outcome.error_class) == ("failed", "restore", "oom")
    assert outcome.peak_rss > 0.3e9         # the stage it cut: what the dashboard shows
    record = read_checkpoint(job.workdir, "fetch")
    # The stage grows ~1 GB/s once started (~0.2 s of Python start-up): it crosses 0.3 GB
    # about 0.5 s in, so start + crossing + kill within 2 s of crossing is under 2.5 s.
    restore_wall = time.time() - record["end"]
    assert restore_wall < 2.5, restore_wall
    assert time.time() - started < 10
    retry = retry_task(job, outcome, failures_of_class=0)
    assert (retry.attempt, retry.memory_gb) == (2, 0.6)
    assert retry_task(job, outcome, failures_of_class=1) is None       # oom retries once
    resumed = run_mous(retry)
    assert resumed.status == "done" and resumed.stages_run == ("restore", "image", "export")
    assert resumed.peak_rss == max(resumed.records[s]["peak_rss"]
                                   for s in ("restore", "image", "export"))


@pytest.mark.parametrize("kind, status", [("download", "failed"), ("segfault", "failed"),
                                          ("tclean", "failed"), ("casa-version", "failed")])
def test_planned_failures_are_classified(tmp_path, kind, status):
    job = task(tmp_path, **{"fail-plan": [{"class": kind, "stage": "image", "attempt": 1}]})
    outcome = run_mous(job)
    assert (outcome.status, outcome.stage, outcome.error_class) == (status, "image", kind)
    assert outcome.stages_run == ("fetch", "restore") and outcome.log_lines
    assert read_checkpoint(job.workdir, "image") is None


def test_a_second_runner_on_the_same_mous_refuses_and_changes_nothing(tmp_path):
    job = task(tmp_path, **{"fail-plan": [{"class": "walltime", "stage": "fetch"}]})
    stop = threading.Event()
    results: list[Outcome] = []
    first = threading.Thread(target=lambda: results.append(run_mous(job, stop=stop)))
    first.start()
    log = job.workdir / "log" / "fetch.log"
    while not (log.exists() and "emulating" in log.read_text()):
        time.sleep(0.1)
    before = snapshot(job.workdir)
    second = run_mous(job, owner="another job")
    assert (second.status, second.error_class) == ("failed", "lock")
    assert "MOUS is locked by" in second.message
    assert snapshot(job.workdir) == before
    stop.set()
    first.join(timeout=30)
    assert (results[0].status, results[0].error_class) == ("interrupted", "walltime")
    assert results[0].peak_rss > 0
    assert not (job.workdir / "arihpc.lock").exists()


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def stage_group(workdir: Path) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if GUARD in cmd and str(workdir) in cmd:
            return os.getpgid(proc.pid)
    return None


def test_killing_the_worker_leaves_no_process_of_the_stage(tmp_path):
    job = task(tmp_path, **{"fail-plan": [{"class": "walltime", "stage": "fetch"}]})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        (worker_pid,) = client.run(os.getpid).values()
        future = client.submit(run_mous, job, pure=False)
        deadline = time.time() + 30
        while (group := stage_group(job.workdir)) is None and time.time() < deadline:
            time.sleep(0.2)
        assert group is not None
        members = [p for p in psutil.process_iter() if _pgid(p) == group]
        assert len(members) >= 2                     # the guard and the emulated stage
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.time()
        while any(_pgid(p) == group for p in psutil.process_iter()) and \
                time.time() - killed_at < 5:
            time.sleep(0.1)
        assert not any(_pgid(p) == group for p in psutil.process_iter()), \
            "stage processes outlived the worker by 5 s"
        del future


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None


def test_runner_command_writes_its_outcome(tmp_path):
    import subprocess
    import sys

    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", "arihpc.runner.run", "--uid", UID,
                           "--workdir", str(workdir), "--size-gb", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"{UID}: done"
    assert json.loads((workdir / "outcome.json").read_text())["status"] == "done"
    bad = subprocess.run([sys.executable, "-m", "arihpc.runner.run", "--uid", "../x",
                          "--workdir", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "not an ALMA MOUS uid" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_casa_version_from_the_delivery_picks_the_installation_or_fails(tmp_path):
    from arihpc.runner.plans import casa_command

    delivery = tmp_path / "member.uid___A001_X87a_X706"
    (delivery / "script").mkdir(parents=True)
    (delivery / "script" / "member.uid___A001_X87a_X706.scriptForPI.py").write_text(
        "import sys\nif casadef.casa_version != '4.7.2':\n    sys.exit('ERROR: PLEASE USE THE "
        "SAME VERSION OF CASA THAT YOU USED FOR GENERATING THE SCRIPT: 4.7.2')\n")
    site = {"4.7.2": "/opt/casa/casa-release-4.7.2-el7/bin/casa", "6.7.0.31": "pypi"}
    job = MousTask(UID, tmp_path / "w", "casa", 1.0,
                   options={"source": "http://127.0.0.1:1/{uid}/", "casa": site,
                            "imaging": "6.7.0.31", "delivery": str(delivery)})
    command = casa_command(job)
    assert command[0] == "/opt/casa/casa-release-4.7.2-el7/bin/casa"
    # that CASA's own Python runs arihpc's stage script, given by its path
    assert command[-1].endswith("casa_stages.py") and Path(command[-1]).is_file()
    lacking = MousTask(UID, tmp_path / "w", "casa", 1.0, options={
        **job.options, "casa": {"6.7.0.31": "pypi"}})
    outcome = run_mous(lacking)
    assert (outcome.status, outcome.error_class) == ("failed", "casa-version")
    assert "no CASA installation for version 4.7.2: this site has 6.7.0.31" in outcome.message


@pytest.mark.samples
def test_the_real_mous_readme_names_no_casa_version(samples_dir, tmp_path):
    from arihpc.runner.casa_version import detect_casa_version

    # the real README (read in place) says "the CASA version specified in the QA2 report"
    assert detect_casa_version(samples_dir) is None
    (tmp_path / "README.txt").write_text("CASA version: 4.2.2\n")
    assert detect_casa_version(tmp_path)[0] == "4.2.2"


def test_a_stage_timeout_ends_the_whole_group(tmp_path):
    from arihpc.runner.process import run_process

    started = time.time()
    result = run_process(["sh", "-c", "sleep 30 & sleep 30"], cwd=tmp_path,
                         log_path=tmp_path / "t.log", timeout_s=1)
    assert result.killed_for == "timeout" and time.time() - started < 8
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["sleep", "30"] and p.ppid() in (1, os.getpid())]


def test_a_404_from_the_archive_is_class_download_with_the_url(tmp_path):
    import http.server
    from functools import partial

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["no_proxy"] = "127.0.0.1,localhost"
    try:
        source = f"http://127.0.0.1:{server.server_address[1]}/{{uid}}/"
        job = MousTask(UID, tmp_path / "w", "casa", 1.0, options={"source": source})
        outcome = run_mous(job)
    finally:
        server.shutdown()
    assert (outcome.status, outcome.stage, outcome.error_class) == ("failed", "fetch",
                                                                    "download")
    assert source.replace("{uid}", "uid___A001_X87a_X706") in outcome.message
    assert "404" in outcome.message


def test_a_stage_that_finished_after_its_runner_died_is_checkpointed_not_run_again(tmp_path):
    """The runner died between the command's exit and the checkpoint: the guard's report says
    the command exited 0, so the next runner adopts it instead of running it again."""
    from arihpc.runner.process import run_process

    job = task(tmp_path)
    plan = emulator_plan(job)
    fetch = plan[0]
    log_path = job.workdir / "log" / "fetch.log"
    # run the fetch command the way the runner does, then "die": no checkpoint written,
    # and the guard's report left where a live runner would have read it
    result = run_process(fetch.argv, cwd=job.workdir, log_path=log_path)
    assert result.returncode == 0 and log_path.read_text().count("stage fetch done") == 1
    rusage = log_path.with_name(".fetch.log.rusage")
    rusage.write_text(json.dumps({"cpu_s": 0.1, "maxrss": 1, "returncode": 0,
                                  "start": time.time() - 2, "end": time.time() - 1}))
    outcome = run_mous(job)
    assert outcome.status == "done" and "fetch" in outcome.stages_run
    assert log_path.read_text().count("stage fetch done") == 1      # not run again
    assert read_checkpoint(job.workdir, "fetch")["end"] < time.time() - 0.5
    assert not rusage.exists()
    # a failed command's report is no proof: that stage runs again
    other = task(tmp_path / "b")
    failed_log = other.workdir / "log" / "fetch.log"
    failed_log.parent.mkdir(parents=True)
    failed_log.with_name(".fetch.log.rusage").write_text(json.dumps(
        {"cpu_s": 0, "maxrss": 0, "returncode": 1, "start": 0, "end": 1}))
    assert run_mous(other).status == "done"
    assert failed_log.read_text().count("stage fetch done") == 1


def test_held_locks_are_refreshed_by_one_thread_and_none_after_release(tmp_path):
    """One thread of the process rewrites every held lock in time; once released, a lock
    file is never written again (a late refresh would lock the MOUS for stale-s)."""
    locks = [MousLock(tmp_path / str(i), "test", refresh_s=0.1, stale_s=60) for i in range(3)]
    for lock in locks:
        lock.path.parent.mkdir()
        lock.acquire()
    first = [json.loads(lock.path.read_text())["refreshed"] for lock in locks]
    time.sleep(0.5)
    assert all(json.loads(lock.path.read_text())["refreshed"] > before
               for lock, before in zip(locks, first))
    assert sum(t.name == "arihpc-lock-refresh" for t in threading.enumerate()) == 1
    locks[0].release()
    time.sleep(0.3)
    assert not locks[0].path.exists()
    assert all(lock.path.exists() for lock in locks[1:])
    for lock in locks[1:]:
        lock.release()
    time.sleep(0.3)
    assert not any(lock.path.exists() for lock in locks)


@pytest.mark.parametrize("full", [True, False])
def test_a_stage_failing_with_no_known_line_is_disk_space_only_on_a_full_filesystem(
        tmp_path, monkeypatch, full):
    """On a full work filesystem a stage's log, in the same directory, gets no line either:
    the runner tells by the free space (arihpc.runner.run.FULL_BELOW_BYTES)."""
    from arihpc.runner import run

    if full:        # any filesystem has less free than this: as if the work one were full
        monkeypatch.setattr(run, "FULL_BELOW_BYTES", 1 << 62)
    job = task(tmp_path, **{"fail-plan": [{"class": "unknown", "stage": "image"}]})
    outcome = run_mous(job)
    assert (outcome.status, outcome.stage) == ("failed", "image")
    if full:
        assert outcome.error_class == "disk-space"
        assert outcome.message.startswith("arihpc: work filesystem full (")
    else:
        assert outcome.error_class == "unknown"
        assert outcome.message == "the emulator failed in a way nobody has a rule for"


def test_a_lock_that_cannot_be_written_on_a_full_filesystem_is_disk_space(tmp_path, monkeypatch):
    """Before any stage: the lock file's write fails with ENOSPC. The MOUS fails as disk-space
    (retried after a backoff), not as a lost worker, and no half-written lock is left."""
    import errno

    def full(self, *args, **kwargs):
        self.path.write_text("")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(MousLock, "acquire", full)
    outcome = run_mous(task(tmp_path))
    assert (outcome.status, outcome.error_class, outcome.stage) == ("failed", "disk-space", None)
    assert "No space left on device" in outcome.message
    assert not (task(tmp_path).workdir / LOCK_NAME).exists()
