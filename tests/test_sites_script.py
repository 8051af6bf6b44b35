"""Job scripts of the real sites, built with dask-jobqueue without submitting anything."""

import re

from click.testing import CliRunner

from arihpc.cli.main import main


def script(*args):
    result = CliRunner().invoke(main, ["sites", "script", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def worker_line(text):
    return next(line for line in text.splitlines() if "distributed.cli.dask_worker" in line)


def test_mup_is_pbs_pro_with_96_hour_walltime_and_worker_in_xvfb_run():
    text = script("mup")
    assert re.search(r"^#PBS -l select=1:ncpus=16:mem=60gb$", text, re.M)
    assert "#PBS -l walltime=96:00:00" in text.splitlines()
    # 96 h walltime, the worker leaves 10 min (the default drain margin) before
    assert "export ARIHPC_DEADLINE=$((ARIHPC_JOB_START + 345000))" in text
    assert "export ARIHPC_SITE=mup" in text
    assert 'export ARIHPC_BATCH_JOB="${PBS_JOBID:-${SLURM_JOB_ID:-}}"' in text
    worker = worker_line(text)
    assert worker.startswith("xvfb-run -a -s '-screen 0 1280x1024x24' ")
    assert "--resources slots=1,memory_gb=60,io=1" in worker
    # the prologue (deadline, module load) comes before the worker starts
    assert text.index("ARIHPC_DEADLINE") < text.index("module load casa") < text.index(worker)


def test_itarc_is_torque_with_a_job_per_node_class():
    for node_class, spec in (("xeon32", "nodes=1:ppn=16,mem=30gb"),
                             ("opteron8", "nodes=1:ppn=8,mem=7gb")):
        text = script("itarc", "--node-class", node_class)
        assert f"#PBS -l {spec}" in text.splitlines()
        assert "#PBS -l walltime=168:00:00" in text.splitlines()
        assert f"export ARIHPC_NODE_CLASS={node_class}" in text
        assert "select=" not in text


def test_eso_is_slurm():
    text = script("eso", "--node-class", "mem256")
    lines = text.splitlines()
    for directive in ("#SBATCH -p arihpc", "#SBATCH --cpus-per-task=32", "#SBATCH -t 168:00:00"):
        assert directive in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    assert 'ARIHPC_BATCH_JOB="${SLURM_JOB_ID:-}"' in text
    assert not any(line.startswith("#PBS") for line in lines)


def test_unknown_node_class_and_local_site():
    result = CliRunner().invoke(main, ["sites", "script", "itarc", "--node-class", "gpu"])
    assert result.exit_code == 2 and "choose one of xeon32, opteron8" in result.stderr
    result = CliRunner().invoke(main, ["sites", "script", "local"])
    assert result.exit_code == 2 and "no batch system" in result.stderr
