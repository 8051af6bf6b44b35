"""Module paths that job scripts written before the package layout name still work.

Every job script arihpc submitted before preloads ``arihpc.jobs.worker_watch``; a hand-written
one may run ``python -m arihpc.jobs.runner``. New job scripts name ``arihpc.runner``.
"""

import subprocess
import sys

from click.testing import CliRunner
from distributed import LocalCluster

from arihpc.cli.main import main

UID = "uid___A001_X1_X2"


def test_new_job_scripts_preload_the_new_path():
    script = CliRunner().invoke(main, ["sites", "script", "mup"]).stdout
    assert "--preload arihpc.runner.worker_watch" in script
    assert "arihpc.jobs" not in script


def test_a_worker_started_as_an_old_job_script_starts_it_gets_the_parent_watch():
    """The worker command of an old job script, against a real scheduler: the preload loads
    and starts the thread that ends the worker with its job's shell."""
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--no-nanny", "--nthreads", "1", "--no-dashboard",
             "--preload", "arihpc.jobs.worker_watch"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            from distributed import Client

            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=60)
                names = next(iter(client.run(
                    lambda: [t.name for t in __import__("threading").enumerate()]).values()))
            assert "arihpc-parent-watch" in names
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_the_old_runner_command_runs_a_mous(tmp_path):
    done = subprocess.run([sys.executable, "-m", "arihpc.jobs.runner", "--uid", UID,
                           "--workdir", str(tmp_path / "w"), "--payload", "noop"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{UID}: done"
    assert (tmp_path / "w" / "outcome.json").is_file()
