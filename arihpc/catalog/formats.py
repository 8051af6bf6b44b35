"""Import what the ALMA archive says about MOUS: real archive exports -> one MousRecord per MOUS.

Formats (``FORMATS``): the Archive Query TSV, the legacy archive VOTable, ObsCore (VOTable,
astroquery's ascii table, or a key/value dump), DataLink VOTables, and arihpc's own CSV.
Exports have a row per source or field; rows of one MOUS merge into one record.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from arihpc.catalog import fields as cells
from arihpc.catalog.fields import AQ_COLUMNS, LEGACY_COLUMNS, OBSCORE_COLUMNS, Column, RecordOrError
from arihpc.catalog.readers import (
    header_of,
    read_delimited,
    read_head,
    read_key_values,
    read_votable,
)
from arihpc.errors import CatalogError
from arihpc.mous import (
    FIELDS,
    QA2_STATES,
    SIZE_RANK,
    MousRecord,
    check_project,
    cycle_of,
    find_project,
    find_uid,
    from_columns,
    to_columns,
)

log = logging.getLogger(__name__)


def _delimited(columns: tuple[Column, ...], delimiter: str):
    def parse(path: Path) -> Iterator[RecordOrError]:
        cells.check_header(path, header_of(path, delimiter), cells.required(columns))
        return cells.records(path, read_delimited(path, delimiter), columns)
    return parse


def _votable(columns: tuple[Column, ...]):
    def parse(path: Path) -> Iterator[RecordOrError]:
        names, rows = read_votable(path)
        cells.check_header(path, names, cells.required(columns))
        return cells.records(path, rows, columns)
    return parse


def _obscore_kv(path: Path) -> Iterator[RecordOrError]:
    return cells.records(path, read_key_values(path, "obs_publisher_did"), OBSCORE_COLUMNS)


# --- DataLink: rows are files of a MOUS; raw size = the #progenitor (ASDM) tars ---

_PIPELINE_IMAGE = re.compile(r"_sci\.spw[\d_]+\.(cube|mfs|cont)\.I\.pbcor\.fits$")
DATALINK_COLUMNS = ("ID", "access_url", "service_def", "error_message", "semantics",
                    "content_length")


@dataclass
class _MousLinks:
    project: str | None = None
    sizes: list[int] = field(default_factory=list)
    size_missing: bool = False
    images: list[str] = field(default_factory=list)


def _datalink(path: Path) -> Iterator[RecordOrError]:
    names, rows = read_votable(path)
    cells.check_header(path, names, DATALINK_COLUMNS)
    links: dict[str, _MousLinks] = {}
    for item in rows:
        if isinstance(item, CatalogError):
            yield item
            continue
        line, row = item
        # The ID is the MOUS uid, or (in an expanded tar) a tar name that contains it.
        uid = find_uid(row["ID"])
        if uid is None:
            yield CatalogError(path, f"{row['ID']!r} names no MOUS", line=line, field="ID")
            continue
        if row["error_message"].strip():
            yield CatalogError(path, f"archive error for this link: {row['error_message']}",
                               line=line, field="error_message")
            continue
        entry = links.setdefault(uid, _MousLinks())
        entry.project = entry.project or find_project(
            " ".join((row["ID"], row["access_url"], row["service_def"])))
        if row["semantics"] == "#progenitor":
            size = row["content_length"].strip()
            if not size:
                entry.size_missing = True
            elif not size.isdigit():
                yield CatalogError(path, f"{size!r} is not a size in bytes", line=line,
                                   field="content_length")
                entry.size_missing = True
            else:
                entry.sizes.append(int(size))
        elif row["semantics"] == "#this" and row["access_url"].endswith(".fits"):
            entry.images.append(row["access_url"].rsplit("/", 1)[-1])
    for uid, entry in links.items():
        yield _datalink_record(path, uid, entry)


def _datalink_record(path: Path, uid: str, entry: _MousLinks) -> MousRecord:
    size = sum(entry.sizes) if entry.sizes and not entry.size_missing else None
    if entry.size_missing:
        log.warning("%s: %s: an ASDM tar has no content_length; raw size left unknown", path, uid)
    imaged = None
    if entry.images:
        imaged = any(_PIPELINE_IMAGE.search(name) and ".manual." not in name
                     for name in entry.images)
    return MousRecord(uid=uid, project=entry.project, size_bytes=size,
                      size_source="datalink" if size is not None else None,
                      pipeline_imaged=imaged)


# --- arihpc's own CSV: the flat columns of arihpc.mous.to_columns, plus the derived cycle ---

CSV_COLUMNS = FIELDS[:1] + ("project", "cycle") + FIELDS[2:]


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not true, false or empty")
    return text.lower() == "true"


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _validated(check: Callable[[str], object], text: str) -> str:
    """The text itself, once ``check`` (which raises ValueError) accepts it."""
    check(text)
    return text


def _choice(choices: Iterable) -> Callable[[str], str]:
    allowed = [c for c in choices if c]

    def convert(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text
    return convert


_CSV_CONVERTERS: dict[str, Callable[[str], object]] = {
    "uid": lambda t: cells.uid(t)["uid"], "project": check_project, "qa2": _choice(QA2_STATES),
    "antennas": _count, "size_bytes": _count, "size_source": _choice(SIZE_RANK),
    "full_pol": _bool, "total_power": _bool, "pipeline_imaged": _bool,
    "bands": lambda t: _validated(cells.bands, t), "arrays": lambda t: _validated(cells.arrays, t),
}


def _arihpc_csv(path: Path) -> Iterator[RecordOrError]:
    header = header_of(path, ",")
    cells.check_header(path, header, ["uid"])
    for item in read_delimited(path, ","):
        if isinstance(item, CatalogError):
            yield item
            continue
        line, row = item
        values: dict = {}
        try:
            for name in FIELDS:
                text = row.get(name, "").strip()
                converter = _CSV_CONVERTERS.get(name, str)
                try:
                    values[name] = converter(text) if text else None
                except ValueError as e:
                    raise CatalogError(path, str(e), line=line, field=name) from None
            if values["uid"] is None:
                raise CatalogError(path, "no MOUS uid in this row", line=line, field="uid")
        except CatalogError as e:
            yield e
            continue
        yield from_columns(values)


def write_csv(records: Iterable[MousRecord], out) -> int:
    """Write records as arihpc CSV (what ``arihpc catalog import`` reads back); returns rows."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        row = {k: _csv_text(v) for k, v in to_columns(record).items()}
        row["cycle"] = _csv_text(cycle_of(record.project))
        writer.writerow(row)
        count += 1
    return count


