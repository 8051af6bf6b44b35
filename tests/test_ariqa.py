"""ARIQA (arihpc.products.ariqa): product names (real archive names read in place), counterpart
matching, the common grid and the verdicts, on synthetic images in CASA's exportfits layout."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits, votable
from astropy.table import Table
from fits_images import casa_header, pb_fwhm_arcsec, write_image

from arihpc.products import ariqa
from arihpc.products.keywords import ProductError

REPO = Path(__file__).resolve().parent.parent
UID = "uid___A001_X87a_X706"
PIPELINE_BEAM, QA2_BEAM = (1.5, 1.2, 30.0), (2.2, 1.8, -20.0)


def real_names(samples_dir: Path) -> list[str]:
    """File names of the product tar's contents in the real DataLink export."""
    table = votable.parse_single_table(samples_dir / "astroquery__alma-datalink-recurse-this.xml")
    return [url.rsplit("/", 1)[1] for url in table.array["access_url"] if url]


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / n for n in names]


def cont(source: str, qa2: bool = False, spws: str = "0_1") -> str:
    kind = "mfs.I.manual.image" if qa2 else "cont.I"
    return f"member.{UID}.{source}_sci.spw{spws}.{kind}.pbcor.fits"


def cube(source: str, qa2: bool = False, spws: str = "0") -> str:
    kind = "cube.I.manual.image" if qa2 else "cube.I"
    return f"member.{UID}.{source}_sci.spw{spws}.{kind}.pbcor.fits"


# ---- names and counterparts ---------------------------------------------------------------

@pytest.mark.samples
def test_parse_real_archived_qa2_names(samples_dir):
    names = real_names(samples_dir)
    parsed = {n: ariqa.parse_product_name(n) for n in names}
    assert all(p is not None and p.uid == "uid://A001/X12a3/Xe9" for p in parsed.values())
    images = sorted(n for n, p in parsed.items() if p.is_pbcor_image)
    assert images == sorted(n for n in names if n.endswith(".image.pbcor.fits"))
    assert len(images) == 2
    keys = {parsed[n].key for n in images}
    assert keys == {("50_kms_cloud_sci", tuple(range(16)), "cont"),
                    ("50_kms_cloud_sci", (0, 4, 8, 12), "cube")}
    not_images = [n for n, p in parsed.items() if not p.is_pbcor_image]
    assert any(n.endswith(".pb.fits.gz") for n in not_images)   # .pb is not compared
    assert any(n.endswith(".mask.tgz") for n in not_images)


def test_parse_pipeline_names():
    spw0 = ariqa.parse_product_name(f"member.{UID}.SimSource_sci.spw0.cube.I.pbcor.fits")
    assert spw0.key == ("SimSource_sci", (0,), "cube") and spw0.uid == "uid://A001/X87a/X706"
    both = ariqa.parse_product_name(f"/x/member.{UID}.SimSource_sci.spw0_1.cont.I.pbcor.fits")
    assert both.key == ("SimSource_sci", (0, 1), "cont") and both.is_pbcor_image
    mfs = ariqa.parse_product_name(f"member.{UID}.SimSource_sci.spw1.mfs.I.pbcor.fits")
    assert mfs.key == ("SimSource_sci", (1,), "cont")
    # The ALMA pipeline's own names carry a stage token and iter1.
    alma = ariqa.parse_product_name(
        "member.uid___A001_X1288_Xba8.s33_0.NGC3504_sci.spw25.cube.I.iter1.image.pbcor.fits")
    assert alma.key == ("NGC3504_sci", (25,), "cube") and alma.is_pbcor_image
    plain = ariqa.parse_product_name(f"member.{UID}.SimSource_sci.spw0.cube.I.iter1.image.fits")
    assert not plain.is_pbcor_image
    assert ariqa.parse_product_name("README.txt") is None
    assert ariqa.parse_product_name("member.uid___A001_X8/../x.spw0.cube.I.pbcor.fits") is None


