"""Cells of catalog exports -> MousRecord fields, and which column of a format feeds which.

A converter takes the stripped text of one cell and returns the record fields it sets;
a ValueError says what is wrong with the text (the caller adds file, line and column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

from arihpc import config
from arihpc.catalog.readers import RowOrError
from arihpc.errors import CatalogError, InvalidUid
from arihpc.mous import MousRecord, check_project, parse_uid

RecordOrError = Union[MousRecord, CatalogError]


def uid(text: str) -> dict:
    try:
        return {"uid": parse_uid(text)}
    except InvalidUid as e:
        raise ValueError(str(e)) from None


def project(text: str) -> dict:
    return {"project": check_project(text)}


def qa2(table: dict[str, str | None]) -> Callable[[str], dict]:
    def convert(text: str) -> dict:
        key = text.upper()
        if key not in table:
            raise ValueError(f"unknown QA2 status {text!r} (expected one of "
                             f"{', '.join(k for k in table if k)})")
        return {"qa2": table[key]}
    return convert


def arrays(text: str) -> dict:
    found = frozenset(re.findall(r"12m|7m|TP", text))
    if not found:
        raise ValueError(f"{text!r} names no ALMA array (12m, 7m, TP)")
    return {"arrays": found, "total_power": "TP" in found}


def bands(text: str) -> dict:
    bands = set()
    for token in re.split(r"[\s,;]+", text):
        if not token.isdigit() or not 1 <= int(token) <= 10:
            raise ValueError(f"{token!r} is not an ALMA band (1-10)")
        bands.add(int(token))
    return {"bands": frozenset(bands)}


def pol(text: str) -> dict:
    products = set(re.findall(r"[XYRL]{2}", text.upper()))
    if not products:
        raise ValueError(f"{text!r} lists no polarisation products")
    return {"full_pol": set(config.get("catalog.full-pol-products")) <= products}


def target(text: str) -> dict:
    return {"targets": frozenset([text])}


def antenna_names(text: str) -> dict:
    # ObsCore lists pad:antenna tokens; an antenna moved between pads appears twice.
    names = frozenset(token.rsplit(":", 1)[-1] for token in text.split())
    return {"antenna_names": names, "antennas": len(names)}


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size (must be >= 0)")
    return value


def estsize_kb(text: str) -> dict:
    return {"size_bytes": int(number(text) * 1000), "size_source": "obscore"}


# --- tabular formats: which column feeds which converter ---

@dataclass(frozen=True)
class Column:
    name: str
    convert: Callable[[str], dict]
    required: bool = False      # the header must have it


AQ_QA2 = {"PASS": "PASS", "SEMIPASS": "SEMIPASS", "FAIL": "FAIL"}
# qa2_passed is a flag: passed is PASS; not passed cannot tell SEMIPASS from FAIL, so unknown.
FLAG_QA2 = {"T": "PASS", "TRUE": "PASS", "Y": "PASS", "F": None, "FALSE": None, "N": None}

AQ_COLUMNS = (
    Column("Member ous id", uid, True), Column("Project code", project, True),
    Column("QA2 Status", qa2(AQ_QA2), True), Column("Array", arrays), Column("Band", bands),
    Column("Pol products", pol), Column("ALMA source name", target),
)
LEGACY_COLUMNS = (
    Column("Member ous id", uid, True), Column("Project code", project, True),
    Column("QA2 Status", qa2({**AQ_QA2, **FLAG_QA2}), True), Column("Array", arrays),
    Column("Band", bands), Column("Pol products", pol), Column("Source name", target),
)
OBSCORE_COLUMNS = (
    Column("member_ous_uid", uid, True), Column("proposal_id", project, True),
    Column("qa2_passed", qa2(FLAG_QA2)), Column("antenna_arrays", antenna_names),
    Column("band_list", bands), Column("pol_states", pol), Column("target_name", target),
    Column("access_estsize", estsize_kb),
)


def check_header(path: Path, names: Iterable[str], required: Iterable[str]) -> None:
    """CatalogError naming the first required column the header lacks."""
    present = set(names)
    for name in required:
        if name not in present:
            raise CatalogError(path, "required column is missing", line=1, field=name)


def required(columns: tuple[Column, ...]) -> list[str]:
    return [c.name for c in columns if c.required]


def records(path: Path, rows: Iterable[RowOrError],
            columns: tuple[Column, ...]) -> Iterator[RecordOrError]:
    """One record (or located error) per row; the first column is the MOUS uid."""
    uid_column = columns[0].name
    for item in rows:
        if isinstance(item, CatalogError):
            yield item
            continue
        line, row = item
        try:
            yield record(row, columns, uid_column)
        except CatalogError as e:
            yield CatalogError(path, e.message, line=line, field=e.field)


def record(row: dict[str, str], columns: tuple[Column, ...], uid_column: str) -> MousRecord:
    """The record one row describes; empty cells stay unknown."""
    fields: dict = {}
    for column in columns:
        text = row.get(column.name, "").strip()
        if text:
            try:
                fields.update(column.convert(text))
            except ValueError as e:
                raise CatalogError("", str(e), field=column.name) from None
    if "uid" not in fields:
        raise CatalogError("", "no MOUS uid in this row", field=uid_column)
    return MousRecord(**fields)
