"""The effective channel width of each spw, and the image stage's cleaning threshold from it.

ALMA's correlator channels are narrower in effect than apart (Hanning smoothing, spectral
averaging): the noise of a channel follows its *effective* width. Where that width comes from:

- cycle 3 and later (and an unknown cycle): the ``EFFECTIVE_BW`` column of the measurement
  set's SPECTRAL_WINDOW table, per channel;
- cycle 2 and earlier: the observing-tool project file (``*.aot``, a zip of XML) beside the raw
  data or in the delivery folder. Its SchedBlock XML has, per spectral window, an element
  ``BLSpectralWindow`` (``ACASpectralWindow`` for the ACA correlator) with the children
  ``centerFrequency`` (unit attribute), ``effectiveBandwidth`` (unit attribute) and
  ``effectiveNumberOfChannels``; the window nearest an MS spw's centre gives it
  ``effectiveBandwidth / NUM_CHAN`` per channel;
- otherwise the nominal ``CHAN_WIDTH``, and ``source`` says so and why.

The expected noise of an image is the radiometer equation over every cross-correlation row of
its spws: ``SEFD / (eta_q * sqrt(2 * npol * dnu_eff * sum(EXPOSURE)))``, with
``SEFD = 2 k Tsys / (eta_a * pi (D/2)**2)`` and a typical Tsys of the spw's ALMA band
(``imaging.tsys-k``). The threshold is ``imaging.threshold-sigma`` times that noise.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from arihpc import config

log = logging.getLogger(__name__)

BOLTZMANN = 1.380649e-23
JY = 1e-26
UNITS_HZ = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}
# ALMA receiver bands, (band, lowest GHz, highest GHz); band 2 below band 3's range.
BANDS_GHZ = ((1, 35, 50), (2, 65, 84), (3, 84, 116), (4, 125, 163), (5, 158, 211),
             (6, 211, 275), (7, 275, 373), (8, 385, 500), (9, 602, 720), (10, 787, 950))


@dataclass(frozen=True)
class SpwObservation:
    """What the noise of one spw depends on, read from the measurement sets."""

    spw: int
    centre_hz: float
    nchan: int
    nominal_hz: float           # CHAN_WIDTH of one channel
    column_hz: float | None     # EFFECTIVE_BW of one channel (None: missing or zero)
    exposure_s: float           # summed over every cross-correlation row of the spw
    npol: int
    dish_m: float


@dataclass(frozen=True)
class EffectiveBandwidth:
    """Per spw the effective width of one channel in Hz, and where it came from."""

    per_channel_hz: dict[int, float]
    source: str


class BandwidthError(ValueError):
    """An observing-tool file that cannot be read."""


def band_of(freq_hz: float) -> int:
    """The ALMA band of a frequency (the nearest band when between two)."""
    ghz = freq_hz / 1e9
    return min(BANDS_GHZ, key=lambda b: 0 if b[1] <= ghz <= b[2]
               else min(abs(ghz - b[1]), abs(ghz - b[2])))[0]


def expected_noise_jy(effective_hz: float, exposure_s: float, npol: int, freq_hz: float,
                      dish_m: float) -> float:
    """Thermal noise of an image (Jy/beam, natural weighting) from the radiometer equation."""
    tsys = float(config.get("imaging.tsys-k")[str(band_of(freq_hz))])
    area = float(config.get("imaging.aperture-efficiency")) * math.pi * (dish_m / 2) ** 2
    sefd = 2 * BOLTZMANN * tsys / area / JY
    eta_q = float(config.get("imaging.quantization-efficiency"))
    # exposure_s sums over baselines, N(N-1)/2 of them: the equation has N(N-1), hence the 2.
    return sefd / (eta_q * math.sqrt(2 * npol * effective_hz * exposure_s))


def threshold_jy(noise_jy: float) -> float:
    """tclean's threshold: imaging.threshold-sigma times the expected noise."""
    return float(config.get("imaging.threshold-sigma")) * noise_jy


def image_noise(observed: dict[int, SpwObservation], widths: EffectiveBandwidth,
                spws: list[int]) -> dict:
    """Expected noise and cleaning threshold of an image over ``spws``: one channel of a cube
    (one spw), or every channel of its spws for a continuum image (noise combines as the sum
    of bandwidth x exposure)."""
    chosen = [observed[s] for s in spws]
    channels = {o.spw: (o.nchan if len(spws) > 1 else 1) for o in chosen}
    effective = sum(widths.per_channel_hz[o.spw] * channels[o.spw] for o in chosen)
    weighted = sum(widths.per_channel_hz[o.spw] * channels[o.spw] * o.exposure_s
                   for o in chosen)
    centre = sum(o.centre_hz for o in chosen) / len(chosen)
    noise = expected_noise_jy(effective, weighted / effective, chosen[0].npol, centre,
                              chosen[0].dish_m)
    return {"threshold_jy": threshold_jy(noise), "expected_noise_jy": noise,
            "effective_bw_hz": effective, "bandwidth_source": widths.source}


