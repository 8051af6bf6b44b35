"""``arihpc demo``: a whole campaign on this machine, from a generated archive export.

Everything lives in one directory D (default ``./arihpc-demo``)::

    D/demo.json         the demo's settings (rows, payload): a later run must match them
    D/archive.tsv       an ALMA Archive Query TSV export of invented MOUS (aq-tsv)
    D/arihpc.db         the SQLite campaign store
    D/archive/<uid>/    the raw data of each selected MOUS and its MANIFEST.json, served over
                        HTTP on 127.0.0.1 while the campaign runs
    D/datalink.xml      a DataLink VOTable: the raw size of each MOUS in the archive
    D/local.yaml        the site profile: this machine (dask LocalCluster), two MOUS at a time
    D/work/<uid>/       each MOUS's work directory; products under export/
    D/ms-store/<uid>/   each MOUS's calibrated MS, one tar with its sha256 (arihpc ms list|fetch)

The raw data (arihpc.demo.archive) are real ALMA measurement sets from CASA's simulator when CASA
is installed, and the ``casa`` payload images them; without CASA a few MB of random bytes stand
in for them and the ``emulator`` payload runs (real HTTP fetch, emulated restore, image and
export: no images). Every step finds what an earlier run made: a second run does nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from arihpc.catalog import formats as catalog
from arihpc.catalog import ordering, selection
from arihpc.demo.archive import DemoMous, demo_rows, write_export
from arihpc.errors import ArihpcError
from arihpc.mous import disk_name
from arihpc.runner.workdir import write_json_atomic
from arihpc.sites.profile import SiteProfile, load_profile
from arihpc.store.catalog import CatalogStore, ImportSummary

DEFAULT_DIR = "arihpc-demo"
DEFAULT_ROWS = 12
SLOTS = 2                       # MOUS computing at once (this is a 2-core machine)


class DemoError(ArihpcError):
    """The demo cannot go on: the message says why and what to do."""


@dataclass(frozen=True)
class Demo:
    """Where the demo's parts live, and what it runs."""

    directory: Path
    rows: tuple[DemoMous, ...]
    payload: str
    why: str

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.directory / 'arihpc.db'}"

    @property
    def export(self) -> Path:
        return self.directory / "archive.tsv"

    @property
    def datalink(self) -> Path:
        return self.directory / "datalink.xml"

    @property
    def archive(self) -> Path:
        return self.directory / "archive"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def ms_store(self) -> Path:
        return self.directory / "ms-store"

    @property
    def profile(self) -> Path:
        return self.directory / "local.yaml"


def casa_installed() -> bool:
    return importlib.util.find_spec("casatasks") is not None


def choose_payload(requested: str | None, made_with: str | None) -> tuple[str, str]:
    """The payload to run and why: asked for, what D was made with, else CASA if installed."""
    if requested:
        payload, why = requested, "asked for with --payload"
    elif made_with:
        payload, why = made_with, "what this demo directory was made with"
    elif casa_installed():
        payload, why = "casa", "CASA 6 is installed"
    else:
        return "emulator", ("CASA is not installed (pip install -e '.[casa]', Python 3.11), so "
                            "the emulator stands in for it: random bytes as raw data, real HTTP "
                            "fetch, emulated restore, image and export (no images)")
    if payload == "casa" and not casa_installed():
        raise DemoError("the casa payload needs CASA 6: pip install -e '.[casa]' (Python 3.11), "
                        "or run the demo with --payload emulator")
    if payload == "casa":
        return payload, why + ": raw data from CASA simobserve, images from tclean, FITS " \
                              "from exportfits"
    return payload, why + ": random bytes as raw data, real HTTP fetch, emulated restore, " \
                          "image and export (no images)"


def prepare(directory: Path, count: int | None, payload: str | None) -> Demo:
    """Check (or record) the demo's settings in D/demo.json and write its archive export."""
    directory = directory.resolve()
    settings = directory / "demo.json"
    try:
        found = json.loads(settings.read_text()) if settings.is_file() else None
    except ValueError as e:
        raise DemoError(f"{settings}: not valid JSON ({e}); choose another --dir") from None
    if found is None and directory.is_dir() and any(directory.iterdir()):
        raise DemoError(f"{directory} is not empty and has no demo.json, so it is not an "
                        "arihpc demo directory: choose another with --dir")
    found = found or {}
    count = count or found.get("mous") or DEFAULT_ROWS
    chosen, why = choose_payload(payload, found.get("payload"))
    wanted = {"mous": count, "payload": chosen}
    if found and found != wanted:
        raise DemoError(f"{directory} holds a demo made with --mous {found.get('mous')} "
                        f"--payload {found.get('payload')}: run it again with those options "
                        "(or none), or choose another --dir")
    directory.mkdir(parents=True, exist_ok=True)
    if not found:
        write_json_atomic(settings, wanted)
    demo = Demo(directory, demo_rows(count), chosen, why)
    write_export(demo.export, demo.rows)
    return demo


def import_and_select(store: CatalogStore, path: Path,
                      fmt: str) -> tuple[ImportSummary, list[selection.Verdict]]:
    """Import one of the demo's catalogs (a no-op when nothing changed) and decide every MOUS
    (the decisions and priorities are recorded when an import changed something)."""
    read = catalog.read_catalog(path, fmt)
    if read.errors:
        raise DemoError(f"the demo's own catalog is bad: {read.errors[0]}")
    summary = store.import_catalogs([read])
    records = {r.uid: r for r in store.records()}
    verdicts = selection.select(records.values(), selection.Rules.from_config())
    if store.undecided():
        store.save_decisions(verdicts, ordering.priorities(verdicts, records))
    return summary, verdicts


def write_profile(demo: Demo, archive_url: str) -> SiteProfile:
    """D/local.yaml: this machine, one worker with SLOTS MOUS slots, this run's archive URL."""
    profile = {
        "description": "this machine, for arihpc demo (it rewrites this file on each run)",
        "batch-system": "local", "walltime": "04:00:00", "max-jobs": 1, "x11": False,
        "payload": demo.payload, "archive": archive_url,
        "node-classes": {"local": {"cores": SLOTS, "memory": f"{2 * SLOTS}GB",
                                   "slots": SLOTS}},
        "storage": {"kind": "local", "work-dir": str(demo.work),
                    "scratch": str(demo.directory / "scratch"), "staging-gb": 5,
                    "ms-store": str(demo.ms_store / "{uid}"), "ms-retention-years": 3},
        "casa": {"imaging": "6.7.0.31", "installations": {"6.7.0.31": "pypi"}},
    }
    (demo.directory / "scratch").mkdir(exist_ok=True)
    tmp = demo.profile.with_name(f".{demo.profile.name}.tmp")
    tmp.write_text("# The site of arihpc demo: this machine (dask LocalCluster).\n"
                   + yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    os.replace(tmp, demo.profile)
    return load_profile(str(demo.profile))


@dataclass(frozen=True)
class Result:
    """Where one selected MOUS got to, and what it made."""

    row: DemoMous
    state: str
    error_class: str | None
    workdir: Path
    products: tuple[tuple[str, int], ...]       # export/ file name, size in bytes


def results(demo: Demo, store: CatalogStore) -> list[Result]:
    """Every selected MOUS of the demo in queue order, with its state and its products."""
    rows = {row.uid: row for row in demo.rows}
    states = store.states()
    out = []
    for decision in store.decisions(selected_only=True):
        if decision.uid not in rows:
            continue
        workdir = demo.work / disk_name(decision.uid)
        files = sorted(p for p in (workdir / "export").glob("*")
                       if p.is_file() and p.name != "products.json")
        state, error_class = states.get(decision.uid, ("new", None))
        out.append(Result(rows[decision.uid], state, error_class, workdir,
                          tuple((p.name, p.stat().st_size) for p in files)))
    return out
