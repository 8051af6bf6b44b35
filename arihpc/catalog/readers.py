"""Raw readers for catalog files: rows as (line number, {column: text}), nothing interpreted yet.

File-level problems raise CatalogError; a malformed row is yielded as a CatalogError so the
good rows around it still count.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from arihpc.errors import CatalogError

Row = tuple[int, dict[str, str]]
RowOrError = Union[Row, CatalogError]

SNIFF_BYTES = 65536


def read_head(path: Path) -> str:
    """The start of a file as text; CatalogError for a missing, empty or binary file."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise CatalogError(path, f"cannot read: {e.strerror}") from e
    if not head.strip():
        raise CatalogError(path, "empty file: no header and no rows")
    if b"\0" in head:
        raise CatalogError(path, "binary file, not a catalog export (NUL bytes in it)")
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:     # not just a multi-byte character cut by the sniff
            raise CatalogError(path, f"not UTF-8 text (bad byte at offset {e.start}): "
                                     "a binary file is not a catalog export") from e
        return head[: e.start].decode("utf-8")


def _open_text(path: Path):
    # utf-8-sig: spreadsheet tools often start a TSV/CSV with a byte-order mark.
    return open(path, encoding="utf-8-sig", errors="strict", newline="")


def read_delimited(path: Path, delimiter: str, quotechar: str = '"') -> Iterator[RowOrError]:
    """Rows of a header-first delimited text file (TSV, CSV, space-separated ObsCore)."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quotechar=quotechar,
                            skipinitialspace=delimiter == " ")
        try:
            header = next(reader, None)
            if header is None:
                raise CatalogError(path, "empty file: no header and no rows")
            header = [h.strip() for h in header]
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    yield CatalogError(path, f"{len(cells)} fields where the header has "
                                             f"{len(header)}", line=reader.line_num)
                    continue
                yield reader.line_num, dict(zip(header, cells))
        except UnicodeDecodeError as e:
            raise CatalogError(path, f"not UTF-8 text near line {reader.line_num + 1}") from e
        except csv.Error as e:
            raise CatalogError(path, f"malformed text: {e}", line=reader.line_num) from e


def header_of(path: Path, delimiter: str) -> list[str]:
    """The header line's column names (for required-column checks before reading rows)."""
    with _open_text(path) as f:
        first = next(csv.reader(f, delimiter=delimiter, skipinitialspace=delimiter == " "), [])
    return [h.strip() for h in first]


def read_key_values(path: Path, first_key: str) -> Iterator[RowOrError]:
    """Key/value dumps (``key   value`` per line); each ``first_key`` line starts a new row."""
    row: dict[str, str] = {}
    start = 0
    with _open_text(path) as f:
        for number, text in enumerate(f, 1):
            text = text.rstrip("\r\n")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            key, value = (text.strip().split(None, 1) + [""])[:2]
            if key == first_key and row:
                yield start, row
                row = {}
            if not row:
                start = number
            row[key] = value.strip()
    if row:
        yield start, row


_TR = re.compile(rb"<TR[\s>]")


def _row_lines(path: Path) -> list[int]:
    """Line number of each ``<TR>`` in a TABLEDATA VOTable, to place row errors."""
    data = Path(path).read_bytes()
    lines, last, count = [], 0, 1
    for match in _TR.finditer(data):
        count += data.count(b"\n", last, match.start())
        last = match.start()
        lines.append(count)
    return lines


def read_votable(path: Path) -> tuple[list[str], Iterator[RowOrError]]:
    """Column names and rows of the first table of a VOTable (astropy does the parsing)."""
    from astropy.io.votable import parse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # astropy's VOTable spec warnings are not ours
            table = parse(str(path)).get_first_table()
    except Exception as e:      # astropy raises ValueError/ExpatError/IndexError with position
        raise CatalogError(path, f"not a readable VOTable: {_astropy_message(e, path)}",
                           line=_astropy_line(e)) from e
    names = [field.name for field in table.fields]
    return names, _votable_rows(path, table, names)


def _votable_rows(path: Path, table, names: list[str]) -> Iterator[RowOrError]:
    columns = []
    for key in table.array.dtype.names:     # astropy keys columns by FIELD ID when there is one
        column = table.array[key]
        mask = np.ma.getmaskarray(column).tolist()
        values = np.ma.getdata(column).tolist()
        columns.append([_text(v, m) for v, m in zip(values, mask)])
    lines = _row_lines(path) if len(table.array) else []
    for index in range(len(table.array)):
        line = lines[index] if index < len(lines) else None
        yield line, {name: column[index] for name, column in zip(names, columns)}


def _text(value, masked: bool) -> str:
    if masked or value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:
        return ""
    return str(value)


def _astropy_line(error: Exception) -> int | None:
    match = re.search(r":(\d+):\d+:", str(error)) or re.match(r"(\d+):\d+:", str(error))
    if match:
        return int(match.group(1))
    position = getattr(error, "position", None)     # ExpatError
    return getattr(error, "lineno", None) if position is None else position[0]


def _astropy_message(error: Exception, path: Path) -> str:
    text = str(error).replace(f"{path}:", "")
    return re.sub(r"^\d+:\d+: ", "", text).strip() or type(error).__name__