@pytest.mark.samples
def test_counterparts_among_real_archived_names(samples_dir, tmp_path):
    product = tmp_path / "product"
    touch(product, *real_names(samples_dir))
    stem = "member.uid___A001_X12a3_Xe9.50_kms_cloud_sci"
    all16 = "_".join(map(str, range(16)))
    ours = touch(tmp_path / "export", f"{stem}.spw4.cube.I.pbcor.fits",
                 f"{stem}.spw{all16}.cont.I.pbcor.fits", f"{stem}.spw1.mfs.I.pbcor.fits",
                 f"{stem}.spw1.cube.I.pbcor.fits",
                 "member.uid___A001_X12a3_Xe9.other_sci.spw0_1.cont.I.pbcor.fits")
    found = {p.name: (q.name if q else None)
             for p, q in ariqa.find_counterparts(ours, product).items()}
    qa2_cube = f"{stem}.spw0_4_8_12.cube.I.manual.image.pbcor.fits"
    qa2_mfs = f"{stem}.spw{all16}.mfs.I.manual.image.pbcor.fits"
    assert found == {ours[0].name: qa2_cube,          # one spw of the combined QA2 cube
                     ours[1].name: qa2_mfs,           # the exact spw set
                     ours[2].name: qa2_mfs,           # inside the QA2 continuum's spws
                     ours[3].name: None,              # spw 1 is not in the QA2 cube
                     ours[4].name: None}              # no QA2 image of that source


def test_counterparts_prefer_the_exact_spw_set(tmp_path):
    product = tmp_path / "product"
    touch(product, cont("S", True, "0_1_2_3"), cont("S", True, "0_1"), cont("S", True, "1"),
          cube("S", True, "0").replace(".pbcor.fits", ".pb.fits"),
          cube("S", True, "0").replace(".pbcor.fits", ".fits"))
    found = ariqa.find_counterparts([tmp_path / cont("S"), tmp_path / cont("S", spws="1_2"),
                                     tmp_path / cube("S")], product)
    assert [q.name if q else None for q in found.values()] == [
        cont("S", True, "0_1"), cont("S", True, "0_1_2_3"), None]


def test_no_product_folder_means_no_counterparts(tmp_path):
    products = [tmp_path / cont("S"), tmp_path / cube("S")]
    assert set(ariqa.find_counterparts(products, tmp_path / "missing").values()) == {None}
    (tmp_path / "empty").mkdir()
    assert set(ariqa.find_counterparts(products, tmp_path / "empty").values()) == {None}
    assert set(ariqa.find_counterparts(products, None).values()) == {None}


def test_a_product_with_no_alma_name_is_an_error(tmp_path):
    with pytest.raises(ProductError, match=re.escape(str(tmp_path / "image.fits"))):
        ariqa.find_counterparts([tmp_path / "image.fits"], tmp_path)


# ---- common grid --------------------------------------------------------------------------

def clipped_rms(values: np.ndarray) -> float:
    """Iterative 3-sigma clipping about the median until nothing more is clipped."""
    values = values[np.isfinite(values)]
    keep = np.ones(values.size, dtype=bool)
    while True:
        centre, spread = np.median(values[keep]), values[keep].std()
        now = keep & (np.abs(values - centre) <= 3 * spread)
        if now.sum() == keep.sum():
            return float(values[keep].std())
        keep = now


