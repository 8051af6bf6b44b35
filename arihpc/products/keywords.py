"""Computed keywords and header completion for one FITS image product (docs/keywords.md).

The input is CASA ``exportfits`` output: axes RA, DEC, FREQ, STOKES (numpy shape
``(1, nchan, ny, nx)``), BUNIT Jy/beam, BMAJ/BMIN/BPA in degrees (or a BEAMS table), NaN outside
the primary-beam limit. Statistics are measured inside a circle around the image's reference
direction whose radius is ``products.pb-fraction`` times the primary beam's FWHM, where the
primary-beam correction has not yet blown the noise up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS, FITSFixedWarning
from radio_beam import Beam, Beams
from radio_beam.beam import NoBeamException

from arihpc import config
from arihpc.errors import ArihpcError

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
ARCSEC_PER_RAD = 180 * 3600 / math.pi

# The keywords arihpc computes or records: name -> FITS comment, [unit] first (<= 40 characters,
# so that a float or a short text value leaves room for it on the 80-character card).
KEYWORDS: dict[str, str] = {
    "ARIRMS": "[Jy/beam] clipped rms noise in region",
    "ARIPEAK": "[Jy/beam] peak in region",
    "ARIDR": "[ratio] dynamic range ARIPEAK/ARIRMS",
    "ARIFLUX": "[Jy] flux above flux-sigma*ARIRMS",
    "ARIPBFR": "[ratio] region radius / PB FWHM",
    "ARIRAD": "[arcsec] region radius",
    "ARINPIX": "[pixels] region size per plane",
    "ARIPKCH": "[channel] of ARIPEAK, 0-based",
    "ARIVER": "[text] arihpc version",
    "ARICASA": "[text] CASA version of the imaging",
    "ARISITE": "[text] site that made this image",
    "ARIDATE": "[UTC] date of the processing",
    "ARIMOUS": "[text] MOUS uid",
    "ARIQA": "[text] ARIQA verdict vs QA2 image",
}
# Standard keywords complete_header sets or fills in: name -> FITS comment (docs, tests).
STANDARD: dict[str, str] = {
    "ORIGIN": "[text] software that wrote the file",
    "TELESCOP": "[text] telescope",
    "OBJECT": "[text] source name",
    "DATE": "[UTC] date this file was written",
    "DATAMIN": "[BUNIT] minimum finite pixel value",
    "DATAMAX": "[BUNIT] maximum finite pixel value",
    "BMAJ": "[deg] beam major axis FWHM",
    "BMIN": "[deg] beam minor axis FWHM",
    "BPA": "[deg] beam position angle",
    "CHECKSUM": "HDU checksum",
    "DATASUM": "data unit checksum",
}
# Provenance item -> keyword; the other items only go to HISTORY.
PROVENANCE_KEYWORDS = {"arihpc": "ARIVER", "casa": "ARICASA", "site": "ARISITE",
                       "date": "ARIDATE", "mous": "ARIMOUS"}


class ProductError(ArihpcError):
    """A FITS product that cannot be measured, completed or compared: names the file."""


@dataclass(frozen=True)
class ImageStats:
    """What :func:`measure` finds inside the region (Jy/beam unless stated)."""

    rms: float
    peak: float
    dynamic_range: float
    flux: float                   # Jy, on the peak channel for a cube
    fraction: float               # region radius / primary-beam FWHM
    radius_arcsec: float
    pixels: int                   # spatial pixels in the region
    peak_channel: int | None      # 0-based; None for a single plane


def primary_beam_fwhm_arcsec(freq_hz: float, dish_m: float) -> float:
    """FWHM of an ALMA antenna's primary beam, 1.13 lambda / D, in arcsec."""
    return 1.13 * C_M_S / freq_hz / dish_m * ARCSEC_PER_RAD


def wcs_of(header: fits.Header) -> WCS:
    """The header's WCS; CASA headers raise harmless 'datfix'/'obsfix' notes, kept quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def reference_frequency(header: fits.Header) -> float:
    """Frequency (Hz) of the central channel of the header's FREQ axis."""
    world = wcs_of(header)
    spectral = world.spectral
    if spectral.naxis != 1 or not spectral.wcs.ctype[0].startswith("FREQ"):
        raise ProductError("no FREQ axis in the header (exportfits with velocity=False)")
    axis = 1 + world.wcs.spec
    nchan = int(header.get(f"NAXIS{axis}", 1))
    return float(spectral.pixel_to_world_values((nchan - 1) / 2))


