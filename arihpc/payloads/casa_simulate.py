"""The ``simulate`` stage of arihpc.payloads.casa_stages (tests, demos): a real ALMA 12 m
measurement set from CASA's simulator, packed as ``DIR/raw/<uid>.ms.tar`` with a
``MANIFEST.json``, which makes ``DIR/raw`` an archive folder the fetch stage can read."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tarfile
from pathlib import Path

from arihpc.runner.workdir import write_json_atomic

log = logging.getLogger("arihpc.casa_payload")

ANTENNA_CONFIG = "alma/simmos/alma.cycle5.1.cfg"      # in casadata; 43 x 12 m, baselines < 160 m
PHASE_CENTRE = ("10h00m00.0s", "-30d00m00s")          # transits 7 deg from the zenith


def spw_setup(text: str) -> tuple[float, int]:
    freq, _, nchan = text.partition(":")
    try:
        return float(freq), int(nchan)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FREQ_GHZ:NCHAN, e.g. 230:8") from None


def line_setup(text: str) -> tuple[float, float, float]:
    try:
        freq, peak, fwhm = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected FREQ_GHZ:PEAK_JY:FWHM_MHZ, e.g. 232.05:0.5:20") from None
    return freq, peak, fwhm


def _add_line(cl, line: tuple[float, float, float]) -> None:
    """A point source 3 arcsec south of the phase centre with only a Gaussian spectral line:
    a tabular spectrum sampled every FWHM/10 over +-3 FWHM. The frame must be given as LSRK
    (TOPO is refused), but the simulator's predict evaluates the spectrum at the measurement
    set's topocentric channel frequencies: the line lands at FREQ_GHZ topocentric, and the
    LSRK cube shows it shifted as much as its first channel (tests/test_demo.py checks)."""
    import numpy as np

    freq_ghz, peak_jy, fwhm_mhz = line
    offsets = np.linspace(-3, 3, 61) * fwhm_mhz * 1e6
    flux = peak_jy * np.exp(-4 * np.log(2) * (offsets / (fwhm_mhz * 1e6)) ** 2)
    cl.addcomponent(dir="J2000 10h00m00.0s -30d00m03s", flux=peak_jy, fluxunit="Jy",
                    freq=f"{freq_ghz}GHz", shape="point")
    cl.setspectrum(which=cl.length() - 1, type="tabular",
                   tabularfreqs=(freq_ghz * 1e9 + offsets).tolist(),
                   tabularflux=flux.tolist(), tabularframe="LSRK")


def _component_list(path: Path, line: tuple[float, float, float] | None) -> None:
    """1 Jy point source at the phase centre, 0.5 Jy Gaussian 6 arcsec north-east of it,
    and with ``line`` a spectral line source."""
    import casatools

    cl = casatools.componentlist()
    cl.addcomponent(dir="J2000 {} {}".format(*PHASE_CENTRE), flux=1.0, fluxunit="Jy", freq="231GHz",
                    shape="point", spectrumtype="spectral index", index=-0.7)
    cl.addcomponent(dir="J2000 10h00m00.3s -29d59m55s", flux=0.5, fluxunit="Jy", freq="231GHz",
                    shape="Gaussian", majoraxis="2arcsec", minoraxis="1arcsec",
                    positionangle="30deg")
    if line:
        _add_line(cl, line)
    cl.rename(str(path))
    cl.close()


def _simulate_ms(ms: Path, args: argparse.Namespace) -> None:
    """Observe ``args.source`` with the ALMA cycle 5 C-1 array: one scan per spw, noise added."""
    import casatools
    from casatasks.private.simutil import simutil

    x, y, z, diam, pads, names, telescope, where = simutil().readantenna(
        casatools.ctsys.resolve(ANTENNA_CONFIG))
    me, sm = casatools.measures(), casatools.simulator()
    sm.open(str(ms))
    sm.setconfig(telescopename=telescope, x=x, y=y, z=z, dishdiameter=diam.tolist(),
                 mount=["alt-az"], antname=list(names), padname=list(pads),
                 coordsystem="global", referencelocation=where)
    for index, (freq_ghz, nchan) in enumerate(args.spw):
        sm.setspwindow(spwname=f"spw{index}", freq=f"{freq_ghz}GHz", deltafreq="15.625MHz",
                       freqresolution="15.625MHz", nchannels=nchan, stokes="XX YY")
    sm.setfeed(mode="perfect X Y", pol=[""])
    sm.setfield(sourcename=args.source, sourcedirection=me.direction("J2000", *PHASE_CENTRE))
    sm.setlimits(shadowlimit=0.001, elevationlimit="8.0deg")
    sm.setauto(autocorrwt=0.0)
    # A date inside casadata's IERS tables, around transit.
    sm.settimes(integrationtime="10s", usehourangle=True,
                referencetime=me.epoch("UTC", "2018/06/01/00:00:00"))
    half = f"{args.duration_s / 2:g}s"
    for index in range(len(args.spw)):
        sm.observe(args.source, f"spw{index}", starttime=f"-{half}", stoptime=half)
    model = Path.cwd() / "model.cl"
    _component_list(model, args.line)
    sm.predict(complist=str(model), incremental=False)
    sm.setseed(args.seed)
    sm.setnoise(mode="simplenoise", simplenoise=f"{args.noise_jy}Jy")
    sm.corrupt()
    sm.close()


def simulate(workdir: Path, disk: str, args: argparse.Namespace) -> None:
    """``DIR/raw/<uid>.ms.tar`` and ``DIR/raw/MANIFEST.json`` (the fetch stage's archive)."""
    from arihpc.runner.fetch import MANIFEST
    from arihpc.runner.manifest import sha256_of

    raw = workdir / "raw"
    shutil.rmtree(raw, ignore_errors=True)     # a run cut earlier may have left part of it
    raw.mkdir(parents=True)
    ms = raw / f"{disk}.ms"
    _simulate_ms(ms, args)
    tar = raw / f"{disk}.ms.tar"
    part = raw / f".{tar.name}.part"
    with tarfile.open(part, "w") as archive:
        archive.add(ms, arcname=ms.name)
    os.replace(part, tar)
    shutil.rmtree(ms)
    entry = {"name": tar.name, "size": tar.stat().st_size, "sha256": sha256_of(tar)}
    write_json_atomic(raw / MANIFEST, {"files": [entry]})
    log.info("simulated %s (%d bytes)", tar, entry["size"])
