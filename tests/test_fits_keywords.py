"""Computed keywords and header completion (arihpc.products.keywords) on synthetic images in
CASA's exportfits layout whose noise and sources are known."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from fits_images import beams_hdu, casa_header, fitsverify, gaussian, pb_fwhm_arcsec, write_image
from radio_beam import Beam

from arihpc.products import keywords as fk

REPO = Path(__file__).resolve().parent.parent
NOISE = 1e-3
PROVENANCE = {"arihpc": "0.1.0", "casa": "6.7.0.31", "site": "eso",
              "date": "2026-11-22T03:20:00", "mous": "uid://A001/X87a/X706",
              "imaging": "tclean specmode=cube robust=0.5 cell=0.33arcsec imsize=128 niter=100 "
                         "deconvolver=hogbom weighting=briggs pbcor=True restoringbeam=common "
                         "interpolation=nearest outframe=LSRK gridder=standard"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "member.uid___A001_X87a_X706.SimSource_sci.spw0_1.cont.I.pbcor.fits"
    write_image(path, casa_header(), noise=NOISE, source_jy=2.0)
    return path


@pytest.fixture
def cube(tmp_path) -> Path:
    path = tmp_path / "member.uid___A001_X87a_X706.SimSource_sci.spw0.cube.I.pbcor.fits"
    write_image(path, casa_header(nchan=8), noise=NOISE, source_jy=2.0, source_channels=[5])
    return path


def test_primary_beam_fwhm():
    # 1.13 lambda / D: 25.32 arcsec for a 12 m dish at 230 GHz, 2x at half the frequency.
    assert fk.primary_beam_fwhm_arcsec(230e9, 12) == pytest.approx(25.317, abs=0.001)
    assert fk.primary_beam_fwhm_arcsec(115e9, 12) == pytest.approx(50.634, abs=0.001)
    assert fk.primary_beam_fwhm_arcsec(230e9, 7) == pytest.approx(43.401, abs=0.001)


def test_region_is_a_disc_around_the_reference_pixel():
    header = casa_header(crpix=(50, 70))            # reference pixel away from the centre
    mask = fk.region_mask(header, 0.25)
    radius = 0.25 * pb_fwhm_arcsec(230e9) / 0.33    # pixels
    yy, xx = np.nonzero(mask)
    assert mask.shape == (128, 128)
    assert (xx.mean(), yy.mean()) == pytest.approx((49, 69), abs=0.01)
    assert mask.sum() == pytest.approx(math.pi * radius ** 2, rel=0.02)
    assert np.hypot(xx - 49, yy - 69).max() <= radius
    # A cube uses the central channel's frequency: wider disc at lower frequency.
    low = casa_header(nchan=9, freq_hz=115e9 - 4 * 15.625e6)
    assert fk.region_radius_arcsec(low, 0.25) == pytest.approx(
        0.25 * pb_fwhm_arcsec(115e9), rel=1e-9)


def test_measure_single_plane_known_values(image):
    stats = fk.measure_file(image, fraction=0.25)
    assert stats.rms == pytest.approx(NOISE, rel=0.05)
    assert stats.peak == pytest.approx(2.0, rel=0.005)
    assert stats.dynamic_range == pytest.approx(2000, rel=0.06)
    # A beam-shaped 2 Jy source: the pixels above 5 rms hold all but 0.25 % of it.
    assert stats.flux == pytest.approx(2.0, rel=0.01)
    assert stats.radius_arcsec == pytest.approx(0.25 * pb_fwhm_arcsec(230e9), rel=1e-9)
    assert stats.pixels == pytest.approx(math.pi * (stats.radius_arcsec / 0.33) ** 2, rel=0.02)
    assert stats.peak_channel is None and stats.fraction == 0.25


def test_measure_defaults_from_config(image):
    from arihpc import config

    assert fk.measure_file(image).fraction == config.get("products.pb-fraction")


def test_measure_cube_peak_channel_and_noise(cube):
    stats = fk.measure_file(cube, fraction=0.25)
    assert stats.peak_channel == 5
    assert stats.peak == pytest.approx(2.0, rel=0.005)
    assert stats.flux == pytest.approx(2.0, rel=0.01)
    assert stats.rms == pytest.approx(NOISE, rel=0.03)     # 8 channels of region voxels


def test_measure_ignores_blank_channels(cube):
    """tclean leaves channels without data at 0: they are no data, not zero noise."""
    with fits.open(cube, mode="update") as hdul:
        hdul[0].data[0, :6] = np.where(np.isnan(hdul[0].data[0, :6]), np.nan, 0.0)
    stats = fk.measure_file(cube, fraction=0.25)
    assert stats.rms == pytest.approx(NOISE, rel=0.05) and stats.peak_channel in (6, 7)


def test_measure_with_per_channel_beams(tmp_path):
    """No BMAJ: the BEAMS table gives each channel's beam; the flux uses the peak channel's."""
    beams = [(1.4 + 0.05 * k, 1.1 + 0.03 * k, 30.0) for k in range(8)]
    path = tmp_path / "perplane.fits"
    write_image(path, casa_header(nchan=8, beam=None), noise=NOISE, source_jy=2.0,
                beam=beams[6], source_channels=[6], beams_table=beams)
    stats = fk.measure_file(path, fraction=0.25)
    assert stats.peak_channel == 6
    assert stats.flux == pytest.approx(2.0, rel=0.01)


def test_complete_header_writes_a_verified_copy(cube, tmp_path):
    before = digest(cube), cube.stat().st_mtime_ns
    stats = fk.measure_file(cube, fraction=0.25)
    dest = fk.complete_header(cube, tmp_path / "out.fits", stats, PROVENANCE, {"ARIQA": "accept"})
    assert (digest(cube), cube.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cube.name, "out.fits"])
    with fits.open(dest) as hdul, fits.open(cube) as source:
        header = hdul[0].header
        np.testing.assert_array_equal(hdul[0].data, source[0].data)
    assert set(fk.KEYWORDS) <= set(header)
    assert header["ARIRMS"] == pytest.approx(stats.rms) and header["ARIPKCH"] == 5
    assert header["ARIFLUX"] == pytest.approx(2.0, rel=0.01)
    assert header["ARIMOUS"] == "uid://A001/X87a/X706" and header["ARIQA"] == "accept"
    assert header["ARICASA"] == "6.7.0.31" and header["ARISITE"] == "eso"
    assert header["TELESCOP"] == "ALMA" and header["OBJECT"] == "SimSource"
    assert header["ORIGIN"].startswith("CASA 6.7")              # CASA's value kept
    assert header["DATAMAX"] == pytest.approx(np.nanmax(fits.getdata(cube)))
    assert header["DATAMIN"] == pytest.approx(np.nanmin(fits.getdata(cube)))
    for key in fk.KEYWORDS:
        assert len(key) <= 8 and header.comments[key] == fk.KEYWORDS[key]
        assert re.match(r"\[[^]]+\]", header.comments[key])      # the unit comes first
    history = [str(h) for h in header["HISTORY"]]
    assert all(len(line) <= 72 for line in history)
    text = " ".join(line.strip() for line in history)
    for item, value in PROVENANCE.items():
        assert f"{item}: {value}" in text
    assert "CASA START LOGTABLE" in text                         # CASA's history kept
    fitsverify(dest)


def test_complete_header_takes_the_beam_from_a_beams_table(tmp_path):
    beams = [(1.4 + 0.05 * k, 1.1 + 0.03 * k, 30.0) for k in range(4)]
    source = tmp_path / "perplane.fits"
    write_image(source, casa_header(nchan=4, beam=None), noise=NOISE, beam=beams[0],
                beams_table=beams)
    with fits.open(source, mode="update") as hdul:
        # CASA's exportfits repeats XTENSION inside BEAMS: fitsverify reports an error.
        hdul["BEAMS"].header.append(("XTENSION", "BINTABLE", "Binary extension"))
    dest = fk.complete_header(source, tmp_path / "out.fits", fk.measure_file(source, 0.25),
                              PROVENANCE)
    header = fits.getheader(dest)
    assert header["BMAJ"] * 3600 == pytest.approx(1.55, rel=3e-3)  # the common beam
    assert header["BMIN"] * 3600 == pytest.approx(1.19, rel=3e-3)
    assert fits.getheader(dest, "BEAMS")["NCHAN"] == 4
    fitsverify(dest)


def test_complete_header_rejects_bad_requests(image, tmp_path):
    stats = fk.measure_file(image, fraction=0.25)
    with pytest.raises(fk.ProductError, match=re.escape(str(image))):
        fk.complete_header(image, image, stats, PROVENANCE)
    with pytest.raises(fk.ProductError, match="ARIFOO"):
        fk.complete_header(image, tmp_path / "out.fits", stats, PROVENANCE, {"ARIFOO": 1})
    with pytest.raises(fk.ProductError, match="ASCII"):
        fk.complete_header(image, tmp_path / "out.fits", stats, {"site": "Garching \u00e9"})
    with pytest.raises(fk.ProductError, match="missing"):
        fk.complete_header(image, tmp_path / "missing" / "out.fits", stats, PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [image.name]   # no partial file


def test_measure_errors_name_the_file(tmp_path):
    bad = tmp_path / "not-fits.fits"
    bad.write_text("hello")
    with pytest.raises(fk.ProductError, match=re.escape(str(bad))):
        fk.measure_file(bad)
    blank = tmp_path / "blank.fits"
    header = casa_header()
    fits.PrimaryHDU(np.full((1, 1, 128, 128), np.nan, np.float32), header).writeto(blank)
    with pytest.raises(fk.ProductError, match=f"{re.escape(str(blank))}: no finite pixel"):
        fk.measure_file(blank)
    nobeam = tmp_path / "nobeam.fits"
    fits.PrimaryHDU(np.ones((1, 1, 128, 128), np.float32),
                    casa_header(beam=None)).writeto(nobeam)
    with pytest.raises(fk.ProductError, match=f"{re.escape(str(nobeam))}: no beam"):
        fk.measure_file(nobeam)


def test_gaussian_helper_matches_radio_beam_area():
    """The tests' own source model integrates to the beam area radio_beam uses."""
    header = casa_header()
    beam = Beam(major=1.5 * u.arcsec, minor=1.2 * u.arcsec, pa=30 * u.deg)
    pixels = float((beam.sr / (0.33 * u.arcsec) ** 2).decompose())
    assert gaussian(header, (1.5, 1.2, 30.0)).sum() == pytest.approx(pixels, rel=1e-3)
    assert beams_hdu([(1.0, 1.0, 0.0)]).name == "BEAMS"


def test_docs_list_every_keyword():
    text = (REPO / "docs" / "keywords.md").read_text()
    for key in [*fk.KEYWORDS, *fk.STANDARD]:
        assert re.search(rf"`{key}`", text), f"{key} missing from docs/keywords.md"
