"""Preview PNGs of FITS image products (CASA ``exportfits`` output).

A product has the axes RA---SIN, DEC--SIN, FREQ, STOKES (numpy shape ``(1, nchan, ny, nx)``),
BUNIT ``Jy/beam``, the restoring beam in BMAJ/BMIN/BPA (degrees) or, for per-channel beams, a
BEAMS table, and NaN outside the primary-beam limit. ``preview`` draws

- a continuum image (one channel): the image on RA/Dec axes with its beam and a colourbar;
- a cube (more than one channel): the channel holding the peak, and the spectrum at the peak
  pixel against frequency with the peak channel marked, side by side.

The PNG is named after the FITS file (``.fits`` -> ``.png``) and written atomically. Matplotlib
runs on the Agg canvas of a private ``Figure``: no display, no pyplot state, no figure leaks.
Cubes are read one channel at a time, so a cube larger than memory can still be previewed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from astropy.visualization.wcsaxes import add_beam
from astropy.wcs import WCS, FITSFixedWarning
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from arihpc import config
from arihpc.errors import ArihpcError

log = logging.getLogger(__name__)

CMAP = colormaps["inferno"].with_extremes(bad="0.85")    # NaN (outside the PB limit): grey
CONTINUUM_SIZE = (5.6, 5.0)     # inches; at the default 100 dpi a 560 x 500 PNG
CUBE_SIZE = (11.0, 4.8)         # two panels side by side


class PreviewError(ArihpcError):
    """A FITS product that cannot be previewed; the message names the file."""


@dataclasses.dataclass
class _Product:
    """An opened image product: reads planes and spectra without loading the whole cube."""

    path: Path
    hdu: fits.ImageHDU | fits.PrimaryHDU
    beams: fits.BinTableHDU | None
    wcs: WCS
    roles: tuple[str, ...]      # per numpy axis: lat, lon, spec or other (taken at index 0)
    nchan: int

    @property
    def bunit(self) -> str:
        return str(self.hdu.header.get("BUNIT", "")).strip() or "pixel value"

    def plane(self, chan: int) -> np.ndarray:
        index = tuple({"spec": chan, "other": 0}.get(r, slice(None)) for r in self.roles)
        return np.asarray(self.hdu.section[index], dtype=float)

    def spectrum(self, y: int, x: int) -> np.ndarray:
        where = {"spec": slice(None), "other": 0, "lat": y, "lon": x}
        values = self.hdu.section[tuple(where[r] for r in self.roles)]
        return np.atleast_1d(np.asarray(values, dtype=float))


def _image_hdu(path: Path, hdul: fits.HDUList) -> fits.ImageHDU | fits.PrimaryHDU:
    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) >= 2:
            return hdu
    raise PreviewError(f"{path}: no image HDU with two or more axes")


def _open(path: Path, hdul: fits.HDUList) -> _Product:
    """Map the numpy axes to their roles from the WCS; RA/Dec must be the first FITS axes."""
    hdu = _image_hdu(path, hdul)
    try:
        with warnings.catch_warnings():
            # CASA headers trigger harmless 'datfix'/'obsfix' notes (MJD-OBS, OBSGEO-L/B/H).
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(hdu.header)
    except Exception as exc:        # astropy raises several types for a bad WCS
        raise PreviewError(f"{path}: unreadable WCS: {exc}") from None
    naxis = hdu.header["NAXIS"]
    fits_roles = ["other"] * naxis
    for index, role in ((wcs.wcs.lng, "lon"), (wcs.wcs.lat, "lat"), (wcs.wcs.spec, "spec")):
        if 0 <= index < naxis:
            fits_roles[index] = role
    if fits_roles[:2] != ["lon", "lat"]:
        raise PreviewError(f"{path}: expected RA and Dec as FITS axes 1 and 2, found "
                           f"{', '.join(wcs.wcs.ctype)}")
    roles = tuple(reversed(fits_roles))         # numpy axis order is the FITS order reversed
    nchan = hdu.header.get(f"NAXIS{wcs.wcs.spec + 1}", 1) if "spec" in roles else 1
    beams = hdul["BEAMS"] if "BEAMS" in hdul else None
    return _Product(path, hdu, beams, wcs, roles, int(nchan))


def _peak(product: _Product) -> tuple[int, int, int]:
    """(channel, y, x) of the brightest finite pixel, one channel in memory at a time."""
    best, where = -np.inf, None
    for chan in range(product.nchan):
        plane = product.plane(chan)
        finite = np.isfinite(plane)
        if not finite.any():
            continue                # a blank channel (e.g. a flagged edge channel)
        y, x = np.unravel_index(np.argmax(np.where(finite, plane, -np.inf)), plane.shape)
        if plane[y, x] > best:
            best, where = plane[y, x], (chan, int(y), int(x))
    if where is None:
        raise PreviewError(f"{product.path}: every pixel is NaN (blank image), no preview")
    return where


def _beam(product: _Product, chan: int) -> tuple[u.Quantity, u.Quantity, u.Quantity] | None:
    """The restoring beam (major, minor, angle) from the header or the BEAMS row of ``chan``."""
    header = product.hdu.header
    if all(k in header for k in ("BMAJ", "BMIN", "BPA")):
        return header["BMAJ"] * u.deg, header["BMIN"] * u.deg, header["BPA"] * u.deg
    if product.beams is not None:
        table = QTable.read(product.beams)
        rows = table[table["CHAN"] == chan] if "CHAN" in table.colnames else table
        if len(rows):
            # CASA's BEAMS table gives units; arcsec and deg are its convention when it does not.
            return tuple(u.Quantity(rows[name][0], default)
                         for name, default in (("BMAJ", u.arcsec), ("BMIN", u.arcsec),
                                               ("BPA", u.deg)))
    log.info("%s: no restoring beam in the header or a BEAMS table; drawing none", product.path)
    return None


def _channel_edges(product: _Product) -> tuple[np.ndarray, str, str]:
    """Spectral world value at the nchan + 1 channel edges, in GHz when the axis is a
    frequency; with the axis label and the unit."""
    edges = np.arange(product.nchan + 1) - 0.5
    quantity = u.Quantity(product.wcs.spectral.pixel_to_world(edges))
    frame = str(product.hdu.header.get("SPECSYS", "")).strip()
    try:
        return quantity.to_value(u.GHz), f"{frame} frequency (GHz)".strip(), "GHz"
    except u.UnitConversionError:   # a velocity or wavelength axis: keep its own unit
        ctype = product.wcs.wcs.ctype[product.wcs.wcs.spec]
        return quantity.value, f"{ctype} ({quantity.unit})", str(quantity.unit)


def _draw_image(fig: Figure, spec: tuple, product: _Product, chan: int,
                peak: tuple[int, int] | None) -> None:
    """One channel on RA/Dec axes with its beam, colourbar and (optionally) the peak marked."""
    plane = product.plane(chan)
    ax = fig.add_subplot(*spec, projection=product.wcs.celestial)
    norm = ImageNormalize(plane, interval=PercentileInterval(99.9), stretch=AsinhStretch(0.2))
    shown = ax.imshow(plane, origin="lower", cmap=CMAP, norm=norm, interpolation="nearest")
    ax.coords[0].set_axislabel("RA")
    ax.coords[1].set_axislabel("Dec")
    ax.coords[0].set_ticklabel(exclude_overlapping=True)
    beam = _beam(product, chan)
    if beam is not None:
        add_beam(ax, major=beam[0], minor=beam[1], angle=beam[2], corner="bottom left",
                 frame=True, facecolor="white", edgecolor="black", alpha=0.9)
    if peak is not None:
        ax.plot(peak[1], peak[0], marker="+", color="cyan", markersize=12, mew=1.5)
    fig.colorbar(shown, ax=ax, label=product.bunit, fraction=0.046, pad=0.03)


def _draw_spectrum(fig: Figure, spec: tuple, product: _Product, chan: int, y: int,
                   x: int) -> None:
    """The spectrum at pixel (x, y) against frequency, the channel ``chan`` shaded."""
    edges, label, unit = _channel_edges(product)
    ax = fig.add_subplot(*spec)
    ax.stairs(product.spectrum(y, x), edges, baseline=None, color="C0", lw=1.2)
    centre = (edges[chan] + edges[chan + 1]) / 2
    ax.axvspan(edges[chan], edges[chan + 1], color="C3", alpha=0.25, lw=0,
               label=f"peak channel {chan}: {centre:.4f} {unit}")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel(label)
    ax.set_ylabel(product.bunit)
    ax.set_title(f"spectrum at the peak pixel (x={x}, y={y})", fontsize=9)
    ax.legend(fontsize=8, loc="best")


def _figure(product: _Product, stem: str, dpi: float) -> Figure:
    chan, y, x = _peak(product)     # also refuses an all-NaN product
    if product.nchan == 1:
        fig = Figure(figsize=CONTINUUM_SIZE, dpi=dpi, layout="constrained")
        _draw_image(fig, (1, 1, 1), product, 0, None)
    else:
        fig = Figure(figsize=CUBE_SIZE, dpi=dpi, layout="constrained")
        _draw_image(fig, (1, 2, 1), product, chan, (y, x))
        fig.axes[0].set_title(f"channel {chan} of {product.nchan} (peak)", fontsize=9)
        _draw_spectrum(fig, (1, 2, 2), product, chan, y, x)
    fig.suptitle(stem, fontsize=9)
    return fig


def _save_atomic(fig: Figure, target: Path, dpi: float) -> None:
    """PNG to a temp file, fsync, rename: readers see no PNG or the whole one."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            FigureCanvasAgg(fig)            # attach Agg: savefig then never touches pyplot
            fig.savefig(f, format="png", dpi=dpi)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def preview(fits_path: Path, out_dir: Path, dpi: float | None = None) -> Path:
    """Write the preview PNG of one FITS product into ``out_dir``; returns its path.

    The kind (continuum or cube) comes from the number of channels. Raises PreviewError naming
    the file when it cannot be read or holds no finite pixel.
    """
    fits_path, out_dir = Path(fits_path), Path(out_dir)
    dpi = float(config.get("products.preview-dpi") if dpi is None else dpi)
    stem = fits_path.name.removesuffix(".fits")
    target = out_dir / f"{stem}.png"
    try:
        hdul = fits.open(fits_path, memmap=True)
    except (OSError, ValueError) as exc:
        raise PreviewError(f"{fits_path}: cannot read FITS: {exc}") from None
    with hdul:
        product = _open(fits_path, hdul)
        fig = _figure(product, stem, dpi)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(fig, target, dpi)
    log.info("preview of %s (%s, %d channel(s)) -> %s", fits_path.name,
             "cube" if product.nchan > 1 else "continuum", product.nchan, target)
    return target
