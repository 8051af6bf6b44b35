"""The unit of work: one MOUS. Uid and project-code parsing, and the archive record of a MOUS."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping

from arihpc import config
from arihpc.errors import InvalidUid

# Archive id A001..A999, then two hex serial parts. Bounded lengths: a uid names paths and commands.
_CANONICAL = re.compile(r"uid://(A\d{3})/X([0-9a-fA-F]{1,16})/X([0-9a-fA-F]{1,16})")
_ON_DISK = re.compile(r"uid___(A\d{3})_X([0-9a-fA-F]{1,16})_X([0-9a-fA-F]{1,16})")
_PROJECT = re.compile(r"(\d{4})\.(\d)\.(\d{5})\.([A-Z])")

QA2_STATES = ("PASS", "SEMIPASS", "FAIL")


def parse_uid(text: str) -> str:
    """The canonical form (``uid://A001/X147/X5b``) of a MOUS uid given in either ALMA form.

    Anything else (path separators, ``..``, shell characters, empty parts) raises InvalidUid.
    Hex digits are case-insensitive and come out lower case.
    """
    if not isinstance(text, str):
        raise InvalidUid(f"{text!r} is not an ALMA uid")
    match = _CANONICAL.fullmatch(text) or _ON_DISK.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidUid(f"{shown!r} is not an ALMA MOUS uid "
                         "(expected uid://A001/X147/X5b or uid___A001_X147_X5b)")
    archive, first, second = match.groups()
    return f"uid://{archive}/X{first.lower()}/X{second.lower()}"


def disk_name(uid: str) -> str:
    """The on-disk form (``uid___A001_X147_X5b``) of a uid, validated first."""
    return parse_uid(uid).replace("uid://", "uid___").replace("/", "_")


def find_uid(text: str) -> str | None:
    """The first MOUS uid written inside a longer name (a tar or file name), or None."""
    match = _ON_DISK.search(text) or _CANONICAL.search(text)
    return parse_uid(match.group(0)) if match else None


def check_project(code: str) -> str:
    """An ALMA project code such as ``2016.1.00650.S``, or ValueError."""
    code = code.strip()
    if not _PROJECT.fullmatch(code):
        raise ValueError(f"{code!r} is not an ALMA project code (expected e.g. 2016.1.00650.S)")
    return code


def find_project(text: str) -> str | None:
    """The first project code written inside a longer name, or None."""
    match = _PROJECT.search(text)
    return match.group(0) if match else None


def cycle_table() -> dict[str, int]:
    """The configured year -> cycle table (arihpc.cycles)."""
    return {str(k): int(v) for k, v in config.get("cycles").items()}


def cycle_of(project: str | None, table: Mapping[str, int] | None = None) -> int | None:
    """ALMA cycle of a project code from the year table in arihpc.yaml; None if it cannot tell."""
    if not project or not _PROJECT.fullmatch(project):
        return None
    table = cycle_table() if table is None else table
    year = project[:4]
    if year in table:
        return table[year]
    last = max(table, key=int)
    # Years after the table advance one cycle a year; a gap year inside it has no cycle.
    return table[last] + int(year) - int(last) if int(year) > int(last) else None


def is_vlbi(project: str | None) -> bool | None:
    """VLBI projects carry the ``.V`` suffix."""
    return None if not project else project.endswith(".V")


@dataclass(frozen=True)
class MousRecord:
    """What the archive says about one MOUS. ``None`` always means unknown, never "no"."""

    uid: str
    project: str | None = None
    qa2: str | None = None                     # PASS, SEMIPASS, FAIL
    antenna_names: frozenset[str] | None = None
    antennas: int | None = None                # distinct antenna names
    arrays: frozenset[str] | None = None       # 12m, 7m, TP
    bands: frozenset[int] | None = None
    full_pol: bool | None = None
    total_power: bool | None = None
    targets: frozenset[str] | None = None
    size_bytes: int | None = None              # raw data (ASDM) size
    size_source: str | None = None             # datalink (exact) or obscore (estimate)
    pipeline_imaged: bool | None = None

    @property
    def cycle(self) -> int | None:
        return cycle_of(self.project)

    @property
    def vlbi(self) -> bool | None:
        return is_vlbi(self.project)

    def merge(self, newer: "MousRecord") -> "MousRecord":
        """Combine with a later report on this MOUS: fill unknowns, never blank a known value."""
        if newer.uid != self.uid:
            raise ValueError(f"cannot merge {newer.uid} into {self.uid}")
        merged = {name: _merge_field(name, getattr(self, name), getattr(newer, name))
                  for name in FIELDS}
        if SIZE_RANK.get(newer.size_source, 0) < SIZE_RANK.get(self.size_source, 0):
            merged["size_bytes"], merged["size_source"] = self.size_bytes, self.size_source
        if merged["antenna_names"] is not None:
            merged["antennas"] = len(merged["antenna_names"])
        return MousRecord(**merged)


FIELDS = tuple(f.name for f in dataclasses.fields(MousRecord))

# An exact DataLink sum is never replaced by an ObsCore estimate.
SIZE_RANK = {None: 0, "obscore": 1, "datalink": 2}
_UNION = {"antenna_names", "arrays", "bands", "targets"}     # sets: union of every report
_ANY = {"full_pol", "total_power"}                            # true if any report says so


def _merge_field(name: str, old, new):
    if new is None:
        return old
    if old is None:
        return new
    if name in _UNION:
        return old | new
    if name in _ANY:
        return old or new
    return new


# Flat text form of a record: the store's columns and arihpc's CSV share it.
_SEPARATORS = {"antenna_names": " ", "arrays": " ", "bands": " ", "targets": ";"}


def to_columns(record: MousRecord) -> dict:
    """Record -> flat dict (sets joined into text, None kept as None)."""
    out = dataclasses.asdict(record)
    for name, sep in _SEPARATORS.items():
        value = out[name]
        if value is not None:
            out[name] = sep.join(str(v) for v in sorted(value))
    return out


def _split(text: str, sep: str) -> list[str]:
    return [p for p in (x.strip() for x in text.split(sep)) if p] if sep != " " else text.split()


def from_columns(row: Mapping) -> MousRecord:
    """Flat dict (as to_columns writes, or a store row) -> record."""
    values = {name: row.get(name) for name in FIELDS}
    for name, sep in _SEPARATORS.items():
        text = values[name]
        if text is not None:
            parts = _split(str(text), sep)
            values[name] = frozenset(map(int, parts)) if name == "bands" else frozenset(parts)
    return MousRecord(**values)
