#!/usr/bin/env python3
"""Benchmark: a 100,000-MOUS archive export through import, selection and ordering.

Generates an ALMA Archive Query TSV (the real 39 columns, one row per source, so some MOUS
have several rows) plus an arihpc CSV of raw sizes, imports both into a fresh SQLite store,
then times the ARI-L selection and the priority ordering. Goals on a 2-core machine:
import under 30 s, selection + ordering under 2 s.

    python scripts/bench_catalog.py [--mous N] [--store URL] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

from arihpc.catalog import ordering, selection
from arihpc.catalog.formats import read_catalog
from arihpc.store.catalog import CatalogStore

# Column order of a real Archive Query TSV export (study7 survey_BH.tsv).
AQ_COLUMNS = [
    "Project code", "ALMA source name", "Ra", "Dec", "Band", "Cont. sens.",
    "Frequency support", "Release date", "Publications", "Ang. res.", "Min. vel. res.", "Array",
    "Mosaic", "Max. reco. scale", "FOV", "Scientific category", "Science keyword", "Int. Time",
    "Gal. lon.", "Gal. lat.", "Min. freq. res.", "Pol products", "L5 BL", "L80 BL", "Obs. date",
    "PI name", "SB name", "Proposal authors", "Line sens. (10 km/s)", "PWV", "Group ous id",
    "Member ous id", "Asdm", "Project title", "Type", "Scan intent", "QA2 Status", "Collections",
    "Footprint",
]
YEARS = [2011, 2012, 2013, 2015, 2016, 2017, 2018, 2019]


def generate(folder: Path, count: int, seed: int = 1) -> tuple[Path, Path, int]:
    """Write the TSV export and the sizes CSV; returns their paths and the TSV row count."""
    rng = random.Random(seed)
    tsv, sizes = folder / "archive-export.tsv", folder / "sizes.csv"
    rows = 0
    with open(tsv, "w", newline="") as t, open(sizes, "w", newline="") as s:
        export = csv.writer(t, delimiter="\t", lineterminator="\n")
        export.writerow(AQ_COLUMNS)
        size_out = csv.writer(s, lineterminator="\n")
        size_out.writerow(["uid", "size_bytes", "size_source"])
        for serial in range(count):
            uid = f"uid://A001/X{1000 + serial // 4096:x}/X{serial % 4096:x}"
            year = rng.choice(YEARS)
            project = f"{year}.{0 if year == 2011 else 1}.{rng.randrange(100000):05d}." + \
                rng.choice("SSSSSSSLTAV")
            base = {
                "Project code": project, "Member ous id": uid,
                "Group ous id": uid[:-1] + "0", "Band": str(rng.choice([3, 6, 7, 9])),
                "Array": rng.choice(["12m"] * 6 + ["7m", "TP"]),
                "Pol products": rng.choice([" XX YY"] * 9 + [" XX XY YX YY"]),
                "QA2 Status": rng.choice(["PASS"] * 7 + ["SEMIPASS"] * 2 + ["FAIL"]),
                "Ra": f"{rng.uniform(0, 360):.6f}", "Dec": f"{rng.uniform(-90, 40):.6f}",
                "Release date": "2018-11-29", "Type": "S", "Scan intent": "TARGET", "Asdm": "1",
                "Frequency support": "[226.56..228.55GHz,31250.00kHz, XX YY,continuum]",
                "Project title": "Benchmark project", "PI name": "Bench, Mark",
            }
            for source in range(1 + (rng.random() < 0.25)):     # a quarter have two sources
                name = "Sun" if rng.random() < 0.002 else f"SRC{serial}_{source}"
                export.writerow([{**base, "ALMA source name": name}.get(c, "") for c in AQ_COLUMNS])
                rows += 1
            if rng.random() < 0.9:
                size_out.writerow([uid, int(10 ** rng.uniform(9, 12.5)), "datalink"])
    return tsv, sizes, rows


def timed(label: str, results: dict, function, *args):
    start = time.perf_counter()
    value = function(*args)
    results[label] = time.perf_counter() - start
    print(f"  {label:<34} {results[label]:7.2f} s", flush=True)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mous", type=int, default=100_000, help="MOUS in the export")
    parser.add_argument("--store", help="store URL (default: SQLite in a temporary folder)")
    parser.add_argument("--keep", type=Path, help="write the generated files here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        url = args.store or f"sqlite:///{Path(tmp) / 'bench.db'}"
        start = time.perf_counter()
        tsv, sizes, rows = generate(folder, args.mous)
        print(f"generated {args.mous} MOUS in {rows} TSV rows ({tsv.stat().st_size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - start:.1f} s; store {url}")
        results: dict[str, float] = {}
        store = CatalogStore.open(url)
        reads = [timed("read TSV export", results, read_catalog, tsv),
                 timed("read sizes CSV", results, read_catalog, sizes)]
        summary = timed("write store (one transaction)", results, store.import_catalogs, reads)
        records = timed("load records from store", results,
                        lambda: {r.uid: r for r in store.records()})
        verdicts = timed("selection (decision tree)", results, selection.select, records.values())
        ranks = timed("ordering (priorities)", results, ordering.priorities, verdicts, records)
        timed("save decisions", results, store.save_decisions, verdicts, ranks)
        store.close()
        imported = results["read TSV export"] + results["read sizes CSV"] + \
            results["write store (one transaction)"]
        decided = results["selection (decision tree)"] + results["ordering (priorities)"]
        end_to_end = decided + results["load records from store"] + results["save decisions"]
        print(f"imported {summary.inserted} MOUS; {len(ranks)} selected")
        print(f"import total:          {imported:6.2f} s  (goal < 30 s) "
              f"{'OK' if imported < 30 else 'MISSED'}")
        print(f"selection + ordering:  {decided:6.2f} s  (goal < 2 s) "
              f"{'OK' if decided < 2 else 'MISSED'}")
        print(f"  with store load and save: {end_to_end:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