def _csv_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the registry, detection and the public entry point ---

@dataclass(frozen=True)
class CatalogFormat:
    name: str
    container: str                  # xml, tab, comma, space, keyvalue
    signature: frozenset[str]       # column names that identify it
    parse: Callable[[Path], Iterator[RecordOrError]]
    description: str


_AQ_SIGNATURE = frozenset({"Member ous id", "Project code", "QA2 Status", "Group ous id",
                           "Asdm", "Asdm uid", "Array", "Band", "Pol products"})
_OBSCORE_SIGNATURE = frozenset({c.name for c in OBSCORE_COLUMNS} | {
    "obs_publisher_did", "obs_id", "s_ra", "s_dec", "s_region", "group_ous_uid", "asdm_uid"})

FORMATS: dict[str, CatalogFormat] = {f.name: f for f in (
    CatalogFormat("aq-tsv", "tab", _AQ_SIGNATURE, _delimited(AQ_COLUMNS, "\t"),
                  "ALMA Archive Query TSV export"),
    CatalogFormat("legacy-votable", "xml", _AQ_SIGNATURE, _votable(LEGACY_COLUMNS),
                  "legacy ALMA archive query VOTable"),
    CatalogFormat("obscore-votable", "xml", _OBSCORE_SIGNATURE, _votable(OBSCORE_COLUMNS),
                  "ALMA ObsCore (TAP) VOTable"),
    CatalogFormat("obscore-ascii", "space", _OBSCORE_SIGNATURE,
                  _delimited(OBSCORE_COLUMNS, " "), "ObsCore as a space-separated ascii table"),
    CatalogFormat("obscore-kv", "keyvalue", _OBSCORE_SIGNATURE, _obscore_kv,
                  "ObsCore rows dumped as 'key value' lines"),
    CatalogFormat("datalink", "xml", frozenset(DATALINK_COLUMNS), _datalink,
                  "ALMA DataLink VOTable (raw size from the ASDM tars)"),
    CatalogFormat("arihpc-csv", "comma", frozenset(CSV_COLUMNS), _arihpc_csv,
                  "arihpc's own CSV (arihpc catalog export)"),
)}


