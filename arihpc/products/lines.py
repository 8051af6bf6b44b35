"""Line detection and moment maps of a cube product (a stand-in for ADMIT, ARI-L step 10).

For each cube (exportfits axes RA, Dec, FREQ, STOKES; numpy ``(1, nchan, ny, nx)``):

1. the continuum of each pixel is its median over the channels, and is subtracted;
2. the noise is 1.4826 x the median absolute deviation of what is left over all channels, in
   rings around the image centre (a pbcor image's noise grows with the distance to it);
3. a line is a run of adjacent channels whose brightest pixel is above ``products.line-sigma``
   x the noise of its ring (the brightest of ~10^4 noise pixels alone reaches ~5 sigma, hence
   the default 8); its spectrum is the one at the brightest pixel of the run: frequency = the
   intensity-weighted mean over the run, peak = the brightest channel, width = the run's
   channels x the channel width (FWZI at that threshold);
4. over the union of the line channels: moment 0 (integrated, Jy/beam km/s), moment 1
   (intensity-weighted radio velocity, km/s, only where moment 8 is above the threshold) and
   moment 8 (peak, Jy/beam), with velocities relative to the first line's frequency.

A moment map keeps the cube's four axes (a single channel at the line frequency), like CASA's
``immoments``, so its header stays complete and the preview code draws it. A cube with no line
gets a line list with no rows whose ``comment`` says so, and no moment maps.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

import arihpc
from arihpc import config

log = logging.getLogger(__name__)
C_KM_S = 299_792.458
MOMENTS = {0: ("mom0", "Jy/beam.km/s", "integrated intensity"),
           1: ("mom1", "km/s", "intensity-weighted velocity"),
           8: ("mom8", "Jy/beam", "peak intensity")}


@dataclass(frozen=True)
class Cube:
    """A continuum-subtracted cube and its spectral axis."""

    path: Path
    header: fits.Header
    line: np.ndarray            # (nchan, ny, nx), continuum subtracted
    freqs_hz: np.ndarray
    rms: float                  # the noise at the image centre
    noise: np.ndarray           # (ny, nx): the noise of each pixel's ring


@dataclass(frozen=True)
class Line:
    channels: tuple[int, ...]
    freq_hz: float
    peak: float
    width_hz: float
    y: int
    x: int


def read_cube(path: Path) -> Cube:
    """The cube, continuum subtracted, with its frequencies and robust rms."""
    with fits.open(path) as hdul:
        header, data = hdul[0].header.copy(), np.asarray(hdul[0].data, dtype=float)
    if data.ndim != 4 or header.get("CTYPE3") != "FREQ":
        raise ValueError(f"{path}: not a cube with axes RA, Dec, FREQ, STOKES")
    cube = data[0]
    if not np.isfinite(cube).any():
        raise ValueError(f"{path}: no finite pixel")
    channel = np.arange(cube.shape[0])
    freqs = header["CRVAL3"] + (channel + 1 - header["CRPIX3"]) * header["CDELT3"]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # pixels outside the pb limit
        line = cube - np.nanmedian(cube, axis=0)
    noise = ring_noise(line)
    return Cube(path, header, line, freqs, float(np.nanmin(noise)), noise)


def ring_noise(line: np.ndarray, ring_px: int = 4, min_values: int = 20) -> np.ndarray:
    """Robust rms of each ring of ``ring_px`` pixels around the centre, as a (ny, nx) map."""
    ny, nx = line.shape[1:]
    y, x = np.indices((ny, nx))
    rings = (np.hypot(y - ny // 2, x - nx // 2) / ring_px).astype(int)
    noise = np.full((ny, nx), np.nan)
    for ring in np.unique(rings):
        values = line[:, rings == ring]
        values = values[np.isfinite(values)]
        if values.size >= min_values:
            noise[rings == ring] = 1.4826 * np.median(np.abs(values - np.median(values)))
    if not np.isfinite(noise).any():
        raise ValueError("too few finite pixels to measure the noise")
    return noise


def _runs(channels: np.ndarray) -> list[tuple[int, ...]]:
    runs: list[list[int]] = []
    for c in map(int, channels):
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return [tuple(r) for r in runs]


def find_lines(cube: Cube, nsigma: float) -> list[Line]:
    """Every run of channels whose brightest pixel is above ``nsigma`` x rms."""
    with np.errstate(all="ignore"):
        snr = cube.line / cube.noise
        peaks = np.max(np.where(np.isfinite(snr), snr, -np.inf), axis=(1, 2))
    found = []
    for run in _runs(np.flatnonzero(peaks > nsigma)):
        stacked = np.nansum(snr[list(run)], axis=0)
        y, x = np.unravel_index(int(np.nanargmax(stacked)), stacked.shape)
        spectrum = np.clip(cube.line[list(run), y, x], 0, None)
        freqs = cube.freqs_hz[list(run)]
        centre = float(np.sum(freqs * spectrum) / np.sum(spectrum)) if spectrum.sum() > 0 \
            else float(freqs.mean())
        found.append(Line(run, centre, float(spectrum.max()),
                          len(run) * abs(float(cube.header["CDELT3"])), int(y), int(x)))
    return found


def line_table(cube: Cube, lines: list[Line], nsigma: float) -> Table:
    """The line list: frequency, peak, width (Hz and km/s), channels, position."""
    table = Table(
        {"freq_hz": [ln.freq_hz for ln in lines], "peak_jy_beam": [ln.peak for ln in lines],
         "width_hz": [ln.width_hz for ln in lines],
         "width_km_s": [ln.width_hz / ln.freq_hz * C_KM_S for ln in lines],
         "first_channel": [ln.channels[0] for ln in lines],
         "last_channel": [ln.channels[-1] for ln in lines],
         "x_pixel": [ln.x for ln in lines], "y_pixel": [ln.y for ln in lines]},
        dtype=[float, float, float, float, int, int, int, int])
    table.meta["cube"] = cube.path.name
    table.meta["rms_jy_beam"] = cube.rms
    table.meta["nsigma"] = nsigma
    table.meta["comment"] = (f"{len(lines)} line(s) above {nsigma:g} sigma" if lines else
                             f"no line above {nsigma:g} sigma (rms {cube.rms:.3g} Jy/beam "
                             "at the centre)")
    return table


def moment_maps(cube: Cube, lines: list[Line], nsigma: float) -> dict[int, np.ndarray]:
    """Moments 0, 1 and 8 over the channels of ``lines`` (at least one)."""
    channels = sorted({c for ln in lines for c in ln.channels})
    rest = lines[0].freq_hz
    velocity = C_KM_S * (rest - cube.freqs_hz[channels]) / rest          # radio convention
    dv = abs(float(cube.header["CDELT3"])) / rest * C_KM_S
    selected = cube.line[channels]
    with np.errstate(all="ignore"):
        mom0 = np.sum(selected, axis=0) * dv
        mom8 = np.max(selected, axis=0)
        weights = np.clip(selected, 0, None)
        mom1 = np.sum(weights * velocity[:, None, None], axis=0) / np.sum(weights, axis=0)
    with np.errstate(all="ignore"):
        mom1[~(mom8 > nsigma * cube.noise)] = np.nan
    return {0: mom0, 1: mom1, 8: mom8}


def write_moment(cube: Cube, moment: int, image: np.ndarray, lines: list[Line],
                 nsigma: float, into: Path) -> Path:
    """One moment map as FITS (the cube's header, one channel at the line frequency)."""
    suffix, unit, what = MOMENTS[moment]
    header = cube.header.copy()
    width = abs(float(header["CDELT3"])) * len({c for ln in lines for c in ln.channels})
    header.update(CRVAL3=lines[0].freq_hz, CRPIX3=1.0, CDELT3=width, BUNIT=unit,
                  BTYPE=what.title(), ORIGIN=f"arihpc {arihpc.__version__}",
                  DATE=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    for key in ("DATAMIN", "DATAMAX"):
        header.remove(key, ignore_missing=True, remove_all=True)
    channels = ", ".join(f"{ln.channels[0]}-{ln.channels[-1]}" for ln in lines)
    for text in (f"arihpc moments: moment {moment} ({what}) of {cube.path.name}",
                 f"arihpc moments: channels {channels}, above {nsigma:g} x the noise "
                 f"({cube.rms:.4g} Jy/beam at the centre) after a per-pixel median "
                 "continuum subtraction",
                 f"arihpc moments: velocity (radio) relative to {lines[0].freq_hz:.9g} Hz"):
        header.add_history(text)
    name = cube.path.name.replace(".pbcor.fits", f".{suffix}.fits")
    target = into / name
    hdu = fits.PrimaryHDU(image[None, None].astype(np.float32), header=header)
    tmp = target.with_name(f".{target.name}.tmp")
    hdu.writeto(tmp, overwrite=True, output_verify="exception")
    tmp.replace(target)
    return target


def analyse_cube(path: Path, into: Path) -> dict:
    """Line list (ECSV) and, with a line, moment maps of one cube into ``into``."""
    nsigma = float(config.get("products.line-sigma"))
    cube = read_cube(path)
    lines = find_lines(cube, nsigma)
    table = line_table(cube, lines, nsigma)
    listing = into / path.name.replace(".pbcor.fits", ".lines.ecsv")
    table.write(listing, format="ascii.ecsv", overwrite=True)
    maps = [write_moment(cube, m, image, lines, nsigma, into)
            for m, image in moment_maps(cube, lines, nsigma).items()] if lines else []
    log.info("%s: %s", path.name, table.meta["comment"])
    return {"cube": path.name, "lines": listing.name, "found": len(lines),
            "comment": table.meta["comment"], "moments": [m.name for m in maps]}
