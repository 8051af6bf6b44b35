"""The sections of a page about its MOUS: the MOUS table, the ARIQA figures and counts, the
product gallery (templates/page.html draws them).

The MOUS table is HTML rows of one page plus, in the report, every row as JSON that the page's
own script sorts, filters and pages (the report is one file with no server behind it). On the
live pages the table is one page read from the store (arihpc.monitor.mous_list), and its
headings, filter form and pager are links with query arguments: the store sorts and filters.
Every duration and size is shown in the unit picked for it (arihpc.monitor.units).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Union
from urllib.parse import urlencode

from arihpc.monitor import ariqa_results, figures, units
from arihpc.monitor.ariqa_results import AriqaSummary, MousAriqa
from arihpc.monitor.mous_list import COLUMNS, MousRow, TableQuery
from arihpc.monitor.workfiles import MousFiles

GALLERY_MOST = 48               # thumbnails in one gallery (the report's first ones)
REJECTED_MOST = 200             # rejected products listed
STATES = ("done", "failed", "running", "staging", "queued", "waiting", "new", "cancelled",
          "excluded", "undecided")


# A table cell, as the template and the page's script read it: its text; [text, value] (sorted
# by the value, a number); or [text, None, [[label, href], ...]] (links). Plain lists: the
# report's table of 100,000 MOUS makes 1.7 million of them.
Cell = Union[str, list]


class MousEntry(NamedTuple):
    """A row with what its work directory holds here and its ARIQA table (a NamedTuple: the
    report makes 100,000 of them, a frozen dataclass takes five times as long)."""

    row: MousRow
    files: MousFiles | None = None
    ariqa: MousAriqa | None = None


def _state(row: MousRow) -> str:
    failed_as = f": {row.error_class}" if row.error_class and row.state != "done" else ""
    return row.state + failed_as


def _measure(value: float | None, scale) -> list:
    return [units.human(value, scale), -1 if value is None else round(value)]


def _links(files: MousFiles | None, links) -> list | str:
    if files is None:
        return "-"
    found = [[label, href] for label, href in (
        ("weblog", links.weblog(files)), ("products", links.products(files)),
        ("preview", links.preview(files))) if href]
    return [", ".join(label for label, _ in found), None, found] if found else "-"


def cells(entry: MousEntry, links) -> list[Cell]:
    """The cells of one row, in the order of mous_list.COLUMNS."""
    row = entry.row
    products = (f"{row.fits} FITS, {units.human(row.fits_bytes, units.SIZE)}" if row.fits
                else "-")
    return [row.uid, row.project or "-", row.source or "-",
            ["-", -1] if row.cycle is None else [str(row.cycle), row.cycle], row.qa2 or "-",
            _measure(row.size_bytes, units.SIZE), row.site or "-", row.node_class or "-",
            [str(row.attempts), row.attempts], _measure(row.wall_s, units.DURATION),
            _measure(row.cpu_s, units.DURATION), _measure(row.peak_rss, units.SIZE),
            _state(row), row.why or "-", [products, row.fits_bytes],
            entry.ariqa.summary() if entry.ariqa else "-", _links(entry.files, links)]


def raw_columns(entries: list[MousEntry], links) -> list[list]:
    """Every row as the report's script reads it, column by column (in the order of
    mous_list.COLUMNS): the values themselves (sizes in bytes, times in seconds), shown by
    the script as ``cells`` does (units.human, mirrored in the page). Columns, not rows: a
    list per column is ten times fewer objects to make and to write as JSON."""
    rows = [entry.row for entry in entries]
    fields = dict(zip(MousRow._fields, zip(*rows))) if rows else {}

    def column(name: str) -> list:
        return list(fields.get(name, ()))

    files = [entry.files for entry in entries]
    return [column("uid"), column("project"), column("source"), column("cycle"),
            column("qa2"), column("size_bytes"), column("site"), column("node_class"),
            column("attempts"), column("wall_s"), column("cpu_s"), column("peak_rss"),
            [_state(row) for row in rows], [row.why or None for row in rows],
            [[row.fits, row.fits_bytes] if row.fits else None for row in rows],
            [entry.ariqa.summary() if entry.ariqa else None for entry in entries],
            [_link_list(f, links) if f is not None else None for f in files]]


def _link_list(files: MousFiles, links) -> list | None:
    found = _links(files, links)
    return found[2] if isinstance(found, list) else None


def _scales() -> dict:
    """The unit scales, for the page's script to pick units as units.human does."""
    return {"size": [[u.name, u.factor] for u in units.SIZE],
            "duration": [[u.name, u.factor] for u in units.DURATION],
            "empty": units.EMPTY, "least": units.MIN_SHOWN}


