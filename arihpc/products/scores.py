"""A score in [0, 1] per stage of one MOUS, with the reasons for it (ARIQA's layer 2).

Each stage's rule is a list of checks, each worth an equal part of the score; a fatal check
(an image with no finite pixel) makes the score 0. ``RULES`` holds one rule per stage; a stage
not named there (a new one) gets ``finished``: its checkpoint and the outputs it lists.
The package stage scores itself (``package_checks``) and leaves ``package/score.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.io import fits
from astropy.table import Table
from matplotlib.image import imread

from arihpc import config
from arihpc.errors import ArihpcError
from arihpc.runner.manifest import verify_manifest
from arihpc.runner.workdir import read_checkpoint, write_json_atomic

SCORE_FILE = "score.json"           # package/score.json: the package stage's own score
# tclean's last word on each run, in the CASA log (CASA 6.7: "... : iteration limit").
TCLEAN_STOP = re.compile(r"Reached global stopping criterion\s*:\s*(.+?)\s*$")
TCLEAN_CONVERGED = ("iteration limit", "threshold", "n-sigma")


@dataclass(frozen=True)
class Check:
    """One check of a stage: passed or not, why; a fatal failure scores the stage 0."""

    passed: bool
    reason: str
    fatal: bool = False


@dataclass(frozen=True)
class StageScore:
    """A stage's score in [0, 1] and the reasons, failed checks first."""

    value: float
    reasons: list[str]

    @property
    def failed(self) -> list[str]:
        return [r for r in self.reasons if r.startswith("FAIL")]


def score_of(checks: list[Check]) -> StageScore:
    """The share of checks passed (0 when a fatal one failed), reasons failed first."""
    if not checks:
        return StageScore(0.0, ["FAIL: nothing to check"])
    fatal = any(c.fatal and not c.passed for c in checks)
    value = 0.0 if fatal else sum(c.passed for c in checks) / len(checks)
    ordered = sorted(checks, key=lambda c: c.passed)
    return StageScore(round(value, 4), [f"{'ok' if c.passed else 'FAIL'}: {c.reason}"
                                        for c in ordered])


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished(workdir: Path, stage: str) -> list[Check]:
    """The default rule: a checkpoint, and every output it lists there with its size."""
    record = read_checkpoint(workdir, stage)
    if record is None:
        return [Check(False, f"no checkpoint {stage}.json: the stage did not finish")]
    checks = [Check(True, f"finished in {record.get('wall_s', 0):.1f} s")]
    outputs = record.get("outputs") or {}
    wrong = [rel for rel, size in outputs.items()
             if not (workdir / rel).is_file() or (workdir / rel).stat().st_size != size]
    checks.append(Check(not wrong, f"{len(outputs)} output(s) present with their size"
                        if not wrong else f"missing or resized output(s): {', '.join(wrong[:3])}"))
    return checks


def restore_checks(workdir: Path) -> list[Check]:
    summary = _json(workdir / "restore" / "summary.json")
    if summary is None:
        return [Check(False, "restore/summary.json missing or unreadable")]
    empty = [ms["path"] for ms in summary.get("ms", []) if int(ms.get("nrows", 0)) <= 0]
    rows = sum(int(ms.get("nrows", 0)) for ms in summary.get("ms", []))
    return [Check(True, "restore/summary.json read"),
            Check(bool(summary.get("ms")) and not empty,
                  f"{rows} rows in {len(summary.get('ms', []))} measurement set(s)"
                  if not empty else f"no rows in {', '.join(empty)}")]