def region_radius_arcsec(header: fits.Header, fraction: float,
                         dish_m: float | None = None) -> float:
    """fraction x primary-beam FWHM at the reference frequency, in arcsec."""
    dish = float(config.get("products.dish-m")) if dish_m is None else dish_m
    return fraction * primary_beam_fwhm_arcsec(reference_frequency(header), dish)


def region_mask(header: fits.Header, fraction: float, dish_m: float | None = None) -> np.ndarray:
    """2-D bool (ny, nx): pixels within fraction x PB FWHM of the reference direction."""
    celestial = wcs_of(header).celestial
    if celestial.naxis != 2:
        raise ProductError("no celestial axes in the header")
    radius = region_radius_arcsec(header, fraction, dish_m)
    x0, y0 = celestial.world_to_pixel_values(*celestial.wcs.crval)
    sx, sy = celestial.proj_plane_pixel_scales()
    ny, nx = int(header["NAXIS2"]), int(header["NAXIS1"])
    yy, xx = np.ogrid[:ny, :nx]
    # Small field: flat-sky distances in the projection plane are accurate enough.
    dist = np.hypot((xx - x0) * sx.to_value(u.arcsec), (yy - y0) * sy.to_value(u.arcsec))
    return dist <= radius


def plane_beams(hdul: fits.HDUList) -> list[Beam]:
    """One beam per channel of the primary image: BMAJ/BMIN/BPA for all, else the Stokes I
    rows of the BEAMS table CASA writes for per-plane beams."""
    header = hdul[0].header
    nchan = int(header.get("NAXIS3", 1)) if header.get("NAXIS", 0) > 2 else 1
    if "BMAJ" in header:
        return [Beam.from_fits_header(header)] * nchan
    if "BEAMS" not in hdul:
        raise ProductError("no beam: neither BMAJ/BMIN/BPA nor a BEAMS table")
    table = hdul["BEAMS"]
    try:
        beams = Beams.from_fits_bintable(table)
        rows = table.data
        first_pol = rows["POL"] == rows["POL"].min()
        order = np.argsort(rows["CHAN"][first_pol])
        chosen = [beams[int(i)] for i in np.flatnonzero(first_pol)[order]]
    except (KeyError, IndexError, ValueError) as exc:
        raise ProductError(f"unreadable BEAMS table: {exc}") from None
    if len(chosen) != nchan:
        raise ProductError(f"BEAMS table has {len(chosen)} Stokes I beams for {nchan} channels")
    return chosen


def common_beam(beams: Sequence[Beam]) -> Beam:
    """The smallest beam every one of ``beams`` can be convolved to."""
    unique = list({(b.major.to_value(u.deg), b.minor.to_value(u.deg),
                    b.pa.to_value(u.deg)): b for b in beams}.values())
    if len(unique) == 1:
        return unique[0]
    try:
        return Beams(beams=unique).common_beam()
    except Exception:                      # no convergent common beam: the largest covers all
        log.warning("no common beam found for %d beams: using the largest", len(unique))
        return Beams(beams=unique).largest_beam()


def beam_of(hdul: fits.HDUList) -> Beam:
    """The image's beam: BMAJ/BMIN/BPA, else the common beam of its BEAMS table."""
    return common_beam(plane_beams(hdul))


def _planes(data: np.ndarray) -> np.ndarray:
    """(nchan, ny, nx) view of a 2-, 3- or 4-D image holding one Stokes plane."""
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[0] != 1:
        raise ProductError(f"{data.shape[0]} Stokes planes: only Stokes I images are measured")
    if data.ndim not in (2, 3, 4):
        raise ProductError(f"a {data.ndim}-D array is not an image")
    return data.reshape(-1, *data.shape[-2:])


def blank_to_nan(planes: np.ndarray) -> np.ndarray:
    """(nchan, ...) float array with its all-zero planes set to NaN, in place: tclean leaves
    channels without data (e.g. between two spws of a combined cube) at exactly 0."""
    planes[~np.any(np.nan_to_num(planes), axis=tuple(range(1, planes.ndim)))] = np.nan
    return planes


