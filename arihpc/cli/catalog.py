"""The catalog commands of ``arihpc``: catalog import|list|export, select, queue.

Part of the command-line layer (arihpc/cli/main.py registers them): they print.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import click

from arihpc.catalog import formats as catalog
from arihpc.catalog import ordering, selection
from arihpc.cli.common import Progress, emit, open_store, output_option
from arihpc.errors import CatalogError
from arihpc.mous import MousRecord, cycle_of, parse_uid
from arihpc.store.schema import store_url


def _listed(values) -> list | None:
    return None if values is None else sorted(values)


@click.group("catalog")
def catalog_group() -> None:
    """Import, list and export what the ALMA archive says about each MOUS."""


_FORMAT_HELP = "\n".join(f"  {f.name:<16} {f.description}" for f in catalog.FORMATS.values())


@catalog_group.command("import", help=f"""Merge archive exports into the store, one record per MOUS.

Rows of one MOUS merge; a later import fills what is unknown and never blanks a known
value. Bad rows and bad files are reported with file, line and field; everything else is
imported, and the exit status is 1.

\b
Formats (detected from the content; --format overrides):
{_FORMAT_HELP}
""")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(sorted(catalog.FORMATS)),
              help="Catalog format of every FILE (default: detected from each file's content).")
@click.pass_context
def catalog_import(ctx: click.Context, files: tuple[str, ...], fmt: str | None) -> None:
    store = open_store(ctx)
    reads, bad = [], 0
    for name in files:
        try:
            with Progress(f"reading {name}", "rows") as shown:
                read = catalog.read_catalog(name, fmt, shown)
        except CatalogError as e:
            click.echo(f"arihpc: error: {e} (file not imported)", err=True)
            bad += 1
            continue
        for error in read.errors:
            click.echo(f"arihpc: error: {error} (row not imported)", err=True)
        bad += len(read.errors)
        reads.append(read)
        click.echo(f"{name}: {read.format}, {len(read.records)} MOUS"
                   + (f", {len(read.errors)} bad row(s)" if read.errors else ""))
    with Progress("writing the store", "rows") as shown:
        summary = store.import_catalogs(reads, shown)
    click.echo(f"store {store_url(ctx.find_root().obj['store'])}: {summary.inserted} new, "
               f"{summary.updated} updated, {summary.unchanged} unchanged MOUS")
    if bad:
        click.echo(f"arihpc: {bad} problem(s) above; everything else was imported", err=True)
        ctx.exit(1)


RECORD_COLUMNS = ("uid", "project", "cycle", "qa2", "antennas", "arrays", "bands", "full_pol",
                  "total_power", "targets", "size_bytes", "pipeline_imaged")


def _record_row(record: MousRecord) -> dict:
    return {"uid": record.uid, "project": record.project, "cycle": cycle_of(record.project),
            "qa2": record.qa2, "antennas": record.antennas, "arrays": _listed(record.arrays),
            "bands": _listed(record.bands), "full_pol": record.full_pol,
            "total_power": record.total_power, "targets": _listed(record.targets),
            "size_bytes": record.size_bytes, "pipeline_imaged": record.pipeline_imaged}


@catalog_group.command("list")
@output_option
@click.pass_context
def catalog_list(ctx: click.Context, output: str) -> None:
    """Every MOUS in the store with its archive metadata ('-' or null: unknown)."""
    emit([_record_row(r) for r in open_store(ctx).records()], RECORD_COLUMNS, output)


@catalog_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def catalog_export(ctx: click.Context, file: str) -> None:
    """Write the store's catalog as arihpc CSV (FILE, or - for stdout); import reads it back."""
    records = open_store(ctx).records()
    if file == "-":
        catalog.write_csv(records, sys.stdout)
        return
    target = Path(file)
    # Write beside the target and rename: an interrupted export never leaves half a file.
    with tempfile.NamedTemporaryFile("w", dir=target.parent or ".", prefix=f".{target.name}.",
                                     delete=False, encoding="utf-8", newline="") as tmp:
        count = catalog.write_csv(records, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, target)
    click.echo(f"{file}: {count} MOUS")


@click.command("select")
@click.option("--explain", "explain_uid", metavar="UID",
              help="Show the path of one MOUS through the decision tree (changes nothing).")
@output_option
@click.pass_context
def select_command(ctx: click.Context, explain_uid: str | None, output: str) -> None:
    """Apply the ARI-L rules to every MOUS and record the decisions and priorities.

    Selected MOUS get a tier (1: QA2 PASS, 2: SEMIPASS); excluded ones get every reason
    that applies: cycle, qa2-fail, qa2-unknown, antennas, antennas-unknown, solar, full-pol,
    total-power, vlbi, already-imaged. Thresholds: arihpc.selection in arihpc.yaml or --config.
    """
    store = open_store(ctx)
    rules = selection.Rules.from_config()
    if explain_uid:
        uid = parse_uid(explain_uid)
        record = store.record(uid)
        if record is None:
            raise click.ClickException(f"{uid} is not in the store (arihpc catalog import ...)")
        click.echo(f"{uid}  project {record.project or 'unknown'}")
        for line in selection.explain(record, rules):
            click.echo(line)
        return
    records = {r.uid: r for r in store.records()}
    if not records:
        raise click.ClickException("no MOUS in the store yet: arihpc catalog import FILE...")
    verdicts = selection.select(records.values(), rules)
    store.save_decisions(verdicts, ordering.priorities(verdicts, records))
    emit([{"uid": v.uid, "selected": v.selected, "tier": v.tier, "reasons": list(v.reasons),
           "flags": list(v.flags)} for v in verdicts],
         ("uid", "selected", "tier", "reasons", "flags"), output)
    _summary(verdicts)


def _summary(verdicts: Iterable[selection.Verdict]) -> None:
    verdicts = list(verdicts)
    tiers: dict[int, int] = {}
    for v in verdicts:
        if v.selected:
            tiers[v.tier] = tiers.get(v.tier, 0) + 1
    chosen = sum(tiers.values())
    by_tier = ", ".join(f"tier {t}: {n}" for t, n in sorted(tiers.items()))
    click.echo(f"{len(verdicts)} MOUS: {chosen} selected ({by_tier or 'none'}), "
               f"{len(verdicts) - chosen} excluded", err=True)


@click.command("queue")
@output_option
@click.pass_context
def queue_command(ctx: click.Context, output: str) -> None:
    """The selected MOUS in the order the campaign runs them (as of the last select)."""
    store = open_store(ctx)
    stale = store.undecided()
    if stale:
        click.echo(f"arihpc: warning: {stale} MOUS imported or changed since the last "
                   "select: run 'arihpc select' to decide them", err=True)
    decisions = store.decisions(selected_only=True)
    records = {r.uid: r for r in store.records()}
    rows = [{"uid": d.uid, "rank": rank, "cycle": cycle_of(records[d.uid].project),
             "qa2": records[d.uid].qa2, "size_bytes": records[d.uid].size_bytes, "tier": d.tier}
            for rank, d in enumerate(decisions, 1)]
    emit(rows, ("uid", "rank", "cycle", "qa2", "size_bytes", "tier"), output)


COMMANDS = [catalog_group, select_command, queue_command]
