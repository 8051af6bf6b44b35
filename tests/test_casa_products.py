"""ARI-L products with real CASA: a simulated MOUS through all seven stages of run_mous, its
archived "QA2" images made from the same data with other manual parameters (robust 2, another
cell size) in the delivery tree's product/ folder; then ARIQA, the completed headers, previews,
the ari_l folder and tar, and the delivery tree left as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from fits_images import fitsverify
from matplotlib.image import imread

from arihpc.mous import disk_name
from arihpc.products import ariqa, packaging
from arihpc.products import keywords as fits_keywords
from arihpc.runner.plans import MousTask
from arihpc.runner.run import run_mous

pytestmark = pytest.mark.casa

UID = "uid://A001/X87a/X716"
DISK = disk_name(UID)
PROJECT = "2016.1.00001.S"
MEMBER = Path(PROJECT, "science_goal.uid___A001_X87a_X714", "group.uid___A001_X87a_X715",
              f"member.{DISK}")
QA2_ROBUST, QA2_CELL_ARCSEC = 2.0, 0.5


def _casa(stage: str, workdir: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, "-m", "arihpc.payloads.casa_stages", stage,
                           "--workdir", str(workdir), "--uid", UID, *extra],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"


def _qa2_name(name: str) -> str:
    """The archive's manual-imaging name of a product: ``...spw0_1.mfs.I.manual.image.pbcor``."""
    return name.replace(".cont.I.pbcor", ".mfs.I.pbcor").replace(
        ".I.pbcor.fits", ".I.manual.image.pbcor.fits")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("products")
    archive = root / "archive" / DISK
    _casa("simulate", archive)
    # The archived delivery: QA2 images of the same data, imaged with other parameters.
    qa2 = root / "qa2" / DISK
    (qa2 / "fetch").mkdir(parents=True)
    shutil.copy(next((archive / "raw").glob("*.tar")), qa2 / "fetch")
    _casa("restore", qa2)
    _casa("image", qa2, "--robust", str(QA2_ROBUST), "--cell-arcsec", str(QA2_CELL_ARCSEC))
    _casa("export", qa2)
    member = root / "deliveries" / MEMBER
    for folder in ("product", "script", "qa", "log"):
        (member / folder).mkdir(parents=True)
    for fits_file in (qa2 / "export").glob("*.fits"):
        shutil.copy(fits_file, member / "product" / _qa2_name(fits_file.name))
    (member / "README").write_text("CASA version: 6.7.0.31\n")
    (member / "script" / f"{DISK}.scriptForPI.py").write_text("casa_version = '6.7.0.31'\n")
    before = packaging.tree_checksums(root / "deliveries")
    task = MousTask(UID, root / "work" / DISK, "casa", size_gb=0.1, memory_gb=8,
                    project=PROJECT, options={
                        "source": str(root / "archive" / "{uid}" / "raw"),
                        "casa": {"6.7.0.31": "pypi"},
                        "delivery": str(root / "deliveries" / "{project}" / "*" / "*" /
                                        "member.{uid}")})
    outcome = run_mous(task)
    assert outcome.status == "done", (outcome.error_class, outcome.message, outcome.log_lines)
    return {"root": root, "workdir": task.workdir, "member": member, "before": before,
            "outcome": outcome, "qa2": qa2}


def _table(campaign: dict) -> Table:
    return Table.read(campaign["workdir"] / "qa" / "ariqa.ecsv", format="ascii.ecsv")


def test_the_runner_runs_the_four_product_stages_after_export(campaign):
    assert campaign["outcome"].stages_run == (
        "fetch", "restore", "image", "export", "qa", "preview", "moments", "package")


def test_ariqa_compares_every_product_with_its_qa2_image(campaign):
    table = _table(campaign)
    exported = sorted(p.name for p in (campaign["workdir"] / "export").glob("*.fits"))
    assert sorted(table["product"]) == exported and len(exported) == 3
    for row in table:
        assert row["counterpart"] == _qa2_name(row["product"])
        assert row["verdict"] in ("accept", "reject"), row["reason"]
        for name in ("peak", "flux", "rms", "dynamic_range"):
            assert np.isfinite(row[f"reldiff_{name}"]) and abs(row[f"reldiff_{name}"]) < 1
        # robust 2 makes a larger beam: the comparison is at the QA2's resolution or coarser
        qa2_beam = fits.getheader(campaign["member"] / "product" / row["counterpart"])
        assert row["beam_major"] >= qa2_beam["BMAJ"] * 3600 * 0.999


def _clipped_rms(values: np.ndarray) -> float:
    """Iterative 3-sigma clipping, numpy only (not astropy's)."""
    values = values[np.isfinite(values)]
    while True:
        mean, std = values.mean(), values.std()
        kept = values[np.abs(values - mean) <= 3 * std]
        if kept.size == values.size:
            return float(std)
        values = kept