def _container(path: Path, head: str) -> tuple[str, set[str]]:
    text = head.lstrip("\ufeff").lstrip()
    if text.startswith("<"):
        return "xml", set(re.findall(r'<FIELD\b[^>]*?\bname="([^"]*)"', head))
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    first = lines[0] if lines else ""
    if "\t" in first:
        return "tab", {c.strip() for c in first.split("\t")}
    if first.startswith("uid,") or first == "uid":
        return "comma", {c.strip() for c in first.split(",")}
    tokens = first.split()
    if len(tokens) > 2:
        return "space", set(tokens)
    return "keyvalue", {ln.split()[0] for ln in lines}


def detect_format(path: str | Path) -> str:
    """The name of a catalog file's format, from its content (not its name)."""
    path = Path(path)
    container, names = _container(path, read_head(path))
    scored = sorted(((len(f.signature & names), f.name) for f in FORMATS.values()
                     if f.container == container), reverse=True)
    if scored and scored[0][0] >= 2:
        return scored[0][1]
    raise CatalogError(path, "unknown format: not one of the catalog exports arihpc reads ("
                       + ", ".join(FORMATS) + "); give --format if it is one of them", line=1)


@dataclass
class CatalogRead:
    """One file read: its records (one per MOUS) and its bad rows."""

    path: Path
    format: str
    records: dict[str, MousRecord]
    errors: list[CatalogError]


PROGRESS_EVERY = 1000     # rows between two progress reports


def read_catalog(path: str | Path, fmt: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> CatalogRead:
    """Read one catalog file. Bad rows are collected; a bad file raises CatalogError.

    ``progress(rows done, rows in all)``, if given, is called every PROGRESS_EVERY rows (the
    total is an estimate from the file, see ``row_estimate``) and once at the end.
    """
    path = Path(path)
    read_head(path)         # empty, binary or unreadable: fail before guessing a format
    name = fmt or detect_format(path)
    if name not in FORMATS:
        raise CatalogError(path, f"unknown format {name!r} (known: {', '.join(FORMATS)})")
    total = row_estimate(path, FORMATS[name].container) if progress else 0
    records: dict[str, MousRecord] = {}
    errors: list[CatalogError] = []
    done = 0
    try:
        for item in FORMATS[name].parse(path):
            if isinstance(item, CatalogError):
                errors.append(item)
            elif item.uid in records:
                records[item.uid] = records[item.uid].merge(item)
            else:
                records[item.uid] = item
            done += 1
            if progress and done % PROGRESS_EVERY == 0:
                progress(done, max(done, total))
    except UnicodeDecodeError as e:
        raise CatalogError(path, f"not UTF-8 text (bad byte {e.object[e.start:e.start + 1]!r} "
                                 "past the start of the file)") from e
    if progress:
        progress(done, done)
    return CatalogRead(path, name, records, errors)


def row_estimate(path: Path, container: str) -> int:
    """About how many rows a catalog file has, for progress: the ``<TR>`` elements of a
    VOTable, the lines that start a row of a key/value dump, else the lines past the header."""
    if container == "xml":
        return path.read_bytes().count(b"<TR")
    with open(path, "rb") as f:
        if container == "keyvalue":
            first, rows = None, 0
            for line in f:
                key = (line.lstrip(b"\xef\xbb\xbf").split(None, 1) or [b"#"])[0]
                if not key.startswith(b"#"):
                    first = first or key
                    rows += key == first
            return rows
        count = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return max(count - 1, 0)
