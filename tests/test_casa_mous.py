"""A simulated MOUS through run_mous with real CASA 6: fetch over HTTP on 127.0.0.1, restore,
image, export; the FITS products checked by fitsverify and astropy."""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest
from astropy.io import fits

from arihpc.runner.plans import MousTask
from arihpc.runner.run import run_mous

UID = "uid://A001/X87a/X706"
DISK = "uid___A001_X87a_X706"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A real MOUS (simobserve, two spws) served over HTTP like the archive: {uid}/MANIFEST.json."""
    root = tmp_path_factory.mktemp("archive")
    sim = tmp_path_factory.mktemp("sim")
    done = subprocess.run([sys.executable, "-m", "arihpc.payloads.casa_stages", "simulate",
                           "--workdir", str(sim), "--uid", UID], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = root / DISK
    folder.mkdir()
    files = []
    for tar in sorted((sim / "raw").glob("*.tar")):
        shutil.copy(tar, folder / tar.name)
        data = (folder / tar.name).read_bytes()
        files.append({"name": tar.name, "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "MANIFEST.json").write_text(json.dumps({"files": files}))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield f"http://127.0.0.1:{server.server_address[1]}/{{uid}}/", sim
    server.shutdown()


def fits_files(workdir: Path, kind: str) -> list[Path]:
    return sorted((workdir / "export").glob(f"member.{DISK}.*_sci.spw*.{kind}.I.pbcor.fits"))


@pytest.mark.casa
def test_simulated_mous_fetch_restore_image_export(archive, tmp_path):
    source, _ = archive
    task = MousTask(UID, tmp_path / DISK, "casa", size_gb=0.1, memory_gb=8,
                    options={"source": source, "casa": {"6.7.0.31": "pypi"}})
    outcome = run_mous(task)
    assert outcome.status == "done", (outcome.error_class, outcome.message, outcome.log_lines)
    assert outcome.stages_run == ("fetch", "restore", "image", "export",
                                  "qa", "preview", "moments", "package")  # no QA2: no-counterpart
    summary = json.loads((task.workdir / "restore" / "summary.json").read_text())
    spws = summary["spws"]
    assert len(spws) == 2
    cubes, continua = fits_files(task.workdir, "cube"), fits_files(task.workdir, "cont")
    assert len(cubes) == 2 and len(continua) >= 1
    for spw in spws:
        (cube,) = [c for c in cubes if f"_sci.spw{spw['id']}.cube" in c.name]
        header = fits.getheader(cube)
        spectral = [i for i in range(1, header["NAXIS"] + 1)
                    if header[f"CTYPE{i}"].startswith("FREQ")]
        assert spectral and header[f"NAXIS{spectral[0]}"] == spw["nchan"]
    fitsverify = shutil.which("fitsverify")
    if fitsverify is None:
        message = "fitsverify not installed: apt-get install fitsverify"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    for product in cubes + continua:
        header = fits.getheader(product)
        assert {"BMAJ", "BMIN", "BPA"} <= set(header)
        with fits.open(product) as hdul:
            assert hdul[0].data is not None and hdul[0].data.size > 0
        check = subprocess.run([fitsverify, "-q", "-e", str(product)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
    assert tarfile.is_tarfile(next((task.workdir / "fetch").glob("*.tar")))
