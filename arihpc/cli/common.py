"""What every command module of the CLI shares: the output formats and the store of --store.

Part of the command-line layer: it prints.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Sequence

import click

from arihpc.store.campaign import CampaignStore
from arihpc.store.catalog import CatalogStore

OUTPUT_FORMATS = ("table", "json", "csv")
output_option = click.option("--format", "output", type=click.Choice(OUTPUT_FORMATS),
                             default="table", show_default=True, help="Output format.")


def open_store(ctx: click.Context) -> CatalogStore:
    """The store named by --store (its catalog side), closed when the command ends."""
    store = CatalogStore.open(ctx.find_root().obj["store"])
    ctx.call_on_close(store.close)
    return store


def emit(rows: Sequence[dict], columns: Sequence[str], output: str) -> None:
    """Print rows as an aligned table, JSON (a list of objects) or CSV."""
    if output == "json":
        click.echo(json.dumps([{c: r[c] for c in columns} for r in rows], indent=1))
        return
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for line in [list(columns)] + cells:
        click.echo("  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _listed(values) -> list | None:
    return None if values is None else sorted(values)


def campaign_store(ctx: click.Context) -> CampaignStore:
    """The store named by --store with the campaign's progress, closed when the command ends."""
    store = CampaignStore.open(ctx.find_root().obj["store"])
    ctx.call_on_close(store.close)
    return store


def quiet_dask() -> None:
    """dask's INFO lines (in this process and in local workers) only with -v."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED",
                          "info" if logging.getLogger().level <= logging.INFO else "warning")
    logging.getLogger("distributed").setLevel(logging.getLogger().level)


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM: the orchestrator stops submitting and exits."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop
