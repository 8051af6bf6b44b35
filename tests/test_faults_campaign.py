"""Each fault of the chaos campaign alone, on a small real campaign run by ``arihpc run``: the
work filesystem full, the archive down, a running batch job scancelled.

Afterwards the store, the checkpoints, the emulator's trace of every stage run, the process
table and the batch queue must show nothing lost (every MOUS done, or failed with the class it
must have), no stage run again once checkpointed, and nothing left running or queued. The
other faults have their own tests: kill -9 of the orchestrator (test_campaign.py), a worker's
SIGKILL and the memory guard (test_runner.py), PostgreSQL restarted (test_store_outage.py).
"""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from helpers import import_sizes, run
from test_campaign import campaign, ci_slurm_site

from arihpc.mous import disk_name
from arihpc.runner.workdir import LOCK_NAME, read_checkpoint
from arihpc.sites.command import run_command
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, stages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from chaos_campaign import _free_port, build_archive  # noqa: E402
from chaos_checks import jobs_left  # noqa: E402
from chaos_faults import ArchiveServer  # noqa: E402

EMULATED = ("fetch", "restore", "image", "export")
CONFIG = ("arihpc:\n  planning: {{median-memory-gb: 0.4, min-memory-gb: 0.1}}\n"
          "  failures:\n    retry:\n      {retry}\n")


def need_root(reason: str) -> None:
    """Skip unless root (fail instead under CI, where the tests run as root)."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
        pytest.fail(f"root required under CI: {reason}", pytrace=False)
    pytest.skip(f"{reason}: run as root")


def local_site(tmp_path: Path, io_slots: int = 1) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text("batch-system: local\nmax-jobs: 1\nx11: false\n"
                    "node-classes:\n  one: {cores: 1, memory: 1GB}\n"
                    f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp, "
                    f"io-slots: {io_slots}}}\n"
                    "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    return path


def start_run(url: str, tmp_path: Path, site: Path, retry: str, options: dict):
    """``arihpc run`` as its own process; its output in tmp_path/run.out and run.err."""
    (tmp_path / "c.yaml").write_text(CONFIG.format(retry=retry))
    with open(tmp_path / "run.out", "w") as out, open(tmp_path / "run.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "arihpc.cli", "--store", url, "--config",
             str(tmp_path / "c.yaml"), "run", "--site", str(site), "--payload", "emulator",
             "--payload-options", json.dumps({"trace": str(tmp_path / "trace.jsonl"),
                                              **options})],
            stdout=out, stderr=err, cwd=tmp_path,
            env={**os.environ, "no_proxy": "127.0.0.1,localhost"})


def run_log(tmp_path: Path) -> str:
    return (tmp_path / "run.err").read_text()[-3000:]


def wait_for(what: str, found, process: subprocess.Popen, timeout_s: float = 60):
    """Poll ``found()`` until it is true (its value is returned) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"{what}: not seen, and arihpc run exited {process.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    """End a run the test left running (it failed)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def finish(process: subprocess.Popen, tmp_path: Path, timeout_s: float = 120) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"arihpc run did not end in {timeout_s} s: {run_log(tmp_path)}")
    assert process.returncode == 0, run_log(tmp_path)
    assert "CRITICAL" not in run_log(tmp_path), run_log(tmp_path)


def tries(url: str) -> dict[str, list[tuple]]:
    """Each MOUS's attempts in order: (outcome, error class, message, batch job)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(attempts).order_by(attempts.c.id)).all()
    finally:
        engine.dispose()
    found: dict[str, list[tuple]] = {}
    for row in rows:
        found.setdefault(row.uid, []).append((row.outcome, row.error_class, row.message,
                                              row.batch_job))
    return found


def failed_of_class(url: str, name: str) -> dict[str, list[str]]:
    """MOUS with attempts failed with class ``name``, and those attempts' messages."""
    return {uid: [t[2] for t in ts if t[:2] == ("failed", name)]
            for uid, ts in tries(url).items() if any(t[:2] == ("failed", name) for t in ts)}


