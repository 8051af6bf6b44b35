"""The emulator's --trace: the CPU each stage run used, done or killed (scripts/bench_campaign.py
counts useful and lost CPU from it)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from arihpc.payloads.emulator import main
from arihpc.runner.plans import MousTask, emulator_plan


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_completed_stage_appends_one_done_line_after_its_output(tmp_path):
    workdir, trace = tmp_path / "uid___A001_X1_X2", tmp_path / "trace.jsonl"
    before = time.time()
    for stage in ("fetch", "image"):
        assert main(["--stage", stage, "--workdir", str(workdir), "--size-gb", "1",
                     "--cpu-s-per-gb", "0.05", "--trace", str(trace)]) == 0
        assert (workdir / stage / f"{stage}.out").exists()
    got = lines(trace)
    assert [(g["mous"], g["stage"], g["outcome"]) for g in got] == [
        ("uid___A001_X1_X2", "fetch", "done"), ("uid___A001_X1_X2", "image", "done")]
    after = time.time()
    for g in got:                       # times are rounded to the millisecond
        assert g["cpu_s"] >= 0.05 and before - 0.001 <= g["time"] <= after + 0.001
        assert 0 < g["wall_s"] <= g["time"] - before + 0.002


def test_sigterm_mid_stage_appends_a_killed_line_with_the_cpu_spent_and_exits_143(tmp_path):
    workdir, trace = tmp_path / "uid___A001_X1_X3", tmp_path / "trace.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "arihpc.payloads.emulator", "--stage", "image", "--workdir",
         str(workdir), "--size-gb", "1", "--cpu-s-per-gb", "60", "--trace", str(trace)],
        stdout=subprocess.PIPE, text=True)
    while "emulating stage" not in process.stdout.readline():
        pass
    watched = psutil.Process(process.pid)
    while sum(watched.cpu_times()[:2]) < 0.5:       # well into spending CPU
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    process.stdout.close()
    (got,) = lines(trace)
    assert (got["mous"], got["stage"], got["outcome"]) == ("uid___A001_X1_X3", "image", "killed")
    assert 0.5 <= got["cpu_s"] < 30
    assert not (workdir / "image").exists()          # killed before its output


def test_the_trace_option_reaches_every_stage_and_is_absent_without_it(tmp_path):
    task = MousTask("uid://A001/X1/X2", tmp_path, "emulator", 1.0,
                    options={"trace": str(tmp_path / "t.jsonl")})
    for stage in emulator_plan(task):
        assert stage.argv[stage.argv.index("--trace") + 1] == str(tmp_path / "t.jsonl")
    plain = MousTask("uid://A001/X1/X2", tmp_path, "emulator", 1.0)
    assert all("--trace" not in stage.argv for stage in emulator_plan(plain))


def test_each_line_names_the_batch_job_the_stage_ran_in(tmp_path, monkeypatch):
    workdir, trace = tmp_path / "uid___A001_X1_X4", tmp_path / "trace.jsonl"
    for variable, value in (("ARIHPC_BATCH_JOB", "4711"), ("SLURM_JOB_ID", "99")):
        monkeypatch.setenv(variable, value)
    assert main(["--stage", "fetch", "--workdir", str(workdir), "--size-gb", "0.1",
                 "--trace", str(trace)]) == 0
    monkeypatch.delenv("ARIHPC_BATCH_JOB")          # the study's and dask's jobs: SLURM's id
    assert main(["--stage", "image", "--workdir", str(workdir), "--size-gb", "0.1",
                 "--trace", str(trace)]) == 0
    assert [g["job"] for g in lines(trace)] == ["4711", "99"]