def observe(ms_paths: Iterable[str]) -> dict[int, SpwObservation]:
    """Each spw's channels, widths, exposure and polarisations, over all measurement sets."""
    import casatools
    import numpy as np

    tb, found = casatools.table(), {}
    for ms in ms_paths:
        spw_of_dd, npol_of_dd = _data_descriptions(tb, ms)
        tb.open(f"{ms}/ANTENNA")
        dish = float(np.min(tb.getcol("DISH_DIAMETER")))
        tb.close()
        tb.open(f"{ms}/SPECTRAL_WINDOW")
        widths = [(tb.getcell("CHAN_FREQ", i), tb.getcell("CHAN_WIDTH", i),
                   tb.getcell("EFFECTIVE_BW", i) if "EFFECTIVE_BW" in tb.colnames() else None)
                  for i in range(tb.nrows())]
        tb.close()
        exposure = _exposure_by_dd(tb, ms)
        for dd, seconds in exposure.items():
            spw = spw_of_dd[dd]
            freqs, nominal, column = widths[spw]
            column_hz = float(np.mean(np.abs(column))) if column is not None else 0.0
            known = found.get(spw)
            found[spw] = SpwObservation(
                spw, float(np.mean(freqs)), len(freqs), float(np.mean(np.abs(nominal))),
                column_hz or None, seconds + (known.exposure_s if known else 0.0),
                npol_of_dd[dd], dish)
    return found


def _data_descriptions(tb, ms: str) -> tuple[list[int], list[int]]:
    tb.open(f"{ms}/POLARIZATION")
    ncorr = list(tb.getcol("NUM_CORR"))
    tb.close()
    tb.open(f"{ms}/DATA_DESCRIPTION")
    spws, pols = list(tb.getcol("SPECTRAL_WINDOW_ID")), list(tb.getcol("POLARIZATION_ID"))
    tb.close()
    # Stokes I uses the two parallel hands, never more.
    return [int(s) for s in spws], [min(2, int(ncorr[p])) for p in pols]


def _exposure_by_dd(tb, ms: str) -> dict[int, float]:
    import numpy as np

    tb.open(ms)
    query = tb.query("ANTENNA1 != ANTENNA2 && !FLAG_ROW", columns="DATA_DESC_ID, EXPOSURE")
    dd, exposure = query.getcol("DATA_DESC_ID"), query.getcol("EXPOSURE")
    query.close()
    tb.close()
    return {int(d): float(exposure[dd == d].sum()) for d in np.unique(dd)}


def effective_bandwidth(spws: dict[int, SpwObservation], cycle: int | None,
                        search_dirs: Iterable[Path]) -> EffectiveBandwidth:
    """The effective channel widths by the rules of the module docstring."""
    nominal = {s: o.nominal_hz for s, o in spws.items()}
    if cycle is not None and cycle <= 2:
        aot = next((p for d in search_dirs if d and d.is_dir() for p in sorted(d.glob("*.aot"))),
                   None)
        if aot is None:
            return _fallback(nominal, f"cycle {cycle}, no .aot beside the raw data")
        windows = read_aot_windows(aot)
        matched = {s: _nearest(windows, o) for s, o in spws.items()}
        if any(m is None for m in matched.values()):
            return _fallback(nominal, f"{aot.name} has no window for every spw")
        return EffectiveBandwidth({s: m for s, m in matched.items()},
                                  f"observing-tool file {aot.name} (effectiveBandwidth)")
    if any(o.column_hz is None for o in spws.values()):
        return _fallback(nominal, "the measurement set has no EFFECTIVE_BW")
    return EffectiveBandwidth({s: o.column_hz for s, o in spws.items()},
                              "EFFECTIVE_BW of the measurement set")


def _fallback(nominal: dict[int, float], why: str) -> EffectiveBandwidth:
    log.warning("effective bandwidth: nominal channel width used (%s)", why)
    return EffectiveBandwidth(nominal, f"nominal CHAN_WIDTH ({why})")


def _nearest(windows: list[tuple[float, float, int]], spw: SpwObservation) -> float | None:
    """Effective width of one MS channel from the window nearest the spw's centre, if it
    lies within the spw's span."""
    span = spw.nominal_hz * spw.nchan
    best = min(windows, key=lambda w: abs(w[0] - spw.centre_hz), default=None)
    if best is None or abs(best[0] - spw.centre_hz) > span:
        return None
    return best[1] / min(best[2], spw.nchan)


def read_aot_windows(aot: Path) -> list[tuple[float, float, int]]:
    """(centre Hz, effective bandwidth Hz, effective channels) of every spectral window of
    the SchedBlocks in an observing-tool file."""
    try:
        with zipfile.ZipFile(aot) as archive:
            texts = [archive.read(n) for n in archive.namelist() if n.endswith(".xml")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise BandwidthError(f"{aot}: not an observing-tool file (a zip of XML): {exc}") from None
    windows = []
    for text in texts:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise BandwidthError(f"{aot}: bad XML: {exc}") from None
        for element in root.iter():
            if _local(element.tag) in ("BLSpectralWindow", "ACASpectralWindow"):
                windows.append(_window(element, aot))
    return windows


def _window(element: ET.Element, aot: Path) -> tuple[float, float, int]:
    children = {_local(c.tag): c for c in element}
    try:
        return (_hz(children["centerFrequency"]), _hz(children["effectiveBandwidth"]),
                int(children["effectiveNumberOfChannels"].text))
    except (KeyError, TypeError, ValueError) as exc:
        raise BandwidthError(f"{aot}: a {_local(element.tag)} without centerFrequency, "
                             f"effectiveBandwidth or effectiveNumberOfChannels ({exc})") from None


def _hz(element: ET.Element) -> float:
    unit = UNITS_HZ[element.get("unit", "Hz").lower()]
    return float(element.text) * unit


def _local(tag: str) -> str:
    return re.sub(r"^\{.*\}", "", tag)
