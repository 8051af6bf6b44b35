"""ARIQA: a pipeline product against its archived QA2 image, as in the ALMA ARI-L study.

Each pipeline FITS product is matched by name to the QA2 image of the same source, kind (cont/mfs
or cube) and spws in the MOUS's archived ``product/`` folder; the QA2 image is regridded onto the
pipeline's pixels (and channels), both are brought to a common beam, both are measured in the same
region (arihpc.products.keywords) and the product is rejected when its rms or its dynamic range
is worse than QA2's by more than ``products.ariqa-threshold``. docs/keywords.md has the columns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import astropy.units as u
import numpy as np
from astropy.convolution import convolve_fft
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from radio_beam import Beam
from reproject import reproject_interp

from arihpc import config
from arihpc.errors import InvalidUid
from arihpc.mous import parse_uid
from arihpc.products.keywords import (
    ImageStats,
    ProductError,
    blank_to_nan,
    common_beam,
    measure,
    plane_beams,
    wcs_of,
)

log = logging.getLogger(__name__)

# member.<uid>.[<pipeline stage>.]<source>_<intent>.spw<ids>.<cube|mfs|cont>.<stokes>.<rest>
_NAME = re.compile(
    r"member\.(?P<uid>uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+)\."
    r"(?:s\d+_\d+\.)?"                  # the ALMA pipeline's stage token, e.g. s33_0
    r"(?P<stem>[^/]+?)\.spw(?P<spws>\d+(?:_\d+)*)\."
    r"(?P<kind>cube|mfs|cont)\.(?P<stokes>[IQUV]+)\.(?P<rest>[^/]+)")
_PBCOR = re.compile(r"(?:.+\.)?pbcor\.fits(?:\.gz)?")


class NotComparable(ProductError):
    """A pipeline product and its QA2 image that share no channel or spectral frame."""


@dataclass(frozen=True)
class ProductName:
    """What an ALMA product file name says."""

    name: str
    uid: str                        # canonical uid://...
    stem: str                       # source + intent, e.g. 50_kms_cloud_sci
    spws: tuple[int, ...]
    kind: str                       # cont (cont or mfs) or cube
    stokes: str
    rest: str                       # e.g. pbcor.fits, manual.image.pbcor.fits, manual.pb.fits.gz

    @property
    def key(self) -> tuple[str, tuple[int, ...], str]:
        return self.stem, self.spws, self.kind

    @property
    def is_pbcor_image(self) -> bool:
        """A primary-beam corrected image (not a .pb, mask or uncorrected image)."""
        return _PBCOR.fullmatch(self.rest) is not None


def parse_product_name(name: str | Path) -> ProductName | None:
    """The parts of an ALMA product file name, or None if it is not one."""
    name = Path(name).name
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        uid = parse_uid(match["uid"])
    except InvalidUid:
        return None
    kind = "cube" if match["kind"] == "cube" else "cont"
    return ProductName(name, uid, match["stem"], tuple(int(s) for s in match["spws"].split("_")),
                       kind, match["stokes"], match["rest"])


def _qa2_images(product_folder: str | Path | None) -> list[ProductName]:
    """The primary-beam corrected QA2 images in the folder (none if it is missing)."""
    folder = Path(product_folder) if product_folder is not None else None
    if folder is None or not folder.is_dir():
        return []
    found = (parse_product_name(p) for p in sorted(folder.iterdir()) if p.is_file())
    return [p for p in found if p is not None and p.is_pbcor_image]


def _best(product: ProductName, images: list[ProductName]) -> ProductName | None:
    """Same source and kind; the exact spw set, else the largest overlap (all of the product's
    spws first, then the fewest extra spws)."""
    same = [q for q in images if (q.stem, q.kind, q.stokes) ==
            (product.stem, product.kind, product.stokes)]
    wanted = set(product.spws)
    ranked = sorted((-len(wanted & set(q.spws)), not wanted <= set(q.spws), len(q.spws), q.name, q)
                    for q in same if wanted & set(q.spws))
    exact = [q for q in same if set(q.spws) == wanted]
    return exact[0] if exact else (ranked[0][-1] if ranked else None)


def find_counterparts(products: Iterable[str | Path],
                      product_folder: str | Path | None) -> dict[Path, Path | None]:
    """Each pipeline product -> its QA2 image in ``product_folder``, or None."""
    images = _qa2_images(product_folder)
    found: dict[Path, Path | None] = {}
    for product in map(Path, products):
        parsed = parse_product_name(product)
        if parsed is None:
            raise ProductError(f"{product}: not an ALMA product name "
                               "(member.<uid>.<source>_<intent>.spw<N>.<cube|mfs|cont>.I.*.fits)")
        best = _best(parsed, images)
        found[product] = Path(product_folder) / best.name if best else None
    return found


# ---- common grid --------------------------------------------------------------------------

@dataclass(frozen=True)
class CommonGrid:
    """Both images on the pipeline's pixels and channels, in Jy per common beam."""

    pipeline: np.ndarray            # (nchan, ny, nx)
    qa2: np.ndarray                 # same shape; NaN where QA2 has no data
    header: fits.Header             # the pipeline's, for these channels, with the common beam
    beam: Beam
    channels: np.ndarray            # the pipeline channels compared (0-based)

    @property
    def wcs(self) -> WCS:
        return wcs_of(self.header)


