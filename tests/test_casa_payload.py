"""The real CASA payload end to end: simulate a MOUS, fetch it, restore, image and export it.

Every stage runs as the runner runs it: ``python -m arihpc.payloads.casa_stages STAGE``, a fresh
process, here with a HOME and a cwd of its own that must stay empty (CASA writes nothing there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from arihpc.mous import disk_name
from arihpc.runner.failures import classify

pytestmark = pytest.mark.casa

UID = "uid://A001/X147/X5b"
DISK = disk_name(UID)
SPWS = {0: 8, 1: 16}          # the simulate stage's default spws: id -> channels


def _payload(stage: str, workdir: Path, sandbox: Path, uid: str = UID, ok: bool = True):
    """Run one stage with HOME and cwd in ``sandbox``; returns (process, wall seconds)."""
    home, cwd = sandbox / "home", sandbox / "cwd"
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "arihpc.payloads.casa_stages", stage,
            "--workdir", str(workdir), "--uid", uid]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if ok:
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-4000:]}"
    return proc, wall


@pytest.fixture(scope="module")
def mous(tmp_path_factory) -> dict:
    """One simulated MOUS through fetch (from a mirror folder), restore, image, export."""
    root = tmp_path_factory.mktemp("casa")
    sandbox, workdir = root / "sandbox", root / "work" / DISK
    walls = {}
    _, walls["simulate"] = _payload("simulate", root / "archive" / DISK, sandbox)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "arihpc.runner.fetch", "--source",
                    str(root / "archive" / "{uid}" / "raw"), "--uid", UID,
                    "--dest", str(workdir / "fetch")], check=True, capture_output=True)
    walls["fetch"] = time.monotonic() - started
    for stage in ("restore", "image", "export"):
        _, walls[stage] = _payload(stage, workdir, sandbox)
    print("stage wall times: " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()))
    return {"root": root, "workdir": workdir, "sandbox": sandbox}


def _fits_products(mous: dict) -> dict[str, dict]:
    listed = json.loads((mous["workdir"] / "export" / "products.json").read_text())
    return {Path(p["fits"]).name: p for p in listed["products"]}


def test_simulate_makes_an_archive_folder_fetch_reads(mous):
    raw = mous["root"] / "archive" / DISK / "raw"
    manifest = json.loads((raw / "MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [f"{DISK}.ms.tar"]
    assert sorted(p.name for p in raw.iterdir()) == ["MANIFEST.json", f"{DISK}.ms.tar"]
    assert (mous["workdir"] / "fetch" / f"{DISK}.ms.tar").stat().st_size == \
        manifest["files"][0]["size"]


def test_restore_summary_has_two_spws_and_the_source(mous):
    summary = json.loads((mous["workdir"] / "restore" / "summary.json").read_text())
    assert summary["uid"] == UID
    assert {spw["id"]: spw["nchan"] for spw in summary["spws"]} == SPWS
    assert list(summary["sources"]) == ["SimSource"]
    (ms,) = summary["ms"]
    assert ms["path"] == f"restore/{DISK}.ms" and ms["nrows"] > 0
    assert (mous["workdir"] / ms["path"] / "table.dat").is_file()


def test_export_writes_alma_product_names(mous):
    names = sorted(p.name for p in (mous["workdir"] / "export").glob("*.fits"))
    stem = f"member.{DISK}.SimSource_sci"
    assert names == sorted([f"{stem}.spw0.cube.I.pbcor.fits", f"{stem}.spw1.cube.I.pbcor.fits",
                            f"{stem}.spw0_1.cont.I.pbcor.fits"])
    assert sorted(_fits_products(mous)) == names


def test_cubes_have_native_channels_and_continuum_one_plane(mous):
    for name, product in _fits_products(mous).items():
        header = fits.getheader(mous["workdir"] / "export" / name)
        assert header["CTYPE3"] == "FREQ", name
        if product["kind"] == "cube":
            (spw,) = product["spws"]
            assert header["NAXIS3"] == SPWS[spw], name
        else:
            assert product["spws"] == [0, 1] and header["NAXIS3"] == 1, name
        for key in ("BMAJ", "BMIN", "BPA"):
            assert key in header, f"{name}: no {key}"
        assert 0 < header["BMIN"] <= header["BMAJ"] < 10 / 3600, name   # a beam of ~1.6"
        data = fits.getdata(mous["workdir"] / "export" / name)
        assert 0.8 < float(np.nanmax(data)) < 1.2, f"{name}: the 1 Jy point source is not there"


def test_every_fits_passes_fitsverify(mous):
    fitsverify = shutil.which("fitsverify")
    if fitsverify is None:
        reason = "fitsverify is not on PATH: apt-get install fitsverify"
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(f"fitsverify required under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    for path in sorted((mous["workdir"] / "export").glob("*.fits")):
        proc = subprocess.run([fitsverify, "-q", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0 and "verification OK" in proc.stdout, proc.stdout


def test_casa_logs_in_workdir_nothing_in_home_or_cwd(mous):
    logs = sorted(p.name for p in (mous["workdir"] / "log").glob("casa-*.log"))
    assert [n.split("-")[1] for n in logs] == ["export", "image", "restore"]
    assert not list((mous["sandbox"] / "cwd").iterdir())
    assert not list((mous["sandbox"] / "home").iterdir())
    assert not list((mous["workdir"] / "casa" / "tmp").iterdir())     # temp folders removed
    config = (mous["workdir"] / "casa" / "casasiteconfig.py").read_text()
    assert "measures_auto_update = False" in config and "data_auto_update = False" in config


def test_restore_without_a_measurement_set_fails_clearly(tmp_path):
    (tmp_path / "fetch").mkdir()
    (tmp_path / "x.txt").write_text("not a measurement set\n")
    subprocess.run(["tar", "cf", str(tmp_path / "fetch" / "a.tar"), "-C", str(tmp_path), "x.txt"],
                   check=True)
    proc, _ = _payload("restore", tmp_path, tmp_path / "sandbox", ok=False)
    assert proc.returncode == 1
    assert "casa_payload: restore failed: no measurement set in a.tar" in proc.stderr
    assert not (tmp_path / "restore" / "summary.json").exists()


EMPTY_MS = """
import sys
from pathlib import Path
from arihpc.payloads import casa_config
casa_config.activate(Path(sys.argv[1]), "make-empty-ms")
import casatools
sm = casatools.simulator()
sm.open(sys.argv[2])
sm.setspwindow(spwname="a", freq="100GHz", deltafreq="1MHz", freqresolution="1MHz",
               nchannels=4, stokes="XX YY")
