"""The real CASA 6 stages of one MOUS, each one command in a fresh process::

    python -m arihpc.payloads.casa_stages STAGE --workdir DIR --uid UID [options]

- ``simulate`` (tests, demos; arihpc.payloads.casa_simulate): a real ALMA 12 m measurement set from
  CASA's simulator, two spws, packed as ``DIR/raw/<uid>.ms.tar`` with a ``MANIFEST.json`` (an
  archive folder for fetch);
- ``restore``: unpack ``DIR/fetch/*.tar`` into ``DIR/restore/``, check the measurement sets have
  data, write ``summary.json`` (spws, sources);
- ``image``: per source a cube per spw at native channels and one continuum image over its spws,
  Briggs robust 0.5, primary-beam corrected, into ``DIR/image/`` with ``products.json``;
- ``export``: each ``.image.pbcor`` to FITS under its ALMA product name in ``DIR/export/``.

A stage starts from an empty output folder. CASA runs offline (arihpc.payloads.casa_config) and logs
to ``DIR/log/casa-STAGE-*.log``; this module logs to stderr, where a failure ends with
``casa_payload: STAGE failed: Error in TASK: <CASA's message>`` and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

from arihpc import config
from arihpc.errors import ArihpcError, InvalidUid
from arihpc.mous import cycle_of, disk_name, parse_uid
from arihpc.payloads import bandwidth, casa_config
from arihpc.payloads.casa_simulate import line_setup, simulate, spw_setup
from arihpc.runner.plans import stage_parser
from arihpc.runner.workdir import write_json_atomic

log = logging.getLogger("arihpc.casa_payload")

C_M_S = 299_792_458.0
ARCSEC_PER_RAD = 180 * 3600 / math.pi
# Name suffix of a source's products by its intent; the first intent found wins.
INTENT_SUFFIX = (("OBSERVE_TARGET", "sci"), ("CALIBRATE_BANDPASS", "bp"),
                 ("CALIBRATE_PHASE", "ph"), ("CALIBRATE_FLUX", "flux"),
                 ("CALIBRATE_AMPLI", "amp"), ("CALIBRATE_POLARIZATION", "pol"),
                 ("OBSERVE_CHECK_SOURCE", "check"))


class PayloadError(ArihpcError):
    """A stage that cannot complete: the message says which input or which CASA task."""


def _casa_task(name: str, task, **params):
    """Run a CASA task; its exception becomes ``Error in NAME: ...`` (the runner's class)."""
    log.info("%s(%s)", name, ", ".join(f"{k}={v!r}" for k, v in params.items()))
    try:
        result = task(**params)
    except Exception as exc:
        raise PayloadError(f"Error in {name}: {type(exc).__name__}: {exc}") from exc
    if result is False:
        raise PayloadError(f"Error in {name}: the task returned False (see the CASA log)")
    return result


def _reset(folder: Path) -> Path:
    """An empty ``folder``: a stage cut earlier may have left partial outputs."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _read_json(path: Path, stage: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PayloadError(f"{path} not found: run the {stage} stage first") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{path}: not valid JSON ({exc}): run the {stage} stage again") from None


# ---- restore ------------------------------------------------------------------------------

def _unpack(tars: list[Path], dest: Path) -> list[Path]:
    """Extract the tars (no links out, no absolute paths); the measurement sets found."""
    for tar in tars:
        log.info("unpacking %s", tar)
        try:
            with tarfile.open(tar) as archive:
                archive.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise PayloadError(f"{tar}: cannot unpack: {exc}") from None
    # A measurement set's main table has table.dat and a SPECTRAL_WINDOW subtable.
    return sorted(p.parent for p in dest.rglob("table.dat")
                  if (p.parent / "SPECTRAL_WINDOW").is_dir())


def _describe_ms(ms: Path, workdir: Path) -> dict:
    """nrows, spws (nchan, frequencies) and fields (intents, spws) of one measurement set."""
    import casatools

    md = casatools.msmetadata()
    try:
        md.open(str(ms))
    except Exception as exc:
        raise PayloadError(f"{ms}: not a readable measurement set: {exc}") from None
    try:
        spws = []
        for spw in range(md.nspw()):
            freqs = md.chanfreqs(spw)
            spws.append({"id": spw, "nchan": int(md.nchan(spw)), "name": md.namesforspws(spw)[0],
                         "min_hz": float(freqs.min()), "max_hz": float(freqs.max())})
        fields = [{"id": f, "name": name, "intents": sorted(md.intentsforfield(f)),
                   "spws": sorted(int(s) for s in md.spwsforfield(f))}
                  for f, name in enumerate(md.fieldnames())]
        nrows = int(md.nrows())
    finally:
        md.close()
    if nrows == 0 or not spws or not fields:
        raise PayloadError(f"{ms}: empty measurement set ({nrows} rows, {len(spws)} spws, "
                           f"{len(fields)} fields)")
    return {"path": str(ms.relative_to(workdir)), "nrows": nrows, "spws": spws, "fields": fields}


def _merge(sets: list[dict]) -> tuple[list[dict], dict]:
    """The spws (by id) and source name -> {intents, spws, fields}, over all measurement sets."""
    spws: dict[int, dict] = {}
    sources: dict[str, dict] = {}
    for ms in sets:
        for spw in ms["spws"]:
            known = spws.setdefault(spw["id"], spw)
            if known["nchan"] != spw["nchan"]:
                raise PayloadError(f"spw {spw['id']} has {known['nchan']} channels in one "
                                   f"measurement set and {spw['nchan']} in {ms['path']}")
        for field in ms["fields"]:
            if not field["spws"]:
                continue                        # a field never observed
            source = sources.setdefault(field["name"], {"intents": [], "spws": [], "fields": 0})
            source["intents"] = sorted(set(source["intents"]) | set(field["intents"]))
            source["spws"] = sorted(set(source["spws"]) | set(field["spws"]))
            source["fields"] += 1
    return [spws[i] for i in sorted(spws)], sources


def restore(workdir: Path, disk: str, args: argparse.Namespace) -> None:
    tars = sorted((workdir / "fetch").glob("*.tar"))
    if not tars:
        raise PayloadError(f"no *.tar in {workdir / 'fetch'}: run the fetch stage first")
    out = _reset(workdir / "restore")
    found = _unpack(tars, out)
    if not found:
        raise PayloadError(f"no measurement set in {', '.join(t.name for t in tars)}")
    sets = [_describe_ms(ms, workdir) for ms in found]
    spws, sources = _merge(sets)
    if not sources:
        raise PayloadError(f"no field with data in {', '.join(m['path'] for m in sets)}")
    summary = {"uid": parse_uid(disk), "ms": sets, "spws": spws, "sources": sources}
    write_json_atomic(out / "summary.json", summary)
    log.info("restored %d measurement set(s): spws %s, sources %s", len(sets),
             ", ".join(str(s["id"]) for s in spws), ", ".join(sources))


# ---- image --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Geometry:
    cell_arcsec: float
    imsize: int


def _good_size(n: int) -> int:
    """The smallest even n' >= n with no prime factor above 5 (fast FFTs)."""
    def smooth(k: int) -> bool:
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        return k == 1
    n += n % 2
    while not smooth(n):
        n += 2
    return n


def _geometry(vis: list[str], spws: list[dict], max_imsize: int,
              cell_arcsec: float | None = None) -> Geometry:
    """Cell = 1/5 of the synthesized beam (lambda/Bmax at the top frequency) unless given;
    image = 1.5 primary-beam FWHM (1.13 lambda/D at the lowest frequency), at most
    ``max_imsize``."""
    import casatools
    import numpy as np

    tb = casatools.table()
    longest, dish = 0.0, math.inf
    for ms in vis:
        tb.open(f"{ms}/ANTENNA")
        pos, diam = tb.getcol("POSITION").T, tb.getcol("DISH_DIAMETER")
        tb.close()
        longest = max(longest, float(np.max(np.linalg.norm(pos[:, None] - pos[None], axis=2))))
        dish = min(dish, float(diam.min()))
    if longest <= 0:
        raise PayloadError(f"{vis[0]}: fewer than two antennas, no baseline to image with")
    top, bottom = max(s["max_hz"] for s in spws), min(s["min_hz"] for s in spws)
    beam = C_M_S / top / longest * ARCSEC_PER_RAD
    cell = cell_arcsec or float(f"{beam / 5:.2g}")
    field_of_view = 1.5 * 1.13 * C_M_S / bottom / dish * ARCSEC_PER_RAD
    return Geometry(cell, min(_good_size(math.ceil(field_of_view / cell)), max_imsize))


def _name_of(source: str, intents: list[str]) -> str:
    """ALMA product stem of a source: its name made file-safe, then the intent suffix."""
    safe = re.sub(r"[^A-Za-z0-9+\-]", "_", source) or "field"
    suffix = next((s for intent, s in INTENT_SUFFIX
                   if any(i.startswith(intent) for i in intents)), "sci")
    return f"{safe}_{suffix}"


def _clean(vis: list[str], image: Path, source: dict, spws: list[int], kind: str,
           geometry: Geometry, threshold_jy: float, args: argparse.Namespace) -> None:
    """One tclean run: ``kind`` cube (native channels, common beam) or cont (mfs)."""
    from casatasks import tclean

    params = dict(vis=vis, imagename=str(image), field=f'"{source["name"]}"',
                  spw=",".join(map(str, spws)), imsize=[geometry.imsize] * 2,
                  cell=f"{geometry.cell_arcsec}arcsec",
                  gridder="mosaic" if source["fields"] > len(vis) else "standard",
                  weighting="briggs", robust=args.robust, niter=args.niter,
                  threshold=f"{threshold_jy:.6g}Jy", deconvolver="hogbom", pbcor=True,
                  interactive=False)
    if kind == "cube":
        # nearest: every native channel keeps data (linear can leave an edge channel blank).
        params.update(specmode="cube", outframe="LSRK", interpolation="nearest",
                      restoringbeam="common")
    else:
        params.update(specmode="mfs")
    _casa_task("tclean", tclean, **params)
    if not Path(f"{image}.image.pbcor").is_dir():
        raise PayloadError(f"Error in tclean: {image}.image.pbcor was not written")


def _effective_widths(vis: list[str], workdir: Path, args: argparse.Namespace):
    observed = bandwidth.observe(vis)
    cycle = cycle_of(args.project) if args.project else None
    widths = bandwidth.effective_bandwidth(observed, cycle, [workdir / "fetch", args.delivery])
    log.info("effective bandwidth from %s", widths.source)
    return observed, widths


def image(workdir: Path, disk: str, args: argparse.Namespace) -> None:
    summary = _read_json(workdir / "restore" / "summary.json", "restore")
    vis = [str(workdir / ms["path"]) for ms in summary["ms"]]
    setups = {spw["id"]: spw for spw in summary["spws"]}
    out = _reset(workdir / "image")
    observed, widths = _effective_widths(vis, workdir, args)
    images = []
    for name, source in sorted(summary["sources"].items()):
        spws = source["spws"]
        geometry = _geometry(vis, [setups[s] for s in spws], args.max_imsize, args.cell_arcsec)
        stem = f"{disk}.{_name_of(name, source['intents'])}"
        jobs = [([spw], f"spw{spw}.cube", "cube") for spw in spws]
        jobs.append((spws, f"spw{'_'.join(map(str, spws))}.cont", "cont"))
        for selected, label, kind in jobs:
            base = out / f"{stem}.{label}"
            noise = bandwidth.image_noise(observed, widths, selected)
            _clean(vis, base, dict(source, name=name), selected, kind, geometry,
                   noise["threshold_jy"], args)
            nchan = setups[selected[0]]["nchan"] if kind == "cube" else 1
            images.append({"name": base.name, "image": f"image/{base.name}.image.pbcor",
                           "source": name, "spws": selected, "kind": kind, "nchan": nchan,
                           **dataclasses.asdict(geometry), **noise})
    imaging = {**_imaging_parameters(args), "bandwidth": widths.source}
    write_json_atomic(out / "products.json", {"uid": summary["uid"], "images": images,
                                              "imaging": imaging})
    log.info("imaged %d product(s)", len(images))


def _imaging_parameters(args: argparse.Namespace) -> dict:
    """How the images were made, for the products' HISTORY cards and README."""
    import casatools

    return {"casa": casatools.version_string(), "task": "tclean", "weighting": "briggs",
            "robust": args.robust, "niter": args.niter, "deconvolver": "hogbom",
            "threshold": f"{config.get('imaging.threshold-sigma')} x expected noise",
            "cell": f"{args.cell_arcsec}arcsec" if args.cell_arcsec else "beam/5",
            "max_imsize": args.max_imsize,
            "cube": "native channels, LSRK, common beam", "pbcor": True}


# ---- export -------------------------------------------------------------------------------

# What export/products.json says of each product, from image/products.json.
EXPORTED_KEYS = ("source", "spws", "kind", "nchan", "cell_arcsec", "imsize", "threshold_jy",
                 "expected_noise_jy", "effective_bw_hz", "bandwidth_source")

def export(workdir: Path, disk: str, args: argparse.Namespace) -> None:
    from casatasks import exportfits

    made = _read_json(workdir / "image" / "products.json", "image")
    out = _reset(workdir / "export")
    products = []
    for item in made["images"]:
        fits = out / f"member.{item['name']}.I.pbcor.fits"
        _casa_task("exportfits", exportfits, imagename=str(workdir / item["image"]),
                   fitsimage=str(fits), velocity=False, bitpix=-32, stokeslast=True,
                   dropdeg=False, history=True, overwrite=True)
        if not fits.is_file():
            raise PayloadError(f"Error in exportfits: {fits} was not written")
        products.append({"fits": f"export/{fits.name}", "bytes": fits.stat().st_size,
                         **{k: item[k] for k in EXPORTED_KEYS if k in item}})
    write_json_atomic(out / "products.json", {"uid": made["uid"], "products": products,
                                              "imaging": made.get("imaging", {})})
    log.info("exported %d FITS file(s)", len(products))


# ---- command ------------------------------------------------------------------------------

STAGES = {"simulate": simulate, "restore": restore, "image": image, "export": export}


def _start_casa(stage: str, disk: str) -> None:
    """Import CASA now that its config is set; load the measures under our log origin."""
    import casatools
    from casatasks import casalog

    casalog.origin("casa_payload")
    casalog.post(f"arihpc casa_payload {stage} {disk}, CASA {casatools.version_string()}")
    me = casatools.measures()
    # The leap-second SEVERE comes out here, once, not under the origin of a task.
    me.measure(me.epoch("UTC", "today"), "TAI")


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m arihpc.payloads.casa_stages", __doc__.splitlines()[0],
                          STAGES)
    parser.add_argument("--niter", type=int, default=100, help="image: tclean iterations")
    parser.add_argument("--robust", type=float, default=0.5, help="image: Briggs robust")
    parser.add_argument("--max-imsize", type=int, default=512, help="image: pixels per side")
    parser.add_argument("--cell-arcsec", type=float, default=None,
                        help="image: pixel size (default: a fifth of the synthesized beam)")
    parser.add_argument("--project", default=None,
                        help="image: ALMA project code (its cycle picks the effective-bandwidth "
                             "source)")
    parser.add_argument("--delivery", type=Path, default=None,
                        help="image: the MOUS's delivery folder (an .aot there is read for "
                             "cycle 2)")
    parser.add_argument("--source", default="SimSource", help="simulate: source name")
    parser.add_argument("--spw", type=spw_setup, action="append",
                        help="simulate: FREQ_GHZ:NCHAN of one spw (repeat; default 230:8 232:16)")
    parser.add_argument("--line", type=line_setup, default=None,
                        help="simulate: a spectral line source FREQ_GHZ:PEAK_JY:FWHM_MHZ "
                             "(topocentric), 3 arcsec south of the phase centre")
    parser.add_argument("--duration-s", type=float, default=300, help="simulate: time per spw")
    parser.add_argument("--noise-jy", type=float, default=0.1, help="simulate: per visibility")
    parser.add_argument("--seed", type=int, default=42, help="simulate: noise seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.spw = args.spw or [(230.0, 8), (232.0, 16)]
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s casa_payload {args.stage} %(levelname)s %(message)s")
    try:
        disk = disk_name(args.uid)
    except InvalidUid as exc:
        print(f"casa_payload: {exc}", file=sys.stderr)
        return 2
    workdir, started = args.workdir.resolve(), time.monotonic()
    try:
        paths = casa_config.activate(workdir, args.stage)
    except (ArihpcError, OSError) as exc:
        print(f"casa_payload: {args.stage} failed: {exc}", file=sys.stderr)
        return 1
    try:
        log.info("uid %s, CASA log %s", disk, paths.logfile)
        _start_casa(args.stage, disk)
        STAGES[args.stage](workdir, disk, args)
    except Exception as exc:
        if not isinstance(exc, PayloadError):
            traceback.print_exc(file=sys.stderr)
        print(f"casa_payload: {args.stage} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        os.chdir(workdir)
        shutil.rmtree(paths.tmp, ignore_errors=True)
    log.info("%s done in %.1f s", args.stage, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
