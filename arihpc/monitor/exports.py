"""Files of the store's tables (arihpc.monitor.tables): Parquet through pyarrow or CSV through
pandas, written by ``arihpc export`` and read back, also as the run-time history that
``arihpc plan --history`` fits its model to.

A file is written whole beside its destination and renamed into place: a reader never sees
half of one. Parquet keeps the dtypes (times as UTC timestamps); CSV writes times in ISO 8601
with their +00:00, and ``read_table`` parses them back. CSV cannot tell an empty text from a
missing one: a selected MOUS's ``reasons`` ("" in the store) reads back as missing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd

from arihpc.errors import ArihpcError
from arihpc.monitor import tables

FORMATS = ("parquet", "csv")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}
TIME_COLUMNS = {name for columns in tables.COLUMNS.values()
                for name, dtype in columns.items() if dtype == tables.TIME}
PARQUET_MAGIC = b"PAR1"


class ExportError(ArihpcError):
    """An export file that cannot be written or read back: names the file and why (like
    arihpc.demo's DemoError, it lives with the only code that raises it)."""


def format_of(path: str | Path) -> str | None:
    """The format a file's suffix names (``.parquet``, ``.pq``, ``.csv``, ``.csv.gz``), or None."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def write_table(frame: pd.DataFrame, path: str | Path, fmt: str) -> None:
    """Write ``frame`` to ``path`` as Parquet or CSV (gzip-compressed for ``.gz``)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ExportError(f"{path}: unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if fmt == "parquet":
            frame.to_parquet(partial, engine="pyarrow", index=False)
        else:
            frame.to_csv(partial, index=False,
                         compression="gzip" if path.name.endswith(".gz") else None)
        os.replace(partial, path)
    except OSError as e:
        with contextlib.suppress(OSError):      # its folder may be what is missing
            partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


def read_table(path: str | Path) -> pd.DataFrame:
    """An exported table: Parquet or CSV by suffix (else by content), times as UTC; a CSV
    file of one of arihpc's tables gets that table's dtypes back."""
    path = Path(path)
    try:
        fmt = format_of(path) or _sniffed_format(path)
        if fmt == "parquet":
            return pd.read_parquet(path, engine="pyarrow")
        frame = pd.read_csv(path)
    except (OSError, ValueError) as e:      # pyarrow's and pandas' parse errors are ValueErrors
        raise ExportError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    for name in TIME_COLUMNS & set(frame.columns):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601").dt.as_unit("us")
    # One of arihpc's tables: its dtypes too (a column of missing values reads as float).
    known = next((c for c in tables.COLUMNS.values() if list(c) == list(frame.columns)), {})
    return frame.astype({name: dtype for name, dtype in known.items() if dtype != tables.TIME})


def _sniffed_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "parquet" if f.read(4) == PARQUET_MAGIC else "csv"


def history_of(frame: pd.DataFrame, source: str = "the table"
               ) -> tuple[list[float], list[float], list[float]]:
    """Raw size (GB), run time (h: the sum of its stage runs' wall time) and peak RSS (GB) of
    each MOUS done, from an exported stages or mous table: what ``CampaignStore.history``
    gives from the store itself."""
    columns = set(frame.columns)
    if set(tables.STAGE_COLUMNS) <= columns:
        done = frame[(frame["mous_state"] == "done") & frame["raw_size_bytes"].notna()]
        per_mous = done.groupby("uid").agg(raw_size_bytes=("raw_size_bytes", "first"),
                                           wall_s=("wall_s", "sum"),
                                           peak_rss_bytes=("peak_rss_bytes", "max"))
    elif set(tables.MOUS_COLUMNS) <= columns:
        per_mous = frame[(frame["state"] == "done") & frame["raw_size_bytes"].notna()
                         & frame["wall_s"].notna()]
    else:
        raise ExportError(f"{source}: not an arihpc export of stages or mous (columns: "
                          f"{', '.join(map(str, frame.columns[:8]))}...): write one with "
                          "arihpc export stages FILE")
    return ((per_mous["raw_size_bytes"].astype("float64") / 1e9).tolist(),
            (per_mous["wall_s"].astype("float64") / 3600).tolist(),
            (per_mous["peak_rss_bytes"].astype("float64") / 1e9).tolist())


def read_history(path: str | Path) -> tuple[list[float], list[float], list[float]]:
    """``history_of`` an exported stages or mous file."""
    return history_of(read_table(path), str(path))

