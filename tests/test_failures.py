"""Failure classes of real log lines (CASA, scriptForPI, SLURM, Torque, PBS Pro, the kernel)."""

import json

import pytest
from click.testing import CliRunner

from arihpc.cli.main import main
from arihpc.runner.failures import CLASSES, classify, retry_policy

LEAP = ("2023-03-07 09:12:44\tSEVERE\tMeasTable::dUTC(Double) (file ../../measures/Measures/"
        "MeasTable.cc, line 4290)\tLeap second table TAI_UTC seems out-of-date.")

LINES = [
    ("2019-05-10 10:22:31\tSEVERE\ttclean::::\tTask tclean raised an exception of class "
     "RuntimeError with the following message: Error in making PSF : One or more  of the cube "
     "section failed in de/gridding.", "tclean"),
    ("2018-02-01 12:00:00\tSEVERE\ttclean::task_tclean::\tException from task_tclean : "
     "Error in running Major Cycle", "tclean"),
    ("ERROR: probably not enough free disk space", "disk-space"),
    ("OSError: [Errno 28] No space left on device", "disk-space"),
    ("cp: error writing 'uid___A002_X1.ms/table.f1': Disk quota exceeded", "disk-space"),
    ("slurmstepd: error: *** JOB 123456 ON node12 CANCELLED AT 2019-05-10T10:22:31 DUE TO TIME "
     "LIMIT ***", "walltime"),
    ("=>> PBS: job killed: walltime 345632 exceeded limit 345600", "walltime"),
    ("PBS: job killed: walltime 604842 exceeded limit 604800", "walltime"),
    ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=123456.batch. Some of your "
     "processes may have been killed by the cgroup out-of-memory handler.", "oom"),
    ("=>> PBS: job killed: mem 70368744177664b exceeded limit 68719476736b", "oom"),
    ("terminate called after throwing an instance of 'std::bad_alloc'", "oom"),
    ("MemoryError", "oom"),
    ("/var/spool/slurmd/job123456/slurm_script: line 12: 23081 Segmentation fault      "
     "(core dumped) casa --nogui -c scriptForPI.py", "segfault"),
    ("2016-03-02 11:01:10\tSEVERE\timportasdm::::\tException Reported: Error in asdm2MS",
     "importasdm"),
    ("ERROR: PLEASE USE THE SAME VERSION OF CASA THAT YOU USED FOR GENERATING THE SCRIPT: 4.7.2",
     "casa-version"),
    ("arihpc: no CASA installation for version 4.2.2: this site has 4.7.2, 6.5.4",
     "casa-version"),
    ("arihpc-fetch: download failed: https://almascience.org/dataPortal/2016.1.00650.S_uid___"
     "A002_Xc1c1f1_Xa9b.asdm.sdm.tar: HTTP Error 404", "download"),
    ("urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>", "download"),
    ("arihpc: unsupported observing mode: total power", "unsupported-mode"),
    ("arihpc: MOUS is locked by 123456 on node12 (pid 4242)", "lock"),
    (LEAP, None),
    ("2019-05-10 10:22:31\tINFO\ttclean::::\t##### End Task: tclean #####", None),
]


@pytest.mark.parametrize("line, expected", LINES)
def test_each_real_line_gets_its_class(line, expected):
    found = classify([LEAP, "2019-05-10 10:00:00\tINFO\tcasa::\tstarting", line])
    assert found.name == expected
    assert (found.line == line.strip()) if expected else found.line is None


def test_the_leap_second_severe_line_is_not_a_failure_even_with_exit_zero():
    assert classify([LEAP], returncode=0).name is None


def test_exit_status_and_signal_without_a_telling_line():
    assert classify(["doing work"], returncode=-11).name == "segfault"
    assert classify(["doing work"], returncode=139).name == "segfault"     # 128 + SIGSEGV
    assert classify(["doing work"], returncode=143).name == "walltime"     # 128 + SIGTERM
    unknown = classify([LEAP, "Traceback (most recent call last):", "KeyError: 'x'"], 1)
    assert (unknown.name, unknown.line) == ("unknown", "KeyError: 'x'")


def test_every_class_has_a_retry_policy():
    assert {retry_policy(c).get("retries", 0) for c in ("casa-version", "unsupported-mode")} \
        == {0}
    assert retry_policy("download") == {"retries": 2, "backoff-s": 60}
    assert retry_policy("oom") == {"retries": 1, "memory-factor": 2}
    assert retry_policy("walltime") == {"resume": True}
    assert retry_policy("unknown") == {"retries": 1}
    assert set(CLASSES) >= {"walltime", "oom", "download", "lock", "unknown"}


def test_classify_command(tmp_path):
    log = tmp_path / "casa.log"
    log.write_text("\n".join([LEAP, LINES[0][0], "more"]) + "\n")
    result = CliRunner().invoke(main, ["classify", str(log), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"class": "tclean", "line": LINES[0][0]}
    clean = tmp_path / "ok.log"
    clean.write_text(LEAP + "\nall fine\n")
    result = CliRunner().invoke(main, ["classify", str(clean)])
    assert result.exit_code == 0 and result.stdout.splitlines()[1].split() == ["none", "-"]
