"""``arihpc export``: the store's accounting as a Parquet or CSV file, for pandas, Spark or a
spreadsheet (the tables of arihpc/monitor/tables.py, written by arihpc/monitor/exports.py).

Part of the command-line layer (arihpc/cli/main.py registers it): it prints.
"""

from __future__ import annotations

from pathlib import Path

import click

# The tables of arihpc.monitor.tables.TABLES, named here so that every arihpc command starts
# without importing pandas (tests/test_export.py checks that the two lists agree).
TABLE_NAMES = ("attempts", "stages", "mous", "queue")
FORMATS = ("parquet", "csv")


@click.command("export")
@click.argument("table", metavar="TABLE", type=click.Choice(TABLE_NAMES))
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="File format (default: from FILE's suffix: .parquet or .pq, .csv or .csv.gz).")
@click.pass_context
def export_command(ctx: click.Context, table: str, path: Path, fmt: str | None) -> None:
    """Write one table of the campaign store to FILE, for analysis.

    \b
    TABLE is one of:
      attempts  one row per attempt: uid, site, node class, batch job, worker,
                start, end, wall (s), CPU of the stages it completed (s), peak RSS
                (bytes), memory asked (GB), outcome, failure class, raw size
      stages    one row per stage run: uid, stage, site, node class, batch job,
                start, end, wall, CPU, peak RSS, its attempt's outcome and failure
                class, the MOUS's raw size and state
      mous      one row per MOUS: uid, project, cycle, QA2, raw size, the selection
                as stored (selected, tier, priority, reasons, flags), state, site,
                failure class, attempts, and its stage runs' wall, CPU and peak RSS
      queue     the selected MOUS not yet done, in claim order: priority, raw size,
                state, site, next stage, not before (a retry waits until then)

    \b
    Parquet (pyarrow) keeps the types: times are UTC timestamps, sizes in bytes,
    durations in seconds. CSV has the same columns, times in ISO 8601 (+00:00).
    node_class is empty where the store does not say (it records a worker's address,
    not the name that carries its class). The whole table is read into memory: fine
    up to a few million rows. The file is written whole, then renamed into place.
    The stages and mous files are what `arihpc plan --history` fits run times to.
    Examples:
      arihpc export stages runs.parquet
      arihpc --store postgresql://host/ari export attempts --format csv attempts.csv
      arihpc plan --sites eso --store URL --history runs.parquet
    """
    from arihpc.monitor import exports, tables

    fmt = fmt or exports.format_of(path)
    if fmt is None:
        raise click.UsageError(f"cannot tell the format from the name {path.name}: give "
                               "--format parquet or --format csv")
    with tables.open_campaign(ctx.find_root().obj["store"]) as campaign:
        frame = campaign.table(table)
    exports.write_table(frame, path, fmt)
    click.echo(f"export: {table}, {len(frame):,} rows, {fmt}: {path}")


COMMANDS = [export_command]
