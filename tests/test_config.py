"""A campaign's config beyond the process that read it: ``config.overrides`` travels with each
task, ``config.apply`` puts it in force in a worker and in the stage commands it starts."""

import subprocess
import sys

import dask.config

from arihpc import config


def test_overrides_are_the_settings_that_differ_from_the_packaged_defaults(tmp_path):
    assert config.overrides() == {}
    path = tmp_path / "c.yaml"
    path.write_text("arihpc:\n  runner:\n    walltime-margin-s: 5\n"
                    "  products:\n    ariqa-threshold: 0.3\n    pb-fraction: 0.5\n")
    with config.campaign_config(path):
        # the threshold is the packaged value: not an override
        assert config.overrides() == {"arihpc.runner.walltime-margin-s": 5,
                                      "arihpc.products.pb-fraction": 0.5}
    with dask.config.set({"arihpc.failures.retry.oom.retries": 3}):
        assert config.overrides() == {"arihpc.failures.retry.oom.retries": 3}
    assert config.overrides() == {}


def test_applied_settings_reach_a_command_the_process_starts():
    """In a fresh process (apply is for good): the child reads the parent's settings."""
    child = ("from arihpc import config; "
             "print(config.get('products.pb-fraction'), config.get('runner.walltime-margin-s'))")
    parent = ("import subprocess, sys; from arihpc import config; "
              "config.apply({'arihpc.products.pb-fraction': 0.5}); "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
              "text=True, check=True).stdout, end='')")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.5", "30"]
