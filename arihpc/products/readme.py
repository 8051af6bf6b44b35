"""README.txt of an ARI-L folder: what was made, how, the ARIQA verdicts and the caveats.

Kept apart from arihpc.products.packaging (which re-exports ``readme_text``): it is pure text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import arihpc
from arihpc.mous import parse_uid

# Product kinds as the CASA export stage names them (".cube." / ".cont." in the name), and
# ALMA's ".mfs.".
KINDS = {"cube": "cube, full spectral resolution, one spw",
         "cont": "continuum over the source's spws",
         "mfs": "continuum (mfs) of one spw"}
VERDICTS = {"accept": "accept",
            "reject": "REJECT",
            "no-counterpart": "no QA2 counterpart (not compared)"}
# Provenance keys shown first, with their labels; any other key follows under its own name.
PROVENANCE = (("arihpc", "arihpc version"), ("casa", "CASA version"), ("site", "site"),
              ("date", "date"))
CAVEATS = (
    "ARI-L products are made automatically, for mining the archive. They are NOT science-ready: "
    "they were imaged with generic parameters, without the care a PI gives a science target.",
    "Check the QA before using any product: the ARIQA verdict above, the table in qa/ and the "
    "preview PNGs. Do not use a rejected product as a science image.",
    "arihpc never changes the ALMA delivery files beside this folder (calibration, product, "
    "qa, ...). MANIFEST.sha256 lists every file of this folder; check it with "
    "'sha256sum -c MANIFEST.sha256' from inside ari_l/.",
)


def product_kind(name: str) -> str:
    """``cube``, ``cont`` or ``mfs`` from an ALMA product name; ``unknown`` otherwise."""
    parts = Path(name).name.split(".")
    return next((kind for kind in ("cube", "cont", "mfs") if kind in parts), "unknown")


def _product(item: Path | str | Mapping) -> tuple[str, str]:
    """(file name, kind) of a product given as a path or as a products.json entry."""
    if isinstance(item, Mapping):
        name = Path(str(item.get("fits") or item.get("name") or item.get("product"))).name
        return name, str(item.get("kind") or product_kind(name))
    return Path(item).name, product_kind(str(item))


def _stem(name: str) -> str:
    return Path(str(name)).name.removesuffix(".fits")


def _verdict(row: Mapping) -> str:
    verdict = str(row.get("verdict", "")).strip() or "not assessed"
    shown = VERDICTS.get(verdict, verdict)
    reason = str(row.get("reason") or "").strip()
    return f"{shown}: {reason}" if reason else shown


def _provenance_lines(provenance: Mapping) -> list[str]:
    given = dict(provenance)
    given.setdefault("arihpc", arihpc.__version__)
    labels = dict(PROVENANCE)
    keys = [k for k, _ in PROVENANCE if k in given] + [k for k in given if k not in labels]
    lines = []
    for key in keys:
        value = given[key]
        if isinstance(value, Mapping):
            lines.append(f"  {labels.get(key, key)}:")
            lines += [f"    {k} = {v}" for k, v in value.items()]
        else:
            lines.append(f"  {labels.get(key, key)}: {value}")
    return lines


def readme_text(uid: str, products: Iterable[Path | str | Mapping],
                verdicts: Iterable[Mapping], provenance: Mapping) -> str:
    """The README.txt of one MOUS's ari_l folder.

    ``products``: paths or products.json entries (``fits``/``name``, ``kind``); ``verdicts``:
    ARIQA rows with at least ``product``, ``verdict`` (accept, reject, no-counterpart) and
    ``reason``; ``provenance``: arihpc and CASA versions, site, date, imaging parameters.
    """
    uid = parse_uid(uid)
    made = [_product(p) for p in products]
    rows = {_stem(row["product"]): row for row in verdicts}     # matched with or without .fits
    width = max([len(name) for name, _ in made] + [len("product")])
    out = [f"ARI-L products of MOUS {uid}", "=" * (len(uid) + 23), "",
           "Images re-made by arihpc from archived ALMA data (ARI-L).", "",
           f"What was made ({len(made)} product(s), in product/)", ""]
    out += [f"  {name:<{width}}  {KINDS.get(kind, kind)}" for name, kind in made] or ["  none"]
    out += ["", "How it was made", ""] + _provenance_lines(provenance)
    out += ["", "ARIQA verdicts (table in qa/)", ""]
    for name, _kind in made:
        out.append(f"  {name:<{width}}  {_verdict(rows.pop(_stem(name), {}))}")
    out += [f"  {row['product']:<{width}}  {_verdict(row)}" for row in rows.values()]
    out += ["", "Caveats", ""]
    for caveat in CAVEATS:
        out += textwrap.wrap(caveat, 78, initial_indent="- ", subsequent_indent="  ",
                             break_on_hyphens=False)
    out += ["", "Folders: product/ FITS images, qa/ ARIQA table and previews, log/ processing "
                "logs.", ""]
    return "\n".join(out)