def _clipped_rms(values: np.ndarray) -> float:
    # maxiters=None: clip until nothing more is clipped, so the value is well defined.
    _, _, rms = sigma_clipped_stats(values, sigma=float(config.get("products.clip-sigma")),
                                    maxiters=None)
    if not rms > 0:
        raise ProductError("zero noise in the region: not a sky image")
    return float(rms)


def _beam_pixels(beam: Beam, header: fits.Header) -> float:
    """Beam area in pixels: 2 pi bmaj bmin / (8 ln 2) / pixel area."""
    return float((beam.sr / wcs_of(header).celestial.proj_plane_pixel_area()).decompose())


def measure(data: np.ndarray, header: fits.Header, fraction: float | None = None,
            beam: Beam | Sequence[Beam] | None = None) -> ImageStats:
    """ImageStats inside the region; a cube's rms is over all its region voxels, its peak over
    the cube and its flux on the peak channel (with that channel's beam if given per channel).
    ``beam`` defaults to the header's BMAJ/BMIN/BPA."""
    fraction = float(config.get("products.pb-fraction")) if fraction is None else fraction
    planes = _planes(data)
    mask = region_mask(header, fraction)
    if planes.shape[1:] != mask.shape:
        raise ProductError(f"data {planes.shape[1:]} and header {mask.shape} disagree")
    try:
        beam = Beam.from_fits_header(header) if beam is None else beam
    except NoBeamException:
        raise ProductError("no beam: no BMAJ/BMIN/BPA in the header") from None
    beams = [beam] * planes.shape[0] if isinstance(beam, Beam) else list(beam)
    if len(beams) != planes.shape[0]:
        raise ProductError(f"{len(beams)} beams for {planes.shape[0]} channels")
    region = blank_to_nan(planes[:, mask].astype(np.float64))
    finite = region[np.isfinite(region)]
    radius = region_radius_arcsec(header, fraction)
    if finite.size == 0:
        raise ProductError(f"no finite pixel within {radius:.2f} arcsec of the centre")
    rms = _clipped_rms(finite)
    channel, pixel = np.unravel_index(np.nanargmax(region), region.shape)
    peak = float(region[channel, pixel])
    plane = region[channel]
    above = plane[plane > float(config.get("products.flux-sigma")) * rms]
    return ImageStats(rms=rms, peak=peak, dynamic_range=peak / rms,
                      flux=float(above.sum()) / _beam_pixels(beams[channel], header),
                      fraction=fraction, radius_arcsec=radius, pixels=int(mask.sum()),
                      peak_channel=int(channel) if planes.shape[0] > 1 else None)


def measure_file(path: str | Path, fraction: float | None = None) -> ImageStats:
    """:func:`measure` on a FITS file (per-channel beams from its BEAMS table if it has one)."""
    try:
        with fits.open(path) as hdul:
            return measure(hdul[0].data, hdul[0].header, fraction, plane_beams(hdul))
    except ProductError as exc:
        raise ProductError(f"{path}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ProductError(f"{path}: cannot read as a FITS image: {exc}") from None


def _stats_cards(stats: ImageStats) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ARIRMS": stats.rms, "ARIPEAK": stats.peak, "ARIDR": stats.dynamic_range,
        "ARIFLUX": stats.flux, "ARIPBFR": stats.fraction, "ARIRAD": stats.radius_arcsec,
        "ARINPIX": stats.pixels}
    if stats.peak_channel is not None:
        values["ARIPKCH"] = stats.peak_channel
    return values


def _history(header: fits.Header, text: str) -> None:
    """HISTORY cards of at most 72 characters, wrapped at words."""
    if not text.isascii() or not text.isprintable():
        raise ProductError(f"HISTORY text is not printable ASCII: {text!r}")
    for line in textwrap.wrap(text, width=72, subsequent_indent="  ",
                              break_on_hyphens=False) or [""]:
        header.add_history(line)


