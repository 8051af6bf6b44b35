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
import time
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


class Progress:
    """The progress of one long phase on stderr, fed by a ``progress(done, total)`` callback.

    On a terminal: click's bar with counts, percentage and ETA, redrawn in place. Off a
    terminal (a pipe, CI, a log file): a plain line for each further tenth done, at most one
    every ``gap_s`` seconds (one at least every ``every_s``), and one when the phase ends.
    A phase of fewer than ``at_least`` steps shows nothing: a bar for a few rows is noise.
    Use it as a context manager; stdout is never touched.
    """

    def __init__(self, label: str, unit: str, at_least: int = 1000, gap_s: float = 2.0,
                 every_s: float = 30.0) -> None:
        self.label, self.unit, self.at_least = label, unit, at_least
        self.gap_s, self.every_s = gap_s, every_s
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.done, self.total = 0, 0
        self.start = self.last_line = time.monotonic()
        self.first: tuple[float, int] | None = None     # when and where the counting began
        self.tenths = 0
        self.shown = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, *_) -> None:
        if self.bar is not None:
            self.bar.render_finish()        # the bar's own line ends; the cursor comes back
        elif self.shown and kind is None:
            click.echo(f"arihpc: {self.label}: {self.done:,} {self.unit} in "
                       f"{_seconds(time.monotonic() - self.start)}", err=True)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        self.total = max(done, self.total if total is None else total)
        self.first = self.first or (time.monotonic(), done)
        if not self.shown and self.total < max(1, self.at_least):
            return
        self.shown = True
        if self.tty:
            self._draw()
        else:
            self._line()

    def _draw(self) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=self.total, label=f"{self.label} ({self.unit})",
                                         file=sys.stderr, show_pos=True, show_percent=True,
                                         show_eta=True, width=24)
        self.bar.length = self.total
        self.bar.update(self.done - self.bar.pos)

    def _line(self) -> None:
        now = time.monotonic()
        tenths, since = 10 * self.done // max(self.total, 1), now - self.last_line
        due = (tenths > self.tenths and since >= self.gap_s) or since >= self.every_s
        if not due or self.done >= self.total:         # the end has a line of its own
            return
        began, counted = self.first or (self.start, 0)
        left = (now - began) / (self.done - counted) * (self.total - self.done) \
            if self.done > counted else None
        click.echo(f"arihpc: {self.label}: {self.done:,} of {self.total:,} {self.unit} "
                   f"({100 * self.done // max(self.total, 1)}%)"
                   + (f", about {_seconds(left)} left" if left is not None else ""), err=True)
        self.tenths, self.last_line = tenths, now


def _seconds(seconds: float) -> str:
    """0.4 s, 12 s, 3.5 min, 1.2 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