@dataclass(frozen=True)
class _Image:
    path: Path
    planes: np.ndarray              # (nchan, ny, nx)
    header: fits.Header
    beams: list[Beam]               # one per plane


def _read(path: Path) -> _Image:
    try:
        with fits.open(path) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data
            if data is None or data.ndim not in (2, 3, 4):
                raise ProductError("no 2- to 4-D image in the primary HDU")
            if data.ndim == 4 and data.shape[0] != 1:
                raise ProductError(f"{data.shape[0]} Stokes planes, only Stokes I is compared")
            axes = wcs_of(header).wcs
            if (axes.lng, axes.lat) != (0, 1) or (data.ndim > 2 and axes.spec != 2):
                raise ProductError("axes are not RA, DEC, FREQ[, STOKES] (CASA exportfits)")
            beams = plane_beams(hdul)
            planes = blank_to_nan(np.array(data.reshape(-1, *data.shape[-2:]),
                                           dtype=np.float32))
    except ProductError as exc:
        raise ProductError(f"{path}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ProductError(f"{path}: cannot read as a FITS image: {exc}") from None
    return _Image(path, planes, header, beams)


def _frequencies(image: _Image) -> np.ndarray:
    spectral = wcs_of(image.header).spectral
    if spectral.naxis != 1 or not spectral.wcs.ctype[0].startswith("FREQ"):
        raise ProductError(f"{image.path}: no FREQ axis")
    return np.atleast_1d(spectral.pixel_to_world_values(np.arange(image.planes.shape[0])))


def _compared_channels(pipeline: _Image, qa2: _Image) -> np.ndarray:
    """Pipeline channels whose frequency lies inside the QA2 cube's coverage."""
    frames = [str(i.header.get("SPECSYS", "")).strip() for i in (pipeline, qa2)]
    if frames[0] != frames[1]:
        raise NotComparable(f"{pipeline.path.name} is in {frames[0] or '?'} frequencies, "
                            f"{qa2.path.name} in {frames[1] or '?'}")
    ours, theirs = _frequencies(pipeline), _frequencies(qa2)
    # Half a QA2 channel beyond its end channels still interpolates (reproject keeps what lies
    # within half a pixel of the edge); a hair less so that rounding never leaves a NaN plane.
    half = abs(wcs_of(qa2.header).spectral.wcs.cdelt[0]) * (0.5 - 1e-6)
    low, high = theirs.min() - half, theirs.max() + half
    channels = np.flatnonzero((ours >= low) & (ours <= high))
    if channels.size == 0:
        raise NotComparable(f"no channel of {pipeline.path.name} ({ours.min() / 1e9:.4f}-"
                            f"{ours.max() / 1e9:.4f} GHz) inside {qa2.path.name} "
                            f"({low / 1e9:.4f}-{high / 1e9:.4f} GHz)")
    return channels


def _regrid(pipeline: _Image, qa2: _Image) -> tuple[np.ndarray, np.ndarray, list[Beam],
                                                   fits.Header]:
    """QA2 on the pipeline's grid: the pipeline channels compared, the QA2 planes there, the
    QA2 beam of each (its nearest channel's) and the pipeline header for those channels."""
    header = pipeline.header.copy()
    ny, nx = pipeline.planes.shape[1:]
    if pipeline.planes.shape[0] == 1:
        out = reproject_interp((qa2.planes[0], wcs_of(qa2.header).celestial),
                               wcs_of(header).celestial, shape_out=(ny, nx),
                               return_footprint=False)[None]
        return np.array([0]), np.asarray(out, dtype=np.float32), qa2.beams[:1], header
    channels = _compared_channels(pipeline, qa2)
    first, count = int(channels[0]), channels.size
    header["NAXIS3"], header["CRPIX3"] = count, header["CRPIX3"] - first
    out = reproject_interp((qa2.planes, wcs_of(qa2.header).sub(3)), wcs_of(header).sub(3),
                           shape_out=(count, ny, nx), return_footprint=False)
    freqs = _frequencies(pipeline)[channels]
    nearest = np.rint(wcs_of(qa2.header).spectral.world_to_pixel_values(freqs)).astype(int)
    beams = [qa2.beams[i] for i in np.clip(nearest, 0, len(qa2.beams) - 1)]
    return channels, np.asarray(out, dtype=np.float32), beams, header


def _to_beam(planes: np.ndarray, beams: list[Beam], target: Beam,
             pixscale: u.Quantity) -> np.ndarray:
    """Planes in Jy/beam at ``beams`` (one per plane) -> Jy/beam at ``target``, which is at
    least as large as each; NaN stays NaN."""
    out = np.empty(planes.shape, dtype=np.float32)
    for k, (plane, beam) in enumerate(zip(planes, beams)):
        kernel_beam = target.deconvolve(beam, failure_returns_pointlike=True)
        # Below a tenth of a pixel the kernel is a delta: only the area rescaling is left.
        if kernel_beam.major > 0.1 * pixscale:
            plane = convolve_fft(plane, kernel_beam.as_kernel(pixscale), boundary="fill",
                                 fill_value=np.nan, nan_treatment="interpolate",
                                 preserve_nan=True, allow_huge=True)
        # Convolution keeps the sum over pixels; per beam it scales with the beam's area.
        out[k] = plane * float((target.sr / beam.sr).decompose())
    return out


def common_grid(pipeline_path: str | Path, qa2_path: str | Path) -> CommonGrid:
    """The pipeline image and the QA2 image on the pipeline's grid at their common beam; for a
    cube only the pipeline channels inside the QA2 cube's frequency range (else NotComparable)."""
    pipeline, qa2 = _read(Path(pipeline_path)), _read(Path(qa2_path))
    if pipeline.planes.shape[0] == 1 < qa2.planes.shape[0]:
        raise NotComparable(f"{pipeline.path.name} is one plane, {qa2.path.name} a cube")
    channels, qa2_planes, qa2_beams, header = _regrid(pipeline, qa2)
    pipeline_planes = pipeline.planes[channels]
    # Like with like: only the voxels where both images have data.
    both = np.isfinite(pipeline_planes) & np.isfinite(qa2_planes)
    if not both.any():
        raise NotComparable(f"{pipeline.path.name} and {qa2.path.name} have no pixel with data "
                            "in common")
    pipeline_planes[~both] = qa2_planes[~both] = np.nan
    ours = [pipeline.beams[i] for i in channels]
    common = common_beam(ours + qa2_beams)
    pixscale = np.sqrt(wcs_of(header).celestial.proj_plane_pixel_area()).to(u.deg)
    header = common.attach_to_header(header)
    return CommonGrid(_to_beam(pipeline_planes, ours, common, pixscale),
                      _to_beam(qa2_planes, qa2_beams, common, pixscale), header, common,
                      channels)


# ---- comparison ---------------------------------------------------------------------------

# The ARIQA table: name -> (dtype, unit, description). docs/keywords.md lists them.
COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "product": ("str", None, "pipeline FITS product (file name)"),
    "counterpart": ("str", None, "archived QA2 image compared with (empty: none)"),
    "verdict": ("str", None, "accept, reject or no-counterpart"),
    "reason": ("str", None, "why this verdict"),
    "channels": ("int", None, "pipeline channels compared (1 for a single plane)"),
    "beam_major": ("float", "arcsec", "common beam FWHM major axis"),
    "beam_minor": ("float", "arcsec", "common beam FWHM minor axis"),
    "beam_pa": ("float", "deg", "common beam position angle"),
    "radius": ("float", "arcsec", "region radius (pb-fraction x primary beam FWHM)"),
    "pixels": ("int", None, "pixels in the region per plane"),
    **{f"{side}_{name}": (dtype, unit, f"{label} {text}")
       for side, label in (("pipeline", "pipeline"), ("qa2", "QA2"))
       for name, dtype, unit, text in (
           ("rms", "float", "Jy/beam", "rms noise (sigma-clipped std) in the region"),
           ("peak", "float", "Jy/beam", "peak in the region"),
           ("dynamic_range", "float", None, "peak / rms"),
           ("flux", "float", "Jy", "flux above flux-sigma x rms, peak channel"),
           ("peak_channel", "int", None, "peak channel, pipeline numbering (-1: one plane)"))},
    **{f"reldiff_{name}": ("float", None, f"(pipeline - QA2) / (pipeline + QA2) of {name}")
       for name in ("peak", "flux", "rms", "dynamic_range")},
}
_MISSING = {"str": "", "int": -1, "float": np.nan}


