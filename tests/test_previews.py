"""Preview PNGs of FITS products, on synthetic files in CASA exportfits's exact layout.

Four axes RA---SIN, DEC--SIN, FREQ, STOKES (numpy shape (1, nchan, ny, nx)), Jy/beam, the beam in
BMAJ/BMIN/BPA degrees (or a BEAMS table), NaN outside the primary-beam limit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dask.config
import numpy as np
import pytest
from astropy.io import fits
from matplotlib.image import imread

from arihpc.products import previews
from arihpc.products.previews import PreviewError, preview

SIZE = 128
CELL_DEG = 0.33 / 3600
LINE_CHANNEL = 5
SOURCE_YX = (70, 58)


def casa_header(nchan: int, beam: bool = True) -> fits.Header:
    """The WCS and beam keywords exportfits writes (stokeslast=True, dropdeg=False)."""
    cards = {"BTYPE": "Intensity", "OBJECT": "J1234-5678", "BUNIT": "Jy/beam",
             "EQUINOX": 2000.0, "RADESYS": "FK5", "LONPOLE": 180.0, "LATPOLE": -30.0,
             "CTYPE1": "RA---SIN", "CRVAL1": 150.0, "CDELT1": -CELL_DEG, "CRPIX1": SIZE / 2 + 1,
             "CUNIT1": "deg", "CTYPE2": "DEC--SIN", "CRVAL2": -30.0, "CDELT2": CELL_DEG,
             "CRPIX2": SIZE / 2 + 1, "CUNIT2": "deg", "CTYPE3": "FREQ", "CRVAL3": 2.300271e11,
             "CDELT3": 1.5626844e7, "CRPIX3": 1.0, "CUNIT3": "Hz", "CTYPE4": "STOKES",
             "CRVAL4": 1.0, "CDELT4": 1.0, "CRPIX4": 1.0, "CUNIT4": "", "PV2_1": 0.0,
             "PV2_2": 0.0, "RESTFRQ": 2.3e11, "SPECSYS": "LSRK", "TELESCOP": "ALMA",
             "DATE-OBS": "2018-05-31T21:52:19.055291", "ORIGIN": "CASA 6.7.0-31"}
    if beam:
        cards.update(BMAJ=5 * CELL_DEG, BMIN=4 * CELL_DEG, BPA=-30.0)
    header = fits.Header()
    header.update(cards)
    return header


def casa_data(nchan: int, seed: int = 1) -> np.ndarray:
    """(1, nchan, ny, nx) float32: a Gaussian source (a line peaking in LINE_CHANNEL for a
    cube) over noise, NaN outside a circle like CASA's pblimit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    source = np.exp(-((y - SOURCE_YX[0]) ** 2 + (x - SOURCE_YX[1]) ** 2) / (2 * 2.5 ** 2))
    chans = np.arange(nchan)[:, None, None]
    spectrum = 1.0 if nchan == 1 else 0.2 + 2.0 * np.exp(-(chans - LINE_CHANNEL) ** 2 / 2.0)
    cube = spectrum * source + rng.normal(0, 0.02, (nchan, SIZE, SIZE))
    cube[:, (y - SIZE / 2) ** 2 + (x - SIZE / 2) ** 2 > (0.45 * SIZE) ** 2] = np.nan
    return cube[None].astype(np.float32)


def write_fits(path: Path, nchan: int, data: np.ndarray | None = None,
               beams_table: bool = False) -> Path:
    hdus = [fits.PrimaryHDU(casa_data(nchan) if data is None else data,
                            casa_header(nchan, beam=not beams_table))]
    if beams_table:     # per-channel beams, as CASA writes them when they differ
        hdus.append(fits.BinTableHDU.from_columns([
            fits.Column("BMAJ", "E", unit="arcsec", array=np.linspace(1.6, 1.8, nchan)),
            fits.Column("BMIN", "E", unit="arcsec", array=np.full(nchan, 1.3)),
            fits.Column("BPA", "E", unit="deg", array=np.full(nchan, 20.0)),
            fits.Column("CHAN", "J", array=np.arange(nchan)),
            fits.Column("POL", "J", array=np.zeros(nchan))], name="BEAMS"))
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One continuum and one cube product, with their previews (made once: a second each)."""
    folder = tmp_path_factory.mktemp("previews")
    stem = "member.uid___A001_X12a3_Xe9.J1234-5678_sci"
    cont = write_fits(folder / f"{stem}.spw25_27.cont.I.pbcor.fits", 1)
    cube = write_fits(folder / f"{stem}.spw25.cube.I.pbcor.fits", 8)
    out = folder / "png"
    return {"cont": cont, "cube": cube, "out": out,
            "cont_png": preview(cont, out), "cube_png": preview(cube, out)}


def _assert_not_blank(png: Path) -> np.ndarray:
    image = imread(png)
    rgb = image[..., :3]
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert rgb.std() > 0.1, f"{png}: nearly uniform"
    assert len(colours) > 200, f"{png}: only {len(colours)} colours"
    return image


def test_continuum_preview(made: dict[str, Path]) -> None:
    png = made["cont_png"]
    assert png == made["out"] / made["cont"].name.replace(".fits", ".png")
    image = _assert_not_blank(png)
    height, width = image.shape[:2]
    assert 0.8 < width / height < 1.5          # one panel
    assert sorted(p.name for p in made["out"].iterdir()) == sorted(
        [made["cont_png"].name, made["cube_png"].name])      # no temp file left


def test_cube_preview_has_two_panels(made: dict[str, Path]) -> None:
    image = _assert_not_blank(made["cube_png"])
    height, width = image.shape[:2]
    assert width > 1.8 * height


def test_cube_peak_is_the_line_channel_despite_nan(tmp_path: Path) -> None:
    data = casa_data(8)
    data[0, 0] = np.nan                         # a blank edge channel
    path = write_fits(tmp_path / "x.cube.I.pbcor.fits", 8, data)
    with fits.open(path) as hdul:
        chan, y, x = previews._peak(previews._open(path, hdul))
    assert (chan, y, x) == (LINE_CHANNEL, *SOURCE_YX)


def test_per_channel_beams_table(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "member.x.spw25.cube.I.pbcor.fits", 8, beams_table=True)
    _assert_not_blank(preview(path, tmp_path))


def test_preview_dpi_from_config(made: dict[str, Path], tmp_path: Path) -> None:
    with dask.config.set({"arihpc.products.preview-dpi": 50}):
        small = imread(preview(made["cont"], tmp_path))
    full = imread(made["cont_png"])
    assert abs(small.shape[1] * 2 - full.shape[1]) <= 2


def test_all_nan_raises_naming_the_file(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "blank.cube.I.pbcor.fits", 4,
                      np.full((1, 4, SIZE, SIZE), np.nan, dtype=np.float32))
    with pytest.raises(PreviewError, match="blank.cube.I.pbcor.fits.*NaN"):
        preview(path, tmp_path / "png")
    assert not (tmp_path / "png").exists()     # nothing written


def test_not_fits_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.cont.I.pbcor.fits"
    path.write_text("not a FITS file")
    with pytest.raises(PreviewError, match="broken.cont.I.pbcor.fits"):
        preview(path, tmp_path)


def test_no_pyplot_figures_leak(made: dict[str, Path]) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []
