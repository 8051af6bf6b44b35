"""The demo's archive: invented MOUS, their archive exports, their raw data and an HTTP server.

- ``write_export``: an ALMA Archive Query TSV export (``aq-tsv``) of the rows;
- ``build_archive``: the raw data of each MOUS in ``ARCHIVE/<uid>/`` with its MANIFEST.json (the
  layout arihpc.runner.fetch reads): a real ALMA measurement set from CASA's simulator
  (``casa_stages simulate``), or a few MB of random bytes for the emulated payload;
- ``write_datalink``: a DataLink VOTable giving each MOUS's raw size (its ``#progenitor`` files),
  as the archive's DataLink service does;
- ``serve``: the archive over HTTP on 127.0.0.1, in a thread of this process.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import logging
import os
import random
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from xml.sax.saxutils import escape

from arihpc.mous import disk_name
from arihpc.runner.fetch import MANIFEST
from arihpc.runner.manifest import sha256_of
from arihpc.runner.workdir import write_json_atomic
from arihpc.sites.command import run_command

log = logging.getLogger(__name__)

BUILD_JOBS = 2                  # raw data made at once (this is a 2-core machine)
SIMULATE_TIMEOUT_S = 600
DURATION_S = 120                # simulated time on source per spw
CHANNELS = 4                    # of the continuum spw; two spws per MOUS
LINE_CHANNELS = 8               # of the line spw, whose channel LINE_AT has a spectral line
LINE_AT = 4
CHANNEL_MHZ = 15.625            # the simulator's channel width (arihpc.payloads.casa_simulate)
LINE_PEAK_JY, LINE_FWHM_MHZ = 0.5, 20.0
BAND_GHZ = {3: 100.0, 6: 230.0, 7: 345.0}
EMULATED_BYTES = 2 * 2**20

# Invented projects (valid codes, not real ones): project code, QA2 status, array, band,
# source, polarisation products. Every second row is one the ARI-L rules exclude, each for
# another reason (the comment); --mous N takes the first N rows, repeating the list past 12.
TEMPLATES = (
    ("2016.1.00412.S", "PASS", "12m", 6, "NGC3256", "XX YY"),
    ("2016.1.00731.S", "FAIL", "12m", 6, "IRAS16293-2422", "XX YY"),       # qa2-fail
    ("2015.1.00956.S", "PASS", "12m", 3, "Arp220", "XX YY"),
    ("2015.1.01089.S", "PASS", "TP", 6, "Orion-KL", "XX YY"),              # total-power
    ("2013.1.00034.S", "SEMIPASS", "12m", 7, "HD163296", "XX YY"),         # tier 2
    ("2018.1.00545.S", "PASS", "12m", 6, "NGC1068", "XX YY"),              # cycle (6)
    ("2016.1.01166.S", "PASS", "12m", 7, "TW Hya", "XX YY"),
    ("2016.1.00050.S", "PASS", "12m", 3, "Sun", "XX YY"),                  # solar
    ("2015.1.00224.S", "PASS", "12m", 6, "M83", "XX YY"),
    ("2015.1.00624.S", "PASS", "12m", 7, "3C286", "XX XY YX YY"),          # full-pol
    ("2013.1.00911.S", "PASS", "12m", 3, "NGC4945", "XX YY"),
    ("2016.1.01116.V", "PASS", "12m", 3, "SgrA*", "XX XY YX YY"),          # vlbi, full-pol
)
# The columns of an Archive Query TSV export, in its order (../shared/alma-samples).
AQ_HEADER = (
    "Project code", "ALMA source name", "Ra", "Dec", "Band", "Cont. sens.", "Frequency support",
    "Release date", "Publications", "Ang. res.", "Min. vel. res.", "Array", "Mosaic",
    "Max. reco. scale", "FOV", "Scientific category", "Science keyword", "Int. Time",
    "Gal. lon.", "Gal. lat.", "Min. freq. res.", "Pol products", "L5 BL", "L80 BL", "Obs. date",
    "PI name", "SB name", "Proposal authors", "Line sens. (10 km/s)", "PWV", "Group ous id",
    "Member ous id", "Asdm", "Project title", "Type", "Scan intent", "QA2 Status",
    "Collections", "Footprint")
DATALINK_FIELDS = ("ID", "access_url", "service_def", "error_message", "semantics",
                   "content_type", "content_length")


@dataclass(frozen=True)
class DemoMous:
    """One row of the demo's archive export: one MOUS observing one source."""

    uid: str
    group: str
    project: str
    qa2: str
    array: str
    band: int
    source: str
    pol: str
    seed: int

    @property
    def spws(self) -> list[str]:
        """FREQ_GHZ:NCHAN of its two spws, in its band: continuum, then the line's."""
        base = BAND_GHZ[self.band]
        return [f"{base:g}:{CHANNELS}", f"{base + 2:g}:{LINE_CHANNELS}"]

    @property
    def line(self) -> str:
        """FREQ_GHZ:PEAK_JY:FWHM_MHZ of its simulated line (topocentric), at the centre of
        channel LINE_AT of its second spw."""
        freq = BAND_GHZ[self.band] + 2 + LINE_AT * CHANNEL_MHZ / 1e3
        return f"{freq:.7f}:{LINE_PEAK_JY:g}:{LINE_FWHM_MHZ:g}"