def _reldiff(a: float, b: float) -> float:
    return (a - b) / (a + b) if a + b != 0 else float("nan")


def verdict(pipeline: ImageStats, qa2: ImageStats, threshold: float) -> tuple[str, str]:
    """(accept|reject, reason): reject when the rms or the dynamic range is worse than QA2's
    by more than ``threshold``."""
    rms, dr = pipeline.rms / qa2.rms, pipeline.dynamic_range / qa2.dynamic_range
    worse = []
    if pipeline.rms > (1 + threshold) * qa2.rms:
        worse.append(f"rms {rms:.2f} x QA2's > {1 + threshold:.2f}")
    if pipeline.dynamic_range < qa2.dynamic_range / (1 + threshold):
        worse.append(f"dynamic range {dr:.2f} x QA2's < {1 / (1 + threshold):.2f}")
    if worse:
        return "reject", "; ".join(worse)
    return "accept", (f"rms {rms:.2f} x and dynamic range {dr:.2f} x QA2's, "
                      f"within {threshold:.0%}")


def _no_counterpart(product: Path, reason: str) -> dict[str, Any]:
    row = {name: _MISSING[spec[0]] for name, spec in COLUMNS.items()}
    row.update(product=product.name, verdict="no-counterpart", reason=reason, channels=0)
    return row