def _complete_standard(hdul: fits.HDUList) -> None:
    """Fill the standard keywords: telescope, object, origin, date, data range, beam."""
    header = hdul[0].header
    # CASA's values are kept: they say what made the image.
    defaults = {"TELESCOP": "ALMA", "ORIGIN": "arihpc", "OBJECT": header.get("FIELD")}
    for key, value in defaults.items():
        if key not in header and value is not None:
            header[key] = (value, STANDARD[key])
    header["DATE"] = (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), STANDARD["DATE"])
    data = hdul[0].data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # an all-NaN image: no range
        low, high = (np.nanmin(data), np.nanmax(data)) if data is not None else (np.nan,) * 2
    if np.isfinite(low) and np.isfinite(high):
        scale, zero = header.get("BSCALE", 1.0), header.get("BZERO", 0.0)
        ends = sorted((float(low) * scale + zero, float(high) * scale + zero))
        unit = header.get("BUNIT", "").strip() or "BUNIT"
        header["DATAMIN"] = (ends[0], STANDARD["DATAMIN"].replace("BUNIT", unit))
        header["DATAMAX"] = (ends[1], STANDARD["DATAMAX"].replace("BUNIT", unit))
    if "BMAJ" not in header and "BEAMS" in hdul:
        beam = beam_of(hdul)
        # The BEAMS table stays: this is the one beam that covers all its planes.
        header["BMAJ"] = (beam.major.to_value(u.deg), STANDARD["BMAJ"])
        header["BMIN"] = (beam.minor.to_value(u.deg), STANDARD["BMIN"])
        header["BPA"] = (beam.pa.to_value(u.deg), STANDARD["BPA"])


def _set(header: fits.Header, key: str, value: Any) -> None:
    """One documented arihpc keyword, its KEYWORDS entry as the comment."""
    if key not in KEYWORDS:
        raise ProductError(f"keyword {key} is not one arihpc documents "
                           "(arihpc.products.keywords.KEYWORDS)")
    if isinstance(value, str) and not (value.isascii() and value.isprintable()):
        raise ProductError(f"{key} = {value!r}: FITS text must be printable ASCII")
    if isinstance(value, (np.generic, float)):
        value = value.item() if isinstance(value, np.generic) else value
        if not math.isfinite(value):
            raise ProductError(f"{key} = {value}: FITS headers hold finite numbers only")
    header[key] = (value, KEYWORDS[key])


def _complete(hdul: fits.HDUList, stats: ImageStats, provenance: Mapping[str, str],
              extra: Mapping[str, Any] | None) -> None:
    """Complete ``hdul``'s headers in memory (see :func:`complete_header`)."""
    header = hdul[0].header
    _complete_standard(hdul)
    for extension in hdul[1:]:
        # CASA's exportfits repeats XTENSION inside its BEAMS header: a fitsverify error.
        while extension.header.count("XTENSION") > 1:
            del extension.header[("XTENSION", 1)]
    for key, value in _stats_cards(stats).items():
        _set(header, key, value)
    for item, value in provenance.items():
        if item in PROVENANCE_KEYWORDS:
            _set(header, PROVENANCE_KEYWORDS[item], str(value))
    for key, value in (extra or {}).items():
        _set(header, key, value)
    for item, value in provenance.items():
        _history(header, f"{item}: {value}")
    _history(header, f"arihpc: ARI* keywords measured within {stats.radius_arcsec:.2f} arcsec "
                     f"({stats.fraction:g} x primary beam FWHM) of the reference direction, "
                     f"rms clipped at {config.get('products.clip-sigma')} sigma, flux above "
                     f"{config.get('products.flux-sigma')} x rms")


def complete_header(source: str | Path, dest: str | Path, stats: ImageStats,
                    provenance: Mapping[str, str], extra: Mapping[str, Any] | None = None) -> Path:
    """Write a copy of ``source`` to ``dest`` with the completed header: standard keywords,
    the ARI keywords of ``stats``, provenance keywords (PROVENANCE_KEYWORDS) and one HISTORY
    entry per provenance item, and ``extra`` arihpc keywords (e.g. ``{"ARIQA": "accept"}``).
    ``source`` is never changed; ``dest`` appears whole or not at all (temp, fsync, rename)."""
    source, dest = Path(source), Path(dest)
    if dest.resolve() == source.resolve():
        raise ProductError(f"{source}: complete_header writes a copy, not the file itself")
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        # Raw pixels: the copy keeps the source's data bytes whatever BSCALE/BZERO say.
        with fits.open(source, do_not_scale_image_data=True) as hdul:
            _complete(hdul, stats, provenance, extra)
            hdul.writeto(tmp, overwrite=True, checksum=True, output_verify="exception")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except ProductError as exc:
        raise ProductError(f"{source}: {exc}") from None
    except (OSError, ValueError, fits.VerifyError) as exc:
        raise ProductError(f"{source}: cannot write the completed copy {dest}: {exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    log.info("%s: completed header written to %s", source.name, dest)
    return dest