def tclean_stops(workdir: Path) -> list[str]:
    """Why each tclean run of the image stage stopped, from its CASA log(s)."""
    found = []
    for path in sorted((workdir / "log").glob("casa-image-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = TCLEAN_STOP.search(line)
            if match:
                found.append(match.group(1))
    return found


def image_checks(workdir: Path) -> list[Check]:
    made = _json(workdir / "image" / "products.json")
    if made is None:
        return [Check(False, "image/products.json missing or unreadable")]
    images = made.get("images", [])
    missing = [i["image"] for i in images if not (workdir / i["image"]).is_dir()]
    stops = tclean_stops(workdir)
    converged = [s for s in stops if s.startswith(TCLEAN_CONVERGED)]
    return [Check(bool(images), f"image/products.json lists {len(images)} image(s)"),
            Check(bool(images) and not missing, "every .image.pbcor present" if not missing
                  else f"missing {', '.join(missing[:3])}"),
            Check(len(converged) >= len(images) > 0,
                  f"tclean reached its stopping criterion in {len(converged)} of "
                  f"{len(images)} run(s) ({', '.join(sorted(set(stops))) or 'no stop message'})")]


def _fits_checks(path: Path) -> list[Check]:
    """Opens, has a finite pixel (fatal), has a beam (BMAJ/BMIN or a beam table)."""
    try:
        with fits.open(path) as hdul:
            data = hdul[0].data
            header = hdul[0].header
            beams = any(h.name == "BEAMS" for h in hdul[1:])
            finite = data is not None and bool(np.isfinite(data).any())
    except (OSError, ValueError) as exc:
        return [Check(False, f"{path.name} does not open: {exc}")]
    return [Check(True, f"{path.name} opens"),
            Check(finite, f"{path.name} has finite pixels" if finite
                  else f"no finite pixel in {path.name}", fatal=True),
            Check(beams or ("BMAJ" in header and "BMIN" in header),
                  f"{path.name} has a beam" if beams or "BMAJ" in header
                  else f"{path.name} has no beam (BMAJ/BMIN or BEAMS table)")]


def _exported(workdir: Path) -> tuple[list[dict], list[Check]]:
    made = _json(workdir / "export" / "products.json")
    if made is None:
        return [], [Check(False, "export/products.json missing or unreadable")]
    return made.get("products", []), []


def export_checks(workdir: Path) -> list[Check]:
    products, checks = _exported(workdir)
    if checks:
        return checks
    checks = [Check(bool(products), f"export/products.json lists {len(products)} FITS file(s)")]
    for item in products:
        checks += _fits_checks(workdir / item["fits"])
    return checks


def expected_noise(workdir: Path) -> dict[str, float]:
    """Image name -> expected rms (Jy/beam): tclean's threshold / imaging.threshold-sigma,
    when image/products.json gives ``threshold_jy`` (per image, or for all in ``imaging``)."""
    made = _json(workdir / "image" / "products.json") or {}
    try:
        sigma = float(config.get("imaging.threshold-sigma"))
    except KeyError:                # no threshold from noise in this configuration
        return {}
    common = (made.get("imaging") or {}).get("threshold_jy")
    found = {}
    for item in made.get("images", []):
        threshold = item.get("threshold_jy", common)
        if threshold:
            found[f"member.{item['name']}.I.pbcor.fits"] = float(threshold) / sigma
    return found


def _noise_check(name: str, rms: float, expected: dict[str, float]) -> Check:
    factor = float(config.get("products.max-noise-factor"))
    if name not in expected:
        return Check(True, f"{name}: rms {rms:.3g} Jy/beam, no expected noise (image/"
                           "products.json has no threshold_jy): not compared")
    ratio = rms / expected[name] if expected[name] > 0 else float("inf")
    return Check(1 / factor <= ratio <= factor,
                 f"{name}: rms {rms:.3g} Jy/beam is {ratio:.2f} x the expected "
                 f"{expected[name]:.3g} (allowed 1/{factor:g} to {factor:g} x)")


def qa_checks(workdir: Path) -> list[Check]:
    products, checks = _exported(workdir)
    measured = _json(workdir / "qa" / "keywords.json")
    if checks or measured is None:
        return checks or [Check(False, "qa/keywords.json missing or unreadable")]
    names = [Path(item["fits"]).name for item in products]
    missing = [n for n in names if n not in measured]
    checks = [Check(not missing, f"keywords of all {len(names)} product(s)" if not missing
                    else f"no keywords for {', '.join(missing[:3])}")]
    expected = expected_noise(workdir)
    checks += [_noise_check(n, float(measured[n]["rms"]), expected)
               for n in names if n in measured]
    try:
        table = Table.read(workdir / "qa" / "ariqa.ecsv", format="ascii.ecsv")
        verdicts = {str(r["product"]): str(r["verdict"]) for r in table}
    except (OSError, ValueError):
        verdicts = {}
    unjudged = [n for n in names if not verdicts.get(n)]
    checks.append(Check(not unjudged, "an ARIQA verdict for every product" if not unjudged
                        else f"no ARIQA verdict for {', '.join(unjudged[:3])}"))
    return checks


def preview_checks(workdir: Path) -> list[Check]:
    products, checks = _exported(workdir)
    for item in products:
        png = workdir / "preview" / f"{Path(item['fits']).stem}.png"
        if not png.is_file():
            checks.append(Check(False, f"no preview {png.name}"))
            continue
        pixels = imread(png)
        # blank: every pixel the same colour (RGB and alpha differ from each other anyway)
        varies = bool(np.ptp(pixels.reshape(-1, pixels.shape[-1] if pixels.ndim == 3 else 1),
                             axis=0).max() > 0)
        checks.append(Check(varies, f"{png.name} is not blank" if varies
                            else f"{png.name} is blank"))
    return checks or [Check(False, "no product to preview")]


def package_checks(completed: list[Path], ari_l: Path) -> list[Check]:
    """The package stage's own checks: completed products are valid FITS, the manifest
    verifies."""
    checks = []
    for path in completed:
        try:
            with fits.open(path) as hdul:
                hdul.verify("exception")
            checks.append(Check(True, f"{path.name} is valid FITS"))
        except (OSError, ValueError) as exc:        # astropy's VerifyError is a ValueError
            checks.append(Check(False, f"{path.name} is not valid FITS: {exc}"))
    problems = verify_manifest(ari_l)
    checks.append(Check(not problems, "MANIFEST.sha256 verifies" if not problems
                        else f"manifest: {'; '.join(problems[:3])}"))
    return checks


def write_package_score(workdir: Path, score: StageScore) -> None:
    write_json_atomic(workdir / "package" / SCORE_FILE, asdict(score))


def package_score(workdir: Path) -> list[Check]:
    """What the package stage found (package/score.json), as checks."""
    found = _json(workdir / "package" / SCORE_FILE)
    if found is None:
        return [Check(False, f"package/{SCORE_FILE} missing: the package stage did not score")]
    return [Check(r.startswith("ok"), r.partition(": ")[2]) for r in found["reasons"]]


# One rule per stage: its own checks, after ``finished`` (checkpoint and outputs).
def keep_ms_checks(workdir: Path) -> list[Check]:
    """The kept tar is in the MS store with the size and sha256 its record says."""
    record = _json(workdir / "keep-ms" / "kept.json")
    if record is None:
        return [Check(False, "keep-ms/kept.json missing or unreadable")]
    tar = Path(record["tar"])
    checksum = tar.with_name(tar.name + ".sha256")
    listed = checksum.read_text().split()[:1] if checksum.is_file() else []
    return [Check(tar.is_file() and tar.stat().st_size == record["bytes"],
                  f"{tar} holds {record['bytes']} bytes" if tar.is_file()
                  else f"{tar} is not in the MS store"),
            Check(listed == [record["sha256"]], f"{checksum.name} names sha256 {record['sha256']}"
                  if listed == [record["sha256"]] else f"{checksum} missing or different"),
            Check(True, f"kept until {record['retain_until']}")]


def moments_checks(workdir: Path) -> list[Check]:
    """A line list per cube; each moment map opens with finite pixels and has its preview."""
    made = _json(workdir / "moments" / "products.json")
    if made is None:
        return [Check(False, "moments/products.json missing or unreadable")]
    checks = [Check(True, f"{len(made['cubes'])} cube(s) searched for lines")]
    for cube in made["cubes"]:
        listing = workdir / "moments" / cube["lines"]
        checks.append(Check(listing.is_file(), f"{cube['cube']}: {cube['comment']}"
                            if listing.is_file() else f"{listing} missing"))
        for name in cube["moments"]:
            checks += _fits_checks(workdir / "moments" / name)
            png = (workdir / "moments" / name).with_suffix(".png")
            checks.append(Check(png.is_file(), f"{png.name} " +
                                ("written" if png.is_file() else "missing")))
    return checks


RULES: dict[str, Callable[[Path], list[Check]]] = {
    "moments": moments_checks,
    "keep-ms": keep_ms_checks,
    "fetch": lambda workdir: [],            # the outputs listed in its checkpoint: finished
    "restore": restore_checks,
    "image": image_checks,
    "export": export_checks,
    "qa": qa_checks,
    "preview": preview_checks,
    "package": package_score,
}


def score_stage(workdir: Path, stage: str) -> StageScore:
    """The score of one stage from its checkpoint, outputs and the rule of ``RULES``."""
    done = finished(workdir, stage)
    if not done[0].passed:
        return score_of(done)
    rule = RULES.get(stage)
    return score_of(done + (rule(workdir) if rule else []))


def score_stages(workdir: Path, stages: list[str]) -> dict[str, StageScore]:
    """Each stage's score, in the order given."""
    return {stage: score_stage(Path(workdir), stage) for stage in stages}


def checkpointed_stages(workdir: Path) -> list[str]:
    """The stages with a checkpoint, in the order they started."""
    records = [read_checkpoint(workdir, p.stem)
               for p in sorted((workdir / "checkpoints").glob("*.json"))]
    return [r["stage"] for r in sorted((r for r in records if r), key=lambda r: r["start"])]


def lowest(scores: dict[str, StageScore], minimum: float) -> tuple[str, StageScore] | None:
    """The first stage scoring below ``minimum``, or None."""
    for stage, score in scores.items():
        if score.value < minimum:
            return stage, score
    return None


class LowScore(ArihpcError):
    """A stage scored below products.min-stage-score: the MOUS is not packaged."""


def not_packaged_reason(stage: str, score: StageScore, minimum: float) -> str:
    """The classifying line of a low-score failure (class ``low-score``)."""
    why = "; ".join(r.partition(": ")[2] for r in score.failed[:3]) or "no reason"
    return (f"arihpc: not packaged: stage {stage} scored {score.value:.2f} < {minimum:.2f}: "
            f"{why}")