def assert_nothing_lost_or_run_twice(url: str, tmp_path: Path, expected: dict[str, str],
                                     stage_names: tuple[str, ...] = EMULATED,
                                     traced: tuple[str, ...] = EMULATED) -> None:
    """Every MOUS in its expected state, no attempt open; each stage of a MOUS done run to
    completion once (the emulator's trace), checkpointed and recorded once; no lock held,
    no stage process left."""
    store = CampaignStore.open(url)
    with store.engine.connect() as conn:
        state = dict(conn.execute(sa.text("select uid, state from mous where selected")).all())
        still_open = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
            attempts.c.ended_at.is_(None))).scalar()
        recorded = Counter(conn.execute(sa.select(stages.c.uid, stages.c.stage)).all())
    store.close()
    assert state == expected
    assert still_open == 0
    done = [uid for uid, s in expected.items() if s == "done"]
    assert recorded == Counter({(uid, stage): 1 for uid in done for stage in stage_names})
    trace = tmp_path / "trace.jsonl"
    runs = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() \
        else []
    completed = Counter((r["mous"], r["stage"]) for r in runs if r["outcome"] == "done")
    assert completed == Counter({(disk_name(uid), stage): 1 for uid in done
                                 for stage in traced})
    for uid in done:
        workdir = tmp_path / "work" / disk_name(uid)
        for stage in stage_names:
            check = read_checkpoint(workdir, stage)
            assert check is not None, (uid, stage)
            # no run of the stage started after the one its checkpoint keeps had ended
            assert not [r for r in runs if (r["mous"], r["stage"]) == (workdir.name, stage)
                        and r["time"] - r["wall_s"] > check["end"] + 0.05], (uid, stage)
    assert not list((tmp_path / "work").glob(f"*/{LOCK_NAME}"))
    deadline = time.monotonic() + 30        # a cancelled job's processes take seconds to go
    while left_running(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left_running(tmp_path) == []


def left_running(tmp_path: Path) -> list[str]:
    """Processes of this campaign still alive: stage commands and their guards (their argv
    names a work directory under tmp_path) and the dask workers started for it, local or in
    batch jobs (their environment names the site, and this session's SLURM: other test runs
    on this machine have their own)."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    conf = os.environ.get("SLURM_CONF")
    # Jobs of earlier tests of this session leave an Xvfb behind when SLURM kills their job
    # (a known leak: see the closing note of the campaign-at-scale issue), not this test.
    began = (tmp_path / "c.yaml").stat().st_mtime - 1
    left = []
    for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
        text = " ".join(process.info["cmdline"] or [])
        try:
            env = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            env = {}
        worker = "ARIHPC_SITE" in env and env.get("SLURM_CONF") == conf \
            and process.info["create_time"] >= began
        if process.info["pid"] not in ours and (str(tmp_path) in text or worker):
            left.append(f"{process.info['pid']}: {text[:200]}")
    return left


def fill(folder: Path) -> Path:
    """A file holding every free byte of ``folder``'s filesystem: writes there now fail."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def both_failed(url: str, uids: tuple[str, ...]) -> dict[str, list[str]] | None:
    found = failed_of_class(url, "disk-space")
    return found if found.keys() == set(uids) else None


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted on ``folder`` (root), unmounted after."""
    folder.mkdir()
    run_command(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                timeout=30)
    try:
        yield folder
    finally:
        if run_command(["umount", str(folder)], timeout=60, check=False).returncode != 0:
            run_command(["umount", "-l", str(folder)], timeout=60, check=False)


def test_a_full_work_filesystem_fails_as_disk_space_and_the_retry_after_ends_done(tmp_path):
    """The work directories on a real 8 MB tmpfs, filled while the first MOUS's restore runs:
    restore dies writing its output (its log has the ENOSPC line), and the second MOUS, which
    starts meanwhile, gets no log line at all (the free space tells). Both are retried once
    the filler is gone; the first from restore on."""
    need_root("the work directory is a tmpfs that the test mounts")
    url, uids = campaign(tmp_path, 2)
    first, second = [row["uid"] for row in json.loads(run(url, "queue", "--format",
                                                          "json").stdout)]
    import_sizes(url, tmp_path, {first: 2_000_000_000, second: 1_000_000_000})
    assert [row["uid"] for row in json.loads(run(url, "queue", "--format", "json").stdout)] \
        == [first, second]
    with tmpfs(tmp_path / "work", "8m") as work:
        # no fetch ahead: one MOUS at a time, so what each meets is known
        process = start_run(url, tmp_path, local_site(tmp_path, io_slots=0),
                            "disk-space: {retries: 2, backoff-s: 3}",
                            {"cpu-s-per-gb": 0.5, "output-mb-per-gb": 0.1})
        try:
            restore_log = work / disk_name(first) / "log" / "restore.log"
            wait_for("the first MOUS's restore running", lambda: restore_log.exists()
                     and "emulating stage restore" in restore_log.read_text(), process)
            fetched = read_checkpoint(work / disk_name(first), "fetch")
            filler = fill(work)
            failed = wait_for("both MOUS failed for the disk", lambda: both_failed(url, (
                first, second)), process)
            filler.unlink()
            finish(process, tmp_path)
        finally:
            stop(process)
        assert "No space left on device" in failed[first][0]
        assert failed[second][0].startswith("arihpc: work filesystem full (")
        history = tries(url)
        for uid in (first, second):
            assert history[uid][-1][:2] == ("done", None)
            assert {t[:2] for t in history[uid][:-1]} == {("failed", "disk-space")}
        assert read_checkpoint(work / disk_name(first), "fetch") == fetched    # not run again
        assert_nothing_lost_or_run_twice(url, tmp_path, {first: "done", second: "done"})


def test_the_archive_down_fails_downloads_that_are_retried_once_it_is_back(tmp_path):
    """The fetch stage downloads over HTTP from 127.0.0.1; the server is down when the
    campaign starts and comes up once a download has failed. A MOUS the archive lacks (404)
    fails as download after exactly the retries the config allows."""
    url, uids = campaign(tmp_path, 3)
    missing = uids[0]       # the last in the queue: the first two fetch with the archive down
    archive = ArchiveServer(tmp_path / "archive", _free_port())
    build_archive(archive.root, [uid for uid in uids if uid != missing])
    options = {"source": f"http://127.0.0.1:{archive.port}/{{uid}}/", "cpu-s-per-gb": 0.3,
               "output-mb-per-gb": 0}
    process = start_run(url, tmp_path, local_site(tmp_path),
                        "download: {retries: 3, backoff-s: 0.5}", options)
    try:
        down = wait_for("a download failed with the archive down",
                        lambda: failed_of_class(url, "download"), process)
        archive.start()
        finish(process, tmp_path)
    finally:
        archive.stop()
        stop(process)
    assert any("Connection refused" in message for messages in down.values()
               for message in messages), down
    history = tries(url)
    assert [t[:2] for t in history[missing]] == [("failed", "download")] * 4   # 1 + 3 retries
    assert "HTTP 404" in history[missing][-1][2]
    assert f"/{disk_name(missing)}/MANIFEST.json" in history[missing][-1][2]
    for uid in uids:
        if uid != missing:
            assert history[uid][-1][:2] == ("done", None)
            assert {t[:2] for t in history[uid][:-1]} <= {("failed", "download")}
    assert sum(len(failed_of_class(url, "download").get(uid, [])) for uid in uids
               if uid != missing) >= 1
    assert_nothing_lost_or_run_twice(
        url, tmp_path, {uid: "failed" if uid == missing else "done" for uid in uids},
        traced=EMULATED[1:])                    # the real fetch stage writes no trace
    for uid in uids:
        if uid != missing:
            log = (tmp_path / "work" / disk_name(uid) / "log" / "fetch.log").read_text()
            assert log.count(f"member.{disk_name(uid)}.asdm.sdm.tar\n") == 1   # fetched once


@pytest.mark.slurm
def test_a_scancelled_job_s_mous_resumes_from_its_checkpoints_and_ends_done(tmp_path):
    """On the local SLURM: the job running a MOUS that has checkpointed two stages is
    scancelled; the MOUS continues in another job from its third stage, and every MOUS ends
    done with no batch job left."""
    url, uids = campaign(tmp_path, 3)
    process = start_run(url, tmp_path, ci_slurm_site(tmp_path),
                        "lock: {retries: 3, backoff-s: 1}", {"cpu-s-per-gb": 0.6})

    def two_stages_in() -> tuple | None:
        for uid in uids:
            workdir = tmp_path / "work" / disk_name(uid)
            checks = [read_checkpoint(workdir, s) for s in EMULATED]
            if checks[1] and not checks[2] and (workdir / LOCK_NAME).exists():
                holder = json.loads((workdir / LOCK_NAME).read_text())
                return uid, holder["owner"], checks[:2]
        return None

    try:
        target, job, kept = wait_for("a MOUS with two stages checkpointed, in a job",
                                     two_stages_in, process, timeout_s=90)
        assert job.isdigit(), job                   # the lock names its SLURM job
        run_command(["scancel", job], timeout=30)
        finish(process, tmp_path, timeout_s=180)
    finally:
        stop(process)
    assert run_command(["squeue", "-h", "-j", job, "--states=all", "-o", "%T"],
                       timeout=30).stdout.strip() == "CANCELLED"
    history = tries(url)
    assert any(t[0] == "interrupted" for t in history[target]), history[target]
    assert history[target][-1][:2] == ("done", None)
    assert history[target][-1][3] != job        # it ended in another job
    workdir = tmp_path / "work" / disk_name(target)
    assert [read_checkpoint(workdir, s) for s in EMULATED[:2]] == kept    # not run again
    deadline = time.monotonic() + 60
    while jobs_left(("ci-slurm",)) and time.monotonic() < deadline:
        time.sleep(1)       # a job ends some seconds after the scancel of its release
    assert jobs_left(("ci-slurm",)) == []
    assert_nothing_lost_or_run_twice(url, tmp_path, {uid: "done" for uid in uids})