sm.close()
"""


def test_restore_of_an_empty_measurement_set_fails_clearly(tmp_path):
    ms = tmp_path / "empty.ms"
    subprocess.run([sys.executable, "-c", EMPTY_MS, str(tmp_path / "maker"), str(ms)],
                   check=True, capture_output=True, timeout=300)
    (tmp_path / "fetch").mkdir()
    subprocess.run(["tar", "cf", str(tmp_path / "fetch" / "e.tar"), "-C", str(tmp_path),
                    "empty.ms"], check=True)
    proc, _ = _payload("restore", tmp_path, tmp_path / "sandbox", ok=False)
    assert proc.returncode == 1
    assert "empty.ms: empty measurement set (0 rows" in proc.stderr
    assert not (tmp_path / "restore" / "summary.json").exists()


def test_tclean_error_reaches_stderr_and_classifies_as_tclean(mous, tmp_path):
    workdir = tmp_path / DISK
    shutil.copytree(mous["workdir"] / "restore", workdir / "restore", symlinks=True)
    summary = json.loads((workdir / "restore" / "summary.json").read_text())
    summary["sources"] = {"NoSuchSource": summary["sources"]["SimSource"]}
    (workdir / "restore" / "summary.json").write_text(json.dumps(summary))
    proc, _ = _payload("image", workdir, tmp_path / "sandbox", ok=False)
    assert proc.returncode == 1
    assert "Error in tclean" in proc.stderr and "NoSuchSource" in proc.stderr
    assert "Leap second table TAI_UTC" in proc.stderr        # printed, and ignored:
    assert classify(proc.stderr.splitlines(), proc.returncode).name == "tclean"

