"""Synthetic FITS images in CASA exportfits' layout (stokeslast=True), with known noise and
sources, for tests/test_fits_keywords.py and tests/test_ariqa.py. Independent of arihpc."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

C_M_S = 299_792_458.0
ARCSEC_PER_RAD = 180 * 3600 / math.pi
RA, DEC = 150.0, -30.0


def casa_header(nx: int = 128, ny: int = 128, cell_arcsec: float = 0.33, nchan: int = 1,
                freq_hz: float = 230e9, chan_hz: float = 15.625e6,
                beam: tuple[float, float, float] | None = (1.5, 1.2, 30.0),
                crpix: tuple[float, float] | None = None) -> fits.Header:
    """A primary header as CASA 6 exportfits writes it (beam: arcsec, arcsec, deg)."""
    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"] = True, -32, 4
    for i, n in enumerate((nx, ny, nchan, 1), start=1):
        h[f"NAXIS{i}"] = n
    h["EXTEND"] = True
    h["BSCALE"], h["BZERO"] = 1.0, 0.0
    if beam is not None:
        h["BMAJ"], h["BMIN"], h["BPA"] = beam[0] / 3600, beam[1] / 3600, beam[2]
    else:
        h["CASAMBM"] = (True, "CASA multiple BEAMS table present")
    h["BTYPE"], h["OBJECT"], h["BUNIT"] = "Intensity", "SimSource", "Jy/beam"
    h["RADESYS"], h["LONPOLE"], h["LATPOLE"] = "ICRS", 180.0, DEC
    x0, y0 = crpix if crpix else (nx // 2 + 1, ny // 2 + 1)
    axes = (("RA---SIN", RA, -cell_arcsec / 3600, x0, "deg"),
            ("DEC--SIN", DEC, cell_arcsec / 3600, y0, "deg"),
            ("FREQ", freq_hz, chan_hz, 1.0, "Hz"), ("STOKES", 1.0, 1.0, 1.0, ""))
    for i, (ctype, crval, cdelt, crpix_i, cunit) in enumerate(axes, start=1):
        h[f"CTYPE{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"] = ctype, crval, cdelt
        h[f"CRPIX{i}"], h[f"CUNIT{i}"] = crpix_i, cunit
    h["PV2_1"], h["PV2_2"] = 0.0, 0.0
    h["RESTFRQ"], h["SPECSYS"] = freq_hz, "LSRK"
    h["TELESCOP"], h["OBSERVER"] = "ALMA", "CASA simulator"
    h["DATE-OBS"], h["TIMESYS"] = "2018-05-31T21:52:19.055291", "UTC"
    h["OBSRA"], h["OBSDEC"], h["INSTRUME"] = RA, DEC, "ALMA"
    h["DATE"], h["ORIGIN"] = "2026-01-01T00:00:00.000000", "CASA 6.7.0-31 CASAtools:v1.0.0"
    h.add_history("CASA START LOGTABLE")
    h.add_history("CASA END LOGTABLE")
    return h


def gaussian(header: fits.Header, beam: tuple[float, float, float],
             offset_arcsec: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(ny, nx) elliptical Gaussian of peak 1, FWHM and PA (east of north) of ``beam``,
    centred ``offset_arcsec`` (east, north) from the reference pixel."""
    cell = header["CDELT2"] * 3600
    yy, xx = np.mgrid[:header["NAXIS2"], :header["NAXIS1"]].astype(float)
    # East is towards -x (CDELT1 < 0), north towards +y.
    east = -(xx - (header["CRPIX1"] - 1)) * cell - offset_arcsec[0]
    north = (yy - (header["CRPIX2"] - 1)) * cell - offset_arcsec[1]
    pa = math.radians(beam[2])
    along = east * math.sin(pa) + north * math.cos(pa)
    across = east * math.cos(pa) - north * math.sin(pa)
    return np.exp(-4 * math.log(2) * ((along / beam[0]) ** 2 + (across / beam[1]) ** 2))


def write_image(path: Path, header: fits.Header, *, noise: float, source_jy: float = 2.0,
                beam: tuple[float, float, float] = (1.5, 1.2, 30.0),
                source_channels: list[int] | None = None, seed: int = 1,
                disc_fraction: float = 0.48, beams_table: list[tuple] | None = None,
                ) -> np.ndarray:
    """A point source of ``source_jy`` (restored with ``beam``) at the reference pixel in
    ``source_channels`` (default all), Gaussian noise of rms ``noise`` Jy/beam, NaN outside a
    disc of radius disc_fraction x image width (the pb limit). Returns the (1, nchan, ny, nx)
    data written."""
    nchan, ny, nx = header["NAXIS3"], header["NAXIS2"], header["NAXIS1"]
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, noise, (1, nchan, ny, nx))
    channels = range(nchan) if source_channels is None else source_channels
    shape = gaussian(header, beam)
    for k in channels:
        data[0, k] += source_jy * shape
    yy, xx = np.mgrid[:ny, :nx]
    outside = np.hypot(xx - (nx - 1) / 2, yy - (ny - 1) / 2) > disc_fraction * nx
    data[..., outside] = np.nan
    data = data.astype(np.float32)
    hdus = [fits.PrimaryHDU(data, header)]
    if beams_table is not None:
        hdus.append(beams_hdu(beams_table))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return data


def beams_hdu(beams: list[tuple[float, float, float]]) -> fits.BinTableHDU:
    """A BEAMS table as CASA writes it for per-plane beams (arcsec, arcsec, deg)."""
    major, minor, pa = (np.array(v, dtype=np.float32) for v in zip(*beams))
    columns = [fits.Column("BMAJ", "1E", "arcsec", array=major),
               fits.Column("BMIN", "1E", "arcsec", array=minor),
               fits.Column("BPA", "1E", "deg", array=pa),
               fits.Column("CHAN", "1J", array=np.arange(len(beams), dtype=np.int32)),
               fits.Column("POL", "1J", array=np.zeros(len(beams), dtype=np.int32))]
    hdu = fits.BinTableHDU.from_columns(columns, name="BEAMS")
    hdu.header["NCHAN"], hdu.header["NPOL"] = len(beams), 1
    return hdu


def pb_fwhm_arcsec(freq_hz: float, dish_m: float = 12.0) -> float:
    return 1.13 * C_M_S / freq_hz / dish_m * ARCSEC_PER_RAD


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def fitsverify(path: Path) -> str:
    """Assert that fitsverify finds 0 errors and 0 warnings in ``path``; its report. Skips
    (fails under CI) where fitsverify is missing."""
    tool = shutil.which("fitsverify") or ("/usr/bin/fitsverify"
                                          if Path("/usr/bin/fitsverify").exists() else None)
    if tool is None:
        if under_ci():
            pytest.fail("fitsverify required under CI: apt-get install fitsverify")
        pytest.skip("fitsverify not found: apt-get install fitsverify")
    report = subprocess.run([tool, str(path)], capture_output=True, text=True,
                            timeout=60).stdout
    assert "Verification found 0 warning(s) and 0 error(s)" in report, report
    return report
