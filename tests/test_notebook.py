"""docs/notebook.md's worked example runs: its ```python blocks, in order, as one script in a
fresh Python, on the demo's store (the store URL through $ARIHPC_STORE, which the first block
reads), then on a store whose run times follow a known power law and which has failures (the
demo has one raw size and no failures, so there the fit and the failure counts have nothing
to show)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO_ROOT
from matplotlib import image
from test_export import INTERCEPT, SLOPE, demo_store, make_history_store

from arihpc.store.schema import attempts, mous, stages

DOC = REPO_ROOT / "docs" / "notebook.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
FIGURES = ("runtime_vs_size.png", "memory_by_node_class.png", "failures_by_class.png")


def notebook_script() -> str:
    """The doc's python blocks, in order, as one script."""
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 4 and "ARIHPC_STORE" in blocks[0], "the first block reads the store"
    return "\n".join(blocks)


def run_notebook(url: str, folder: Path) -> str:
    """Run the example in ``folder`` on the store at ``url``; its output. Its figures must be
    PNGs of 6 x 4 inches at 100 dpi."""
    script = folder / "notebook.py"
    script.write_text(notebook_script())
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, timeout=120, env={**env, "ARIHPC_STORE": url})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for name in FIGURES:
        assert image.imread(folder / name).shape[:2] == (400, 600), name
    return done.stdout


def counts(url: str) -> tuple[int, int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                         for t in (mous, attempts, stages))
    finally:
        engine.dispose()


def test_the_notebook_runs_on_the_demos_store(tmp_path_factory, tmp_path):
    url = demo_store(tmp_path_factory)
    out = run_notebook(url, tmp_path)
    n_mous, n_attempts, n_stages = counts(url)
    assert f"{n_mous} MOUS, {n_attempts} attempts, {n_stages} stage runs, 0 in the queue" in out
    assert "run time fit: none (2 MOUS done, 1 distinct raw size)" in out    # the emulator's
    # memory table: the local site's workers are named local-CLASS-N, so the class is known
    assert re.search(r"^local +local +2 ", out, re.MULTILINE), out
    assert "failures by class: none" in out and "the queue is empty" in out
    assert f"stage runs: {n_stages}, wall " in out


def test_the_notebook_fits_the_power_law_and_counts_failures_and_classes(tmp_path):
    url = make_history_store(tmp_path)
    out = run_notebook(url, tmp_path)
    fit = re.search(r"log10\(h\) = (\S+) \+ (\S+) \* log10\(GB\) \(8 MOUS done\)", out)
    assert fit, out
    assert float(fit.group(1)) == pytest.approx(INTERCEPT, abs=1e-3)
    assert float(fit.group(2)) == pytest.approx(SLOPE, abs=1e-3)
    assert "failures by class: {'tclean': 2, 'download': 1}" in out
    assert re.search(r"^ci +big +5 ", out, re.MULTILINE), out
    assert re.search(r"^ +not recorded +6 ", out, re.MULTILINE), out
    assert re.search(r"^ +1 uid://A001/X7e/Xa ", out, re.MULTILINE), out    # the queue's head
