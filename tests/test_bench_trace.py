"""scripts/bench_campaign_trace.py: each job's allocated core-s split into start-up, stages,
gaps between them, tail, and jobs that ran no stage (from the jobcomp log and the trace)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from arihpc.sites.batch import FinishedJob, JobState

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_campaign_trace.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_campaign_trace", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def job(job_id: str, start: float, end: float, cpus: int = 1) -> FinishedJob:
    return FinishedJob(job_id, "arihpc-bench-small", JobState.DONE, "COMPLETED",
                       start - 1, start, end, cpus)


def run(job_id: str, started: float, wall: float) -> dict:
    return {"mous": "m", "stage": "image", "outcome": "done", "job": job_id,
            "cpu_s": wall, "time": started + wall, "wall_s": wall}


def test_each_second_of_a_job_lands_in_exactly_one_part():
    split = load_script().job_split(
        [job("1", 100, 160), job("2", 100, 130, cpus=2), job("3", 200, 205)],
        [run("1", 103, 20), run("1", 124, 30), run("2", 110, 15), run("other", 0, 5)])
    # job 1: 3 s to start, stages 20 + 30 with 1 s between, 6 s tail
    # job 2 (2 CPUs): 10 s x 2 to start, 15 s of stage on one CPU, 15 idle, 5 s x 2 tail
    assert split == pytest.approx({"start": 3 + 20, "stages": 50 + 15, "between": 1 + 15,
                                   "tail": 6 + 10, "empty": 5})
    total = 60 + 60 + 5
    assert sum(split.values()) == pytest.approx(total)