def region(header, fraction: float) -> np.ndarray:
    """The measurement disc, computed here from CRPIX/CDELT and 1.13 lambda / D."""
    freq = header["CRVAL3"] + header["CDELT3"] * ((header["NAXIS3"] - 1) / 2 + 1
                                                  - header["CRPIX3"])
    yy, xx = np.mgrid[:header["NAXIS2"], :header["NAXIS1"]]
    dist = np.hypot((xx - header["CRPIX1"] + 1) * header["CDELT1"],
                    (yy - header["CRPIX2"] + 1) * header["CDELT2"]) * 3600
    return dist <= fraction * pb_fwhm_arcsec(freq)


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """A pipeline continuum image and a QA2 one of another cell, size and a larger beam."""
    pipeline, qa2 = tmp_path / cont("S"), tmp_path / "product" / cont("S", True)
    qa2.parent.mkdir()
    write_image(pipeline, casa_header(beam=PIPELINE_BEAM), noise=1e-3, beam=PIPELINE_BEAM)
    write_image(qa2, casa_header(nx=100, ny=100, cell_arcsec=0.45, beam=QA2_BEAM),
                noise=1.5e-3, beam=QA2_BEAM, seed=2)
    return pipeline, qa2


def test_common_grid_other_cell_and_larger_beam(pair):
    grid = ariqa.common_grid(*pair)
    assert grid.pipeline.shape == grid.qa2.shape == (1, 128, 128)
    assert grid.beam.major.to_value("arcsec") == pytest.approx(QA2_BEAM[0], rel=1e-3)
    assert grid.beam.minor.to_value("arcsec") == pytest.approx(QA2_BEAM[1], rel=1e-3)
    assert grid.header["BMAJ"] * 3600 == pytest.approx(QA2_BEAM[0], rel=1e-3)
    # Both at the common beam: a 2 Jy point source peaks at 2 Jy/beam at the reference pixel.
    for data in (grid.pipeline, grid.qa2):
        assert np.nanmax(data) == pytest.approx(2.0, rel=0.02)
        assert np.unravel_index(np.nanargmax(data[0]), data[0].shape) in {
            (y, x) for y in (63, 64, 65) for x in (63, 64, 65)}
    row = ariqa.compare(*pair, fraction=0.25)
    mask = region(grid.header, 0.25)
    for side, data in (("pipeline", grid.pipeline), ("qa2", grid.qa2)):
        values = data[:, mask]
        assert row[f"{side}_peak"] == pytest.approx(np.nanmax(values), rel=0.01)
        assert row[f"{side}_rms"] == pytest.approx(clipped_rms(values), rel=0.01)
    assert row["pixels"] == mask.sum()
    assert row["reldiff_rms"] == pytest.approx(
        (row["pipeline_rms"] - row["qa2_rms"]) / (row["pipeline_rms"] + row["qa2_rms"]))


def test_cube_compares_only_the_channels_inside_the_qa2_cube(tmp_path):
    pipeline, qa2 = tmp_path / cube("S"), tmp_path / "product" / cube("S", True, "0_1")
    qa2.parent.mkdir()
    write_image(pipeline, casa_header(nchan=8), noise=1e-3, source_channels=[5])
    # 31.25 MHz channels from 230.07 GHz: covers pipeline channels 4-7 (230.0625-230.1094).
    write_image(qa2, casa_header(nchan=6, freq_hz=230.07e9, chan_hz=31.25e6, nx=100, ny=100,
                                 cell_arcsec=0.4), noise=1e-3, source_channels=[0, 1], seed=3)
    with fits.open(qa2, mode="update") as hdul:
        hdul[0].data[0, 2] = 0.0         # a channel tclean left without data
    grid = ariqa.common_grid(pipeline, qa2)
    assert list(grid.channels) == [4, 5, 6, 7]
    assert grid.pipeline.shape == grid.qa2.shape == (4, 128, 128)
    # Pipeline channel 7 lies between QA2 channels 1 and 2 (blank): not compared on either side.
    assert np.isnan(grid.qa2[3]).all() and np.isnan(grid.pipeline[3]).all()
    np.testing.assert_array_equal(np.isnan(grid.pipeline), np.isnan(grid.qa2))
    assert grid.header["NAXIS3"] == 4
    assert grid.header["CRVAL3"] + (1 - grid.header["CRPIX3"]) * grid.header["CDELT3"] == \
        pytest.approx(230.0625e9)
    assert all(np.isfinite(plane).any() for plane in grid.qa2[:3])
    row = ariqa.compare(pipeline, qa2, fraction=0.25)
    assert row["channels"] == 4 and row["pipeline_peak_channel"] == 5
    assert row["pipeline_peak"] == pytest.approx(2.0, rel=0.01)