def compare(pipeline_path: str | Path, qa2_path: str | Path, fraction: float | None = None,
            threshold: float | None = None) -> dict[str, Any]:
    """One ARIQA row (COLUMNS) for a pipeline product and its QA2 image."""
    pipeline_path, qa2_path = Path(pipeline_path), Path(qa2_path)
    threshold = float(config.get("products.ariqa-threshold")) if threshold is None else threshold
    grid = common_grid(pipeline_path, qa2_path)
    try:
        ours = measure(grid.pipeline, grid.header, fraction, grid.beam)
        theirs = measure(grid.qa2, grid.header, fraction, grid.beam)
    except ProductError as exc:
        raise ProductError(f"{pipeline_path} vs {qa2_path}: {exc}") from None
    decision, reason = verdict(ours, theirs, threshold)
    row: dict[str, Any] = {
        "product": pipeline_path.name, "counterpart": qa2_path.name, "verdict": decision,
        "reason": reason, "channels": int(grid.channels.size),
        "beam_major": float(grid.beam.major.to_value(u.arcsec)),
        "beam_minor": float(grid.beam.minor.to_value(u.arcsec)),
        "beam_pa": float(grid.beam.pa.to_value(u.deg)), "radius": ours.radius_arcsec,
        "pixels": ours.pixels}
    for side, stats in (("pipeline", ours), ("qa2", theirs)):
        for name in ("rms", "peak", "dynamic_range", "flux"):
            row[f"{side}_{name}"] = getattr(stats, name)
        row[f"{side}_peak_channel"] = (-1 if stats.peak_channel is None
                                       else int(grid.channels[stats.peak_channel]))
    for name in ("peak", "flux", "rms", "dynamic_range"):
        row[f"reldiff_{name}"] = _reldiff(getattr(ours, name), getattr(theirs, name))
    log.info("ARIQA %s vs %s: %s (%s)", pipeline_path.name, qa2_path.name, decision, reason)
    return row


def ariqa_table(products: Iterable[str | Path], product_folder: str | Path | None,
                fraction: float | None = None, threshold: float | None = None) -> Table:
    """The ARIQA table of the pipeline products against the QA2 images in ``product_folder``."""
    threshold = float(config.get("products.ariqa-threshold")) if threshold is None else threshold
    fraction = float(config.get("products.pb-fraction")) if fraction is None else fraction
    rows = []
    for product, qa2 in find_counterparts(products, product_folder).items():
        if qa2 is None:
            where = (f"in {product_folder}" if product_folder else
                     "to compare with: no delivery folder (site profile key delivery)")
            rows.append(_no_counterpart(product, f"no QA2 pbcor image of the same source, kind "
                                                 f"and spws {where}"))
            continue
        try:
            rows.append(compare(product, qa2, fraction, threshold))
        except NotComparable as exc:
            rows.append(_no_counterpart(product, str(exc)))
    table = Table({name: np.array([row[name] for row in rows], dtype=dtype)
                   for name, (dtype, _, _) in COLUMNS.items()})
    for name, (_, unit, description) in COLUMNS.items():
        table[name].unit, table[name].description = unit, description
    table.meta.update({"ariqa-threshold": threshold, "pb-fraction": fraction,
                       "clip-sigma": config.get("products.clip-sigma"),
                       "flux-sigma": config.get("products.flux-sigma")})
    return table


def write_table(table: Table, path: str | Path) -> Path:
    """Write the table as ECSV, whole or not at all (temp file, fsync, rename)."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        table.write(tmp_name, format="ascii.ecsv", overwrite=True)
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        raise ProductError(f"{path}: cannot write the ARIQA table: {exc}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    return path