def _script_json(data) -> str:
    """JSON safe inside <script> (no '</' to end it)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


@dataclass
class MousTable:
    """The table as the template draws it."""

    id: str
    title: str
    columns: list[dict]
    rows: list[list[Cell]]
    query: TableQuery
    total: int
    client: bool                        # sorted and paged by the page's script (the report)
    data: str = ""                      # every row as JSON, when client
    states: list[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per))

    def link(self, **changes) -> str:
        """A query string of this table's query with some arguments changed."""
        arguments = self.query.arguments(**changes)
        return "?" + urlencode(arguments) if arguments else "?"

    def sort_link(self, key: str) -> str:
        order = "desc" if self.query.sort == key and self.query.order == "asc" else "asc"
        return self.link(sort=key, order=order, page=1)


def mous_table(entries: list[MousEntry], links, query: TableQuery, total: int,
               client: bool, title: str, table_id: str = "mous") -> MousTable:
    """The MOUS table: a page of rows (client: every row, the first page as HTML)."""
    columns = [{"key": c.key, "title": c.title, "numeric": c.numeric,
                "sortable": client or c.sort is not None} for c in COLUMNS]
    shown = [cells(entry, links) for entry in (entries[:query.per] if client else entries)]
    present = {e.row.state for e in entries} if client else set(STATES)
    table = MousTable(table_id, title, columns, shown, query, total, client,
                      states=[s for s in STATES if s in present])
    if client:
        table.data = _script_json({"columns": raw_columns(entries, links),
                                   "per": query.per, "units": _scales()})
    return table


def mous_section(table: MousTable, notes: Iterable[str] = ()) -> dict:
    return {"id": f"{table.id}-section", "title": table.title, "notes": list(notes),
            "tables": [], "figures": [], "mous": table}


def ariqa_tables(summary: AriqaSummary) -> list[dict]:
    counts = summary.counts
    rows = [["accepted", counts.get("accept", 0)], ["rejected", counts.get("reject", 0)],
            ["without a QA2 counterpart", counts.get("no-counterpart", 0)],
            ["MOUS with an ARIQA table", summary.tables]]
    rejected = [[uid, product, reason]
                for uid, product, reason in summary.rejected[:REJECTED_MOST]]
    return [{"id": "ariqa-counts", "title": "Products by ARIQA verdict (qa/ariqa.ecsv)",
             "columns": ["verdict", "products"], "rows": rows, "empty": "none"},
            {"id": "ariqa-rejected", "title": "Rejected products and why"
             + (f" (the first {REJECTED_MOST} of {len(summary.rejected)})"
                if len(summary.rejected) > REJECTED_MOST else ""),
             "columns": ["MOUS", "product", "reason"], "rows": rejected,
             "empty": "no product rejected"}]


def ariqa_section(section_id: str, summary: AriqaSummary, threshold: float
                  ) -> tuple[dict, dict]:
    """The ARIQA counts, the rejected products and the four distributions, with their
    figures by name."""
    bands = ariqa_results.reference_bands(threshold)
    plots = {f"{section_id}-{q}": figures.reldiff_cdf(ariqa_results.LABELS[q],
                                                      summary.reldiff[q], bands[q],
                                                      summary.tables)
             for q in ariqa_results.QUANTITIES}
    notes = ["Pipeline products against the archived QA2 images (ARIQA, arihpc/products/"
             "ariqa.py): the distributions of (a − b)/(a + b) over the products compared, "
             "a the pipeline's, b QA2's; the shaded band is the reference named under each."]
    return ({"id": section_id, "title": "ARIQA: re-imaged products against QA2",
             "notes": notes, "tables": ariqa_tables(summary), "figures": list(plots)}, plots)


def gallery_section(section_id: str, entries: Iterable[MousEntry], links,
                    most: int = GALLERY_MOST) -> dict:
    """A thumbnail of each MOUS's continuum preview, linked to the full image."""
    with_preview = [e for e in entries if e.files is not None and e.files.preview]
    items = []
    for entry in with_preview[:most]:
        thumbnail = links.thumbnail(entry.files)
        if thumbnail:
            items.append({"uid": entry.row.uid, "source": entry.row.source or "",
                          "src": thumbnail, "href": links.preview(entry.files)})
    notes = ([f"the first {most} of {len(with_preview)} MOUS with a continuum preview"]
             if len(with_preview) > most else [])
    return {"id": section_id, "title": "Product gallery: continuum previews",
            "notes": notes or ([] if items else ["no continuum preview here yet"]),
            "tables": [], "figures": [], "gallery": items}


def summaries(entries: Iterable[MousEntry]) -> AriqaSummary:
    return ariqa_results.summarize(e.ariqa for e in entries if e.ariqa is not None)