def test_cube_outside_the_qa2_range_has_no_counterpart(tmp_path):
    pipeline, qa2 = tmp_path / cube("S"), tmp_path / "product" / cube("S", True)
    qa2.parent.mkdir()
    write_image(pipeline, casa_header(nchan=8), noise=1e-3)
    write_image(qa2, casa_header(nchan=8, freq_hz=232e9), noise=1e-3)
    table = ariqa.ariqa_table([pipeline], tmp_path / "product")
    assert list(table["verdict"]) == ["no-counterpart"]
    assert table["counterpart"][0] == "" and "no channel" in table["reason"][0]
    assert math.isnan(table["pipeline_rms"][0]) and table["channels"][0] == 0


# ---- verdicts and the table ---------------------------------------------------------------

def test_verdicts_and_ecsv(tmp_path):
    product = tmp_path / "product"
    product.mkdir()
    ours = []
    for source, qa2_noise in (("better50", 0.5e-3), ("better10", 0.9e-3), ("alone", None)):
        ours.append(tmp_path / cont(source))
        write_image(ours[-1], casa_header(), noise=1e-3, seed=4)
        if qa2_noise is not None:
            write_image(product / cont(source, True), casa_header(), noise=qa2_noise, seed=5)
    table = ariqa.ariqa_table(ours, product, fraction=0.25)
    assert list(table["verdict"]) == ["reject", "accept", "no-counterpart"]
    ratio = re.search(r"rms (\d+\.\d+) x QA2's > 1\.30; dynamic range", table["reason"][0])
    assert ratio and float(ratio[1]) == pytest.approx(2.0, rel=0.05)
    assert "within 30%" in table["reason"][1]
    assert table["qa2_rms"][0] == pytest.approx(0.5e-3, rel=0.05)
    assert table["pipeline_rms"][0] == pytest.approx(1e-3, rel=0.05)
    assert table["reldiff_rms"][0] == pytest.approx(1 / 3, rel=0.05)     # (2 - 1) / (2 + 1)
    assert table["counterpart"][1] == cont("better10", True)
    # A stricter threshold turns the 10 % case into a reject.
    assert ariqa.compare(ours[1], product / cont("better10", True), 0.25, 0.05)["verdict"] == \
        "reject"
    path = ariqa.write_table(table, tmp_path / "qa" / "ariqa.ecsv")
    back = Table.read(path, format="ascii.ecsv")
    assert back.colnames == list(ariqa.COLUMNS)
    assert list(back["verdict"]) == ["reject", "accept", "no-counterpart"]
    assert str(back["pipeline_rms"].unit) == "Jy / beam" and back.meta["ariqa-threshold"] == 0.3
    assert sorted(p.name for p in path.parent.iterdir()) == ["ariqa.ecsv"]


def test_empty_product_list_gives_an_empty_table(tmp_path):
    table = ariqa.ariqa_table([], tmp_path)
    assert len(table) == 0 and table.colnames == list(ariqa.COLUMNS)


def test_docs_list_every_ariqa_column():
    text = (REPO / "docs" / "keywords.md").read_text()
    for name in ariqa.COLUMNS:
        assert f"`{name}`" in text, f"{name} missing from docs/keywords.md"


def test_without_a_delivery_folder_every_product_has_no_counterpart_and_says_why(tmp_path):
    pipeline = tmp_path / cube("S")
    write_image(pipeline, casa_header(nchan=8), noise=1e-3)
    table = ariqa.ariqa_table([pipeline], None)
    assert list(table["verdict"]) == ["no-counterpart"]
    assert "no delivery folder (site profile key delivery)" in table["reason"][0]
