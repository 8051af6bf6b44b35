"""The ARI-L stages of one MOUS after export, each one command in a fresh process::

    python -m arihpc.products.stages STAGE --workdir DIR --uid UID [--delivery FOLDER]
        [--project CODE] [--site NAME]

- ``qa``: the computed keywords of each exported FITS product (``qa/keywords.json``) and the
  ARIQA table against the archived QA2 images of the delivery's ``product/`` folder
  (``qa/ariqa.ecsv``);
- ``preview``: a PNG per product (``preview/``);
- ``moments``: per cube a line list (ECSV) and, where a line is found, moment 0, 1 and 8 maps
  with their previews (``moments/``, arihpc.products.lines);
- ``keep-ms`` (after restore, when the site has ``storage.ms-store``): the calibrated
  measurement sets as one tar with its sha256 and retention date in the MS store
  (arihpc.products.ms_store);
- ``package``: the products with completed headers (HISTORY, standard and ARI* keywords), the
  ``ari_l/`` folder with README.txt and MANIFEST.sha256, and one tar for ingestion
  (``package/``); with ``products.publish-to-delivery``, ``ari_l/`` is also placed in the
  delivery's member folder. Nothing else in the delivery tree is touched. Every stage before
  is scored first (``scores``); one below ``products.min-stage-score`` stops it with
  ``arihpc: not packaged: ...`` (class low-score). The weblog (``weblog``) goes into
  ``ari_l/weblog/index.html`` and ``DIR/weblog/index.html``.

``--delivery`` is the MOUS's member folder in the ALMA delivery tree (``product/``, README,
scripts). A stage starts from an empty output folder; a failure ends with
``products STAGE ERROR STAGE failed: ...`` on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from astropy.table import Table

import arihpc
from arihpc import config
from arihpc.errors import ArihpcError
from arihpc.mous import disk_name, parse_uid
from arihpc.products import ariqa, keywords, lines, ms_store, packaging, previews, scores, weblog
from arihpc.runner.manifest import write_manifest
from arihpc.runner.plans import stage_parser
from arihpc.runner.workdir import write_json_atomic

log = logging.getLogger("arihpc.products")
KEYWORDS_FILE = "keywords.json"
ARIQA_FILE = "ariqa.ecsv"


def _reset(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)      # a stage cut earlier left part of it
    folder.mkdir(parents=True)
    return folder


def _exported(workdir: Path) -> dict:
    """export/products.json: the FITS products and how they were imaged."""
    path = workdir / "export" / "products.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise ArihpcError(f"{path}: {exc}: run the export stage first") from None


def _fits(workdir: Path, made: dict) -> list[Path]:
    return [workdir / item["fits"] for item in made["products"]]


def qa(workdir: Path, args: argparse.Namespace) -> None:
    made = _exported(workdir)
    out = _reset(workdir / "qa")
    stats = {path.name: dataclasses.asdict(keywords.measure_file(path))
             for path in _fits(workdir, made)}
    write_json_atomic(out / KEYWORDS_FILE, stats)
    product_folder = args.delivery / "product" if args.delivery else None
    table = ariqa.ariqa_table(_fits(workdir, made), product_folder)
    ariqa.write_table(table, out / ARIQA_FILE)
    counts = {v: int(sum(table["verdict"] == v)) for v in sorted(set(table["verdict"]))}
    log.info("measured %d product(s); ARIQA %s", len(stats), counts)


def preview(workdir: Path, args: argparse.Namespace) -> None:
    made = _exported(workdir)
    out = _reset(workdir / "preview")
    pngs = [previews.preview(path, out) for path in _fits(workdir, made)]
    log.info("wrote %d preview(s)", len(pngs))


def moments(workdir: Path, args: argparse.Namespace) -> None:
    """Per cube product: its line list (ECSV) and, with a line, moment 0, 1, 8 maps (FITS) and
    their previews, in ``moments/``, described by ``moments/products.json``."""
    made = _exported(workdir)
    out = _reset(workdir / "moments")
    found = [lines.analyse_cube(workdir / item["fits"], out)
             for item in made["products"] if item.get("kind") == "cube"]
    for cube in found:
        for name in cube["moments"]:
            previews.preview(out / name, out)
    write_json_atomic(out / "products.json", {"uid": made["uid"], "cubes": found})
    log.info("%d cube(s), %d with a line", len(found), sum(1 for c in found if c["found"]))


def _moment_files(workdir: Path) -> tuple[list[Path], list[Path]]:
    """(moment FITS, line lists and moment previews) of the moments stage, if it ran."""
    folder = workdir / "moments"
    return sorted(folder.glob("*.fits")), [*sorted(folder.glob("*.ecsv")),
                                           *sorted(folder.glob("*.png"))]


def _provenance(made: dict, args: argparse.Namespace) -> dict[str, str]:
    """What the HISTORY cards and the README say about how the products were made."""
    imaging = dict(made.get("imaging") or {})
    casa = str(imaging.pop("casa", "unknown"))
    return {"arihpc": arihpc.__version__, "casa": casa,
            "site": args.site or os.environ.get("ARIHPC_SITE", "unknown"),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "mous": parse_uid(args.uid),
            "imaging": " ".join(f"{k}={v}" for k, v in imaging.items()) or "unknown"}


def _made_how(item: dict) -> dict[str, str]:
    """The HISTORY entries of one product: its grid, and its cleaning threshold with the
    source of the effective bandwidth behind it."""
    made = {}
    if "cell_arcsec" in item:
        made["grid"] = f"cell={item['cell_arcsec']}arcsec imsize={item['imsize']}"
    if "threshold_jy" in item:
        made["threshold"] = (f"{item['threshold_jy']:.4g} Jy (expected noise "
                             f"{item['expected_noise_jy']:.4g} Jy, effective bandwidth "
                             f"{item['effective_bw_hz']:.6g} Hz)")
        made["bandwidth"] = str(item["bandwidth_source"])
    return made


def _completed_products(workdir: Path, made: dict, provenance: dict, verdicts: dict,
                        into: Path) -> list[Path]:
    """Copies of the exported FITS with completed headers, in ``into``."""
    measured = json.loads((workdir / "qa" / KEYWORDS_FILE).read_text())
    into.mkdir(parents=True)
    completed = []
    for item in made["products"]:
        path = workdir / item["fits"]
        stats = keywords.ImageStats(**measured[path.name])
        extra = {"ARIQA": verdicts.get(path.name, "not-assessed")}
        completed.append(keywords.complete_header(path, into / path.name, stats,
                                                  {**provenance, **_made_how(item)}, extra))
    return completed


def _refuse(workdir: Path, uid: str, found: dict, minimum: float) -> None:
    """ARIQA layer 2: raise LowScore (class low-score) when a stage scored below ``minimum``,
    after writing DIR/weblog/index.html that says why."""
    low = scores.lowest(found, minimum)
    if low is None:
        return
    reason = scores.not_packaged_reason(*low, minimum)
    weblog.write_weblog(workdir, uid, found, reason, False, workdir)
    raise scores.LowScore(reason)


def _score_package(workdir: Path, args: argparse.Namespace, found: dict, minimum: float,
                   ari_l: Path, tar_name: str) -> None:
    """The package stage's own score, then the weblog into ari_l/ (and its manifest) and
    into DIR/weblog/."""
    checks = scores.package_checks(sorted((ari_l / "product").glob("*.fits")), ari_l)
    found["package"] = scores.score_of(checks)
    scores.write_package_score(workdir, found["package"])
    _refuse(workdir, args.uid, found, minimum)
    decision = f"packaged for ingestion: {tar_name}"
    weblog.write_weblog(workdir, args.uid, found, decision, True, ari_l)
    write_manifest(ari_l)                   # the weblog is part of ari_l/
    weblog.write_weblog(workdir, args.uid, found, decision, True, workdir)


def package(workdir: Path, args: argparse.Namespace) -> None:
    made = _exported(workdir)
    minimum = float(config.get("products.min-stage-score"))
    found = scores.score_stages(workdir, [s for s in scores.checkpointed_stages(workdir)
                                          if s != "package"])
    _refuse(workdir, args.uid, found, minimum)
    table_path = workdir / "qa" / ARIQA_FILE
    if not table_path.is_file():
        raise ArihpcError(f"{table_path} not found: run the qa stage first")
    rows = [dict(zip(row.colnames, row)) for row in Table.read(table_path, format="ascii.ecsv")]
    out = _reset(workdir / "package")
    provenance = _provenance(made, args)
    products = _completed_products(workdir, made, provenance,
                                   {r["product"]: str(r["verdict"]) for r in rows},
                                   out / "completed")
    moment_maps, moment_qa = _moment_files(workdir)
    products += moment_maps
    qa_files = [table_path, workdir / "qa" / KEYWORDS_FILE,
                *sorted((workdir / "preview").glob("*.png")), *moment_qa]
    logs = sorted(p for p in (workdir / "log").glob("*.log") if p.name != "package.log")
    layout = packaging.layout_of(args.delivery, args.uid, args.project)
    readme = packaging.readme_text(args.uid, made["products"], rows, provenance)
    ari_l = packaging.build_ari_l(out / "tree", layout, products, qa_files, logs, readme)
    shutil.rmtree(out / "completed")
    tar_name = f"{disk_name(args.uid)}.ari_l.tar"
    _score_package(workdir, args, found, minimum, ari_l, tar_name)
    tar = packaging.write_tar(ari_l, out / tar_name)
    problems = packaging.verify_tar(tar)
    if problems:
        raise ArihpcError(f"{tar}: does not verify: {'; '.join(problems)}")
    if args.delivery and config.get("products.publish-to-delivery"):
        packaging.publish(ari_l, args.delivery)
        shutil.rmtree(out / "tree")         # the published copy and the tar are enough
    log.info("packaged %d product(s) in %s", len(products), tar)


def keep_ms(workdir: Path, args: argparse.Namespace) -> None:
    """The restored measurement sets as one tar in the site's MS store; a copy of its record
    in ``keep-ms/kept.json``."""
    if not args.ms_store:
        raise ArihpcError("keep-ms needs --ms-store, the site's storage.ms-store template")
    summary = workdir / "restore" / "summary.json"
    if not summary.is_file():
        raise ArihpcError(f"{summary} not found: run the restore stage first")
    sets = [workdir / ms["path"] for ms in json.loads(summary.read_text())["ms"]]
    out = _reset(workdir / "keep-ms")
    record = ms_store.keep(sets, ms_store.folder_of(args.ms_store, args.uid), args.uid,
                           args.retention_years)
    write_json_atomic(out / "kept.json", record)


STAGES = {"qa": qa, "preview": preview, "moments": moments, "package": package,
          "keep-ms": keep_ms}


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m arihpc.products.stages", __doc__.splitlines()[0], STAGES)
    parser.add_argument("--delivery", type=Path, default=None,
                        help="the MOUS's member folder in the ALMA delivery tree")
    parser.add_argument("--project", default=None, help="ALMA project code (ari_l layout)")
    parser.add_argument("--site", default=None, help="site name (default: $ARIHPC_SITE)")
    parser.add_argument("--ms-store", default=None,
                        help="keep-ms: the MS store's folder template with {uid}")
    parser.add_argument("--retention-years", type=float, default=3,
                        help="keep-ms: how long the kept MS is to stay")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s products {args.stage} %(levelname)s %(message)s")
    try:
        disk_name(args.uid)
        STAGES[args.stage](args.workdir.resolve(), args)
    except (ArihpcError, OSError, ValueError) as exc:
        log.error("%s failed: %s", args.stage, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