def _region(header: fits.Header, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Pixels within fraction x 1.13 lambda/12 m of the reference pixel, from the header."""
    freq = header["CRVAL3"]
    radius_deg = fraction * 1.13 * 299_792_458.0 / freq / 12.0 * 180 / np.pi
    y, x = np.indices(shape)
    dx = (x - (header["CRPIX1"] - 1)) * abs(header["CDELT1"])
    dy = (y - (header["CRPIX2"] - 1)) * abs(header["CDELT2"])
    return np.hypot(dx, dy) <= radius_deg


def test_peak_and_rms_recomputed_with_numpy_on_the_common_grid_agree_within_1_percent(campaign):
    fraction = 0.25
    for row in _table(campaign):
        grid = ariqa.common_grid(campaign["workdir"] / "export" / row["product"],
                                 campaign["member"] / "product" / row["counterpart"])
        inside = _region(grid.header, grid.pipeline.shape[-2:], fraction)
        for side, data in (("pipeline", grid.pipeline), ("qa2", grid.qa2)):
            voxels = data[:, inside]
            assert np.nanmax(voxels) == pytest.approx(row[f"{side}_peak"], rel=0.01)
            assert _clipped_rms(voxels.ravel()) == pytest.approx(row[f"{side}_rms"], rel=0.01)


def test_a_qa2_with_50_percent_better_rms_rejects_and_10_percent_accepts(campaign, tmp_path):
    """The real continuum image as the archived QA2; the 'pipeline' image is it with
    Gaussian noise added until its rms is 1.5 x (or 1.1 x) the QA2's."""
    (cont,) = (campaign["workdir"] / "export").glob("*.cont.I.pbcor.fits")
    base = fits_keywords.measure_file(cont)
    rng = np.random.default_rng(3)
    verdicts = {}
    for worse in (1.5, 1.1):
        with fits.open(cont) as hdul:
            data = hdul[0].data
            noise = rng.standard_normal(data.shape).astype(data.dtype)
            hdul[0].data = data + noise * base.rms * np.sqrt(worse ** 2 - 1)
            noisy = tmp_path / f"worse{worse}.{cont.name}"
            hdul.writeto(noisy)
        row = ariqa.compare(noisy, cont)
        assert row["pipeline_rms"] / row["qa2_rms"] == pytest.approx(worse, rel=0.1)
        verdicts[worse] = row["verdict"]
    assert verdicts == {1.5: "reject", 1.1: "accept"}


def test_products_pass_fitsverify_with_history_and_computed_keywords(campaign):
    ari_l = campaign["member"] / "ari_l"
    products = sorted((ari_l / "product").glob("*.fits"))
    assert len(products) == 3
    documented = (Path(__file__).resolve().parents[1] / "docs" / "keywords.md").read_text()
    for product in products:
        fitsverify(product)
        header = fits.getheader(product)
        history = "\n".join(str(h) for h in header["HISTORY"])
        for needed in (f"mous: {UID}", "casa: 6.7.0", "imaging:", "robust=0.5", "arihpc:",
                       "grid: cell=", "threshold:", "bandwidth: EFFECTIVE_BW of the",
                       "bandwidth=EFFECTIVE_BW of the"):
            assert needed in history, needed
        for key in fits_keywords.KEYWORDS:
            if key != "ARIPKCH" or ".cube." in product.name:
                assert key in header, (product.name, key)
            assert f"`{key}`" in documented, key
        assert header["TELESCOP"] == "ALMA" and header["OBJECT"] == "SimSource"
        assert header["ARIQA"] in ("accept", "reject")
        assert header["ARIRMS"] > 0 and header["ARIDR"] == pytest.approx(
            header["ARIPEAK"] / header["ARIRMS"], rel=1e-6)
        with fits.open(product) as hdul:
            assert hdul[0].data.shape == fits.getdata(
                campaign["workdir"] / "export" / product.name).shape


def test_previews_exist_and_are_not_blank(campaign):
    pngs = sorted((campaign["member"] / "ari_l" / "qa").glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        pixels = imread(png)[..., :3]
        assert pixels.std() > 0.05, png.name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, png.name


def test_the_delivery_tree_is_unchanged_and_the_tar_manifest_verifies(campaign):
    assert packaging.tree_checksums(campaign["root"] / "deliveries") == campaign["before"]
    ari_l = campaign["member"] / "ari_l"
    assert packaging.verify_manifest(ari_l) == []
    (tar,) = (campaign["workdir"] / "package").glob("*.tar")
    assert tar.name == f"{DISK}.ari_l.tar"
    # published beside the delivery: no third copy of the products is left in the work folder
    # (the tar, and the package stage's own score for the weblog)
    assert sorted(p.name for p in tar.parent.iterdir()) == ["score.json", tar.name]
    assert packaging.verify_tar(tar) == []
    listing = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    assert f"{MEMBER.as_posix()}/ari_l/MANIFEST.sha256" in listing
    readme = (ari_l / "README.txt").read_text()
    assert UID in readme and "not science-ready" in " ".join(readme.split()).lower()
    for row in _table(campaign):
        assert row["product"].removesuffix(".fits") in readme
    assert json.loads((ari_l / "qa" / "keywords.json").read_text())
