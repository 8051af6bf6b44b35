"""Batch queue parsers on output captured from the real local SLURM and its PBS wrappers
(tests/data/README.md says what each captured job was doing)."""

import logging
import os
import time
from pathlib import Path

import pytest

from arihpc.errors import CommandError
from arihpc.sites.batch import (
    JobState,
    count_by_state,
    duration_s,
    parse_jobcomp,
    parse_qstat_full,
    parse_squeue,
    translate,
)
from arihpc.sites.command import run_command

DATA = Path(__file__).parent / "data"
S = JobState
EXPECTED = {"1": S.TIMEOUT, "2": S.DONE, "3": S.CANCELLED, "4": S.COMPLETING, "5": S.RUNNING,
            "6": S.PENDING, "7": S.PENDING}


def test_squeue_capture_parses_to_the_right_states_and_times():
    jobs = {job.job_id: job for job in parse_squeue((DATA / "squeue-states.txt").read_text())}
    assert {i: j.state for i, j in jobs.items()} == EXPECTED
    assert jobs["5"].name == "running-job"
    assert (jobs["5"].used_s, jobs["5"].limit_s, jobs["5"].left_s) == (3, 600, 597)
    assert (jobs["1"].used_s, jobs["1"].limit_s, jobs["1"].left_s) == (87, 60, None)   # INVALID
    assert jobs["7"].limit_s is None                                                   # UNLIMITED


def test_jobcomp_capture_gives_each_finished_job_its_state_times_and_core_seconds():
    jobs = {job.job_id: job for job in parse_jobcomp((DATA / "jobcomp.log").read_text())}
    assert {i: (j.name, j.state, j.cpus) for i, j in jobs.items()} == {
        "1": ("completed-job", S.DONE, 1), "2": ("timeout-job", S.TIMEOUT, 1),
        "3": ("two-cpu-job", S.DONE, 2), "4": ("failed-job", S.FAILED, 1),
        "5": ("cancelled-pending", S.CANCELLED, 0), "6": ("cancelled-running", S.CANCELLED, 1),
        "7": ("name with spaces", S.DONE, 1)}
    assert {i: j.core_s for i, j in jobs.items()} == {
        "1": 2, "2": 86, "3": 6, "4": 0, "5": 0, "6": 4, "7": 2}
    timeout = jobs["2"]
    assert (timeout.start - timeout.submit, timeout.end - timeout.start) == (1, 86)
    assert timeout.start == time.mktime((2026, 11, 22, 0, 22, 16, 0, 0, -1))     # local time


def test_qstat_full_capture_from_the_torque_wrapper():
    text = (DATA / "qstat-f.txt").read_text()
    # job 5 started at its mtime; read it 100 s later
    start = time.mktime(time.strptime("Sat Nov 21 19:36:59 2026", "%a %b %d %H:%M:%S %Y"))
    jobs = {job.job_id: job for job in parse_qstat_full(text, "torque", now=start + 100)}
    # the wrapper shows every ended job as C: done, whatever SLURM knew
    assert {i: j.state for i, j in jobs.items()} == {
        "1": S.DONE, "2": S.DONE, "3": S.DONE, "4": S.DONE, "5": S.RUNNING,
        "6": S.PENDING, "7": S.PENDING}
    assert jobs["1"].name == "timeout-job" and jobs["1"].limit_s == 60
    assert (jobs["5"].used_s, jobs["5"].limit_s, jobs["5"].left_s) == (100, 600, 500)
    assert jobs["6"].used_s is None
    assert count_by_state(jobs.values())[S.PENDING] == 2


def test_pbs_exit_status_tells_failed_and_walltime_from_done():
    text = "".join(f"Job Id: {i}.server\n    Job_Name = arihpc-mup-xeon64\n"
                   f"    job_state = F\n    Exit_status = {code}\n"
                   f"    resources_used.walltime = 96:00:04\n"
                   f"    Resource_List.walltime = 96:00:00\n\n"
                   for i, code in ((1, 0), (2, 1), (3, 271)))
    jobs = parse_qstat_full(text, "pbspro")
    assert [j.state for j in jobs] == [S.DONE, S.FAILED, S.TIMEOUT]
    assert jobs[2].used_s == 96 * 3600 + 4 and jobs[2].left_s == 0


def test_unknown_state_is_unknown_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        jobs = parse_squeue("9|LEVITATING|0:01|10:00|9:59|N/A|arihpc-x|debug\n")
        assert jobs[0].state is S.UNKNOWN and jobs[0].raw_state == "LEVITATING"
        assert translate("pbspro", "Z") is S.UNKNOWN
    assert "'LEVITATING' is not in arihpc's table" in caplog.text
    assert "'Z'" in caplog.text


@pytest.mark.parametrize("text, seconds", [("1:27", 87), ("9:57", 597), ("01:00:00", 3600),
                                           ("2-03:04:05", 183845), ("UNLIMITED", None),
                                           ("INVALID", None), ("", None)])
def test_durations(text, seconds):
    assert duration_s(text) == seconds


def test_a_failing_command_carries_argv_status_and_stderr():
    with pytest.raises(CommandError) as caught:
        run_command(["sh", "-c", "echo out; echo refused >&2; exit 3"])
    error = caught.value
    assert (error.argv[0], error.returncode, error.stdout, error.stderr) == (
        "sh", 3, "out\n", "refused\n")
    assert "exit status 3" in str(error) and "stderr: refused" in str(error)
    with pytest.raises(CommandError, match="qsub-not-here not found"):
        run_command(["qsub-not-here", "job.sh"])
    with pytest.raises(CommandError, match="no answer within 0.2 s"):
        run_command(["sleep", "5"], timeout=0.2)


def test_qstat_finding_no_job_is_an_empty_queue_and_other_failures_are_errors(
        tmp_path, monkeypatch):
    # SLURM's qstat wrapper (and Torque's qstat for unknown jobs) exits 153 with no output when
    # it finds no job; a failed queue read must still be an error.
    from arihpc.sites.batch import read_queue
    from arihpc.sites.profile import load_profile

    qstat = tmp_path / "qstat"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    site = load_profile("ci-pbspro")
    qstat.write_text("#!/bin/sh\nexit 153\n")
    qstat.chmod(0o755)
    assert read_queue(site) == []
    qstat.write_text("#!/bin/sh\necho 'qstat: cannot connect to server' >&2\nexit 2\n")
    with pytest.raises(CommandError) as failed:
        read_queue(site)
    assert failed.value.returncode == 2 and "cannot connect" in failed.value.stderr