def demo_rows(count: int) -> tuple[DemoMous, ...]:
    """The first ``count`` rows (the templates, repeated with other project numbers)."""
    rows = []
    for i in range(count):
        project, qa2, array, band, source, pol = TEMPLATES[i % len(TEMPLATES)]
        number = (int(project[7:12]) + 100 * (i // len(TEMPLATES))) % 100000
        rows.append(DemoMous(
            uid=f"uid://A001/X1b4/X{0x5a1 + 2 * i:x}", group=f"uid://A001/X1b4/X{0x5a0 + 2 * i:x}",
            project=f"{project[:7]}{number:05d}{project[12:]}", qa2=qa2, array=array, band=band,
            source=source, pol=pol, seed=i + 1))
    return tuple(rows)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` (temp file and rename) unless the file already holds it."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_export(path: Path, rows: Iterable[DemoMous]) -> None:
    """The rows as an ALMA Archive Query TSV export."""
    lines = ["\t".join(AQ_HEADER)]
    for row in rows:
        spws = [tuple(map(float, s.split(":"))) for s in row.spws]
        support = " U ".join(f"[{f:.2f}..{f + n * 0.015625:.2f}GHz,15625.00kHz, {row.pol}]"
                             for f, n in spws)
        cells = {"Project code": row.project, "ALMA source name": row.source,
                 "Ra": "150.0", "Dec": "-30.0", "Band": str(row.band),
                 "Frequency support": support, "Array": row.array,
                 "Int. Time": f"{DURATION_S * len(spws):g}", "Pol products": f" {row.pol}",
                 "Obs. date": "2018-06-01", "PI name": "Demo, Ari",
                 "SB name": f"{row.source}_a_{row.band:02d}_TM1", "Group ous id": row.group,
                 "Member ous id": row.uid, "Asdm": "1", "Project title": "arihpc demo",
                 "Type": row.project[-1], "Scan intent": "TARGET", "QA2 Status": row.qa2}
        lines.append("\t".join(cells.get(name, "") for name in AQ_HEADER))
    _write_if_changed(path, "\n".join(lines) + "\n")


def write_datalink(path: Path, archive: Path, rows: Iterable[DemoMous]) -> int:
    """A DataLink VOTable of the rows' raw files in ``archive``; returns the MOUS listed."""
    fields = "\n".join(f'<FIELD name="{name}" datatype="char" arraysize="*"/>'
                       if name != "content_length" else
                       f'<FIELD name="{name}" datatype="long" unit="byte"/>'
                       for name in DATALINK_FIELDS)
    rows_xml, listed = [], 0
    for row in rows:
        folder = archive / disk_name(row.uid)
        if not archive_ok(folder):
            continue
        listed += 1
        for entry in json.loads((folder / MANIFEST).read_text())["files"]:
            cells = (row.uid, (folder / entry["name"]).as_uri(), "", "", "#progenitor",
                     "application/x-tar", str(entry["size"]))
            rows_xml.append("<TR>" + "".join(f"<TD>{escape(c)}</TD>" for c in cells) + "</TR>")
    _write_if_changed(path, (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.4">\n'
        f'<RESOURCE type="results"><TABLE>\n{fields}\n<DATA><TABLEDATA>\n'
        + "\n".join(rows_xml) + "\n</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n"))
    return listed


# ---- raw data -----------------------------------------------------------------------------

def archive_ok(folder: Path) -> bool:
    """A complete archive folder: MANIFEST.json and every file it lists, size and sha256."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        return bool(files) and all(
            (folder / f["name"]).stat().st_size == f["size"]
            and sha256_of(folder / f["name"]) == f["sha256"] for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _publish(raw: Path, folder: Path) -> None:
    """Move a finished raw folder into the archive with one rename."""
    part = folder.with_name(f".{folder.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    shutil.move(str(raw), str(part))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(part, folder)


def simulate(row: DemoMous, archive: Path, build: Path) -> None:
    """Real raw data: CASA's simulator observes the row's source in its band."""
    shutil.rmtree(build, ignore_errors=True)
    argv = [sys.executable, "-m", "arihpc.payloads.casa_stages", "simulate", "--workdir", build,
            "--uid", row.uid, "--source", row.source, "--duration-s", DURATION_S,
            "--seed", row.seed, "--line", row.line]
    for spw in row.spws:
        argv += ["--spw", spw]
    run_command(argv, timeout=SIMULATE_TIMEOUT_S)
    _publish(build / "raw", archive / disk_name(row.uid))
    shutil.rmtree(build, ignore_errors=True)


def emulate(row: DemoMous, archive: Path, build: Path) -> None:
    """Stand-in raw data for the emulated payload: a few MB of (seeded) random bytes."""
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    data = build / f"{disk_name(row.uid)}.asdm.bin"
    data.write_bytes(random.Random(row.seed).randbytes(EMULATED_BYTES))
    entry = {"name": data.name, "size": data.stat().st_size, "sha256": sha256_of(data)}
    write_json_atomic(build / MANIFEST, {"files": [entry]})
    _publish(build, archive / disk_name(row.uid))


def missing_raw(archive: Path, rows: Iterable[DemoMous]) -> list[DemoMous]:
    """The rows whose archive folder is missing or incomplete."""
    return [row for row in rows if not archive_ok(archive / disk_name(row.uid))]


def build_archive(archive: Path, rows: list[DemoMous], casa: bool,
                  built: Callable[[DemoMous], None] = lambda row: None) -> None:
    """Make the raw data of ``rows`` (CASA or random bytes), BUILD_JOBS at a time; ``built``
    hears of each one. A failure (CommandError) stops the build; what was made stays."""
    make = simulate if casa else emulate
    builds = archive.parent / "build"
    archive.mkdir(parents=True, exist_ok=True)

    def one(row: DemoMous) -> None:
        make(row, archive, builds / disk_name(row.uid))
        log.info("raw data of %s in %s", row.uid, archive / disk_name(row.uid))
        built(row)
    pool = ThreadPoolExecutor(BUILD_JOBS)
    try:
        list(pool.map(one, rows))
    finally:            # after a failure or Ctrl-C, only what already runs is waited for
        pool.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(builds, ignore_errors=True)


# ---- the archive server -------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        log.debug("archive server: " + format, *args)


def bypass_proxy() -> None:
    """Requests to 127.0.0.1 never go through a proxy (workers inherit this)."""
    for var in ("no_proxy", "NO_PROXY"):
        hosts = [h for h in os.environ.get(var, "").split(",") if h]
        os.environ[var] = ",".join(hosts + [h for h in ("127.0.0.1", "localhost")
                                            if h not in hosts])


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); yields the ``{uid}`` template."""
    bypass_proxy()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="arihpc-demo-archive",
                     daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{uid}}/"
    finally:
        server.shutdown()
        server.server_close()
