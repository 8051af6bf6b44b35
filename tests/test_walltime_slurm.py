"""A real walltime cut by the local SLURM, and the resume in a fresh job (slow: ~2.5 min)."""

import json
import sys
import time
from pathlib import Path

import pytest

from arihpc.runner.workdir import read_checkpoint
from arihpc.sites.command import run_command

UID = "uid://A001/X87a/X706"
STAGES = ["fetch", "restore", "image", "export"]
# Four emulated stages of ~25 s of CPU each: a 1-minute job cannot finish them.
OPTIONS = json.dumps({"cpu-s-per-gb": 25, "predicted-s": 25})


def submit(tmp_path: Path, workdir: Path, walltime: str) -> str:
    script = tmp_path / f"job-{walltime.replace(':', '')}.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH -t {walltime}\n#SBATCH -o {tmp_path}/slurm-%j.out\n"
        f"exec {sys.executable} -m arihpc.runner.run --uid {UID} --workdir {workdir} "
        f"--size-gb 1 --options '{OPTIONS}'\n")
    return run_command(["sbatch", "--parsable", str(script)]).stdout.strip().split(";")[0]


def wait_until_gone(job_id: str, timeout_s: float) -> str:
    """Wait for a job to end; returns its last SLURM state."""
    state, end = "", time.time() + timeout_s
    while time.time() < end:
        state = run_command(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%T"],
                            check=False).stdout.strip()
        if state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(2)
    pytest.fail(f"job {job_id} still {state} after {timeout_s} s")


@pytest.mark.slurm
def test_walltime_cut_is_recorded_and_a_fresh_job_resumes_at_the_first_incomplete_stage(
        tmp_path):
    workdir = tmp_path / "uid___A001_X87a_X706"
    first = submit(tmp_path, workdir, "00:01:00")
    assert wait_until_gone(first, 200) == "TIMEOUT"
    cut = json.loads((workdir / "outcome.json").read_text())
    assert (cut["status"], cut["error_class"]) == ("interrupted", "walltime")
    done_before = [s for s in STAGES if read_checkpoint(workdir, s)]
    # Two or three stages fit in the 60-90 s a job gets on an idle machine; on a loaded one
    # (CPU shared) one may: what matters is a cut after a checkpoint, resumed from the next.
    assert done_before == STAGES[:len(done_before)] and 1 <= len(done_before) < len(STAGES)
    assert cut["stage"] == STAGES[len(done_before)]          # the first incomplete stage

    second = submit(tmp_path, workdir, "00:05:00")
    assert wait_until_gone(second, 300) == "COMPLETED"
    resumed = json.loads((workdir / "outcome.json").read_text())
    assert resumed["status"] == "done"
    assert list(resumed["stages_run"]) == STAGES[len(done_before):]
    for stage in STAGES:
        log = (workdir / "log" / f"{stage}.log").read_text()
        assert log.count(f"stage {stage} done") == 1                    # completed once
        started = log.count(f"emulating stage {stage}")
        assert started == (2 if stage == cut["stage"] else 1)          # + the one cut
        assert read_checkpoint(workdir, stage)["wall_s"] >= 20
