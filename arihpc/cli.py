"""The ``arihpc`` command. The only module that prints."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import click
import yaml

from arihpc import (
    __version__,
    catalog,
    cli_campaign,
    cli_monitor,
    cli_plan,
    config,
    ordering,
    selection,
)
from arihpc.errors import ArihpcError, CatalogError, ProfileError
from arihpc.mous import MousRecord, cycle_of, parse_uid
from arihpc.sites import cluster, profile
from arihpc.store import Store, store_url

OUTPUT_FORMATS = ("table", "json", "csv")
output_option = click.option("--format", "output", type=click.Choice(OUTPUT_FORMATS),
                             default="table", show_default=True, help="Output format.")


class ArihpcGroup(click.Group):
    """Turn arihpc's own errors into one clear line and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArihpcError as e:
            error = click.ClickException(str(e))
            if isinstance(e, ProfileError):
                error.exit_code = 2         # a bad profile is bad usage: nothing was submitted
            raise error from e


@click.group(cls=ArihpcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="arihpc")
@click.option("--store", "store", metavar="URL", envvar="ARIHPC_STORE",
              help="Campaign store: an SQLite file path or URL (default ./arihpc.db), or "
                   "postgresql://user@host/db for a store shared by several sites. "
                   "Also $ARIHPC_STORE.")
@click.option("--config", "config_file", metavar="FILE", envvar="ARIHPC_CONFIG",
              type=click.Path(dir_okay=False),
              help="Campaign config file overriding arihpc/arihpc.yaml (thresholds, order). "
                   "Also $ARIHPC_CONFIG.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def main(ctx: click.Context, store: str | None, config_file: str | None, verbose: bool) -> None:
    """arihpc: re-image archived ALMA MOUS (ARI-L) on HPC clusters.

    \b
    A campaign starts from archive exports:
      arihpc catalog import survey.tsv obscore.xml datalink.xml
      arihpc select            # apply the ARI-L rules, record the decisions
      arihpc queue             # the selected MOUS in the order they will run
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="arihpc: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        ctx.with_resource(config.campaign_config(config_file))
    except ArihpcError as e:
        raise click.ClickException(str(e)) from e
    ctx.obj = {"store": store}


def open_store(ctx: click.Context) -> Store:
    """The campaign store named by --store, closed when the command ends."""
    store = Store.open(ctx.find_root().obj["store"])
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


# --- catalog ---

@main.group("catalog")
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
            read = catalog.read_catalog(name, fmt)
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
    summary = store.import_catalogs(reads)
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


# --- selection and queue ---

@main.command("select")
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


@main.command("queue")
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


# --- sites ---

@main.group("sites")
def sites_group() -> None:
    """Site profiles: the batch system, nodes, limits and storage of each site."""


@sites_group.command("list")
@output_option
def sites_list(output: str) -> None:
    """The site profiles found by name (site-configs/, ~/.config/arihpc/sites/)."""
    rows = []
    for name, path in sorted(profile.available_profiles().items()):
        try:
            site = profile.load_profile(str(path))
            summary = {"batch_system": site.batch_system, "walltime": site.walltime,
                       "node_classes": [c.name for c in site.node_classes], "problem": None}
        except ArihpcError as e:
            summary = {"batch_system": None, "walltime": None, "node_classes": [],
                       "problem": str(e)}
        rows.append({"site": name, **summary, "path": str(path)})
    emit(rows, ("site", "batch_system", "walltime", "node_classes", "problem", "path"), output)


@sites_group.command("check")
@click.argument("site")
def sites_check(site: str) -> None:
    """Validate a profile (by name or path) and print it resolved, defaults filled in."""
    resolved = dataclasses.asdict(profile.load_profile(site))
    click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    click.echo(f"# {site}: profile is valid", err=True)


@sites_group.command("script")
@click.argument("site")
@click.option("--node-class", "node_class", metavar="NAME",
              help="Node class whose job to show (default: the first).")
def sites_script(site: str, node_class: str | None) -> None:
    """Print the batch job script of a site, without submitting anything."""
    click.echo(cluster.job_script(profile.load_profile(site), node_class).rstrip())


@sites_group.command("up")
@click.argument("site")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch jobs to submit (never more than the site's max-jobs).")
@click.option("--node-class", "node_class", metavar="NAME",
              help="Node class of every job (default: the jobs go round the site's classes).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the workers to join.")
@output_option
def sites_up(site: str, jobs: int, node_class: str | None, timeout: float, output: str) -> None:
    """Submit jobs, wait for their workers, probe each one, then release them all.

    The probe shows each worker's host, batch job id, DISPLAY (set by xvfb-run), deadline
    and advertised resources: proof that the site profile works before a campaign starts.
    """
    from distributed import Client

    from arihpc.jobs.probe import probe

    site_profile = profile.load_profile(site)
    classes = [node_class] if node_class else [c.name for c in site_profile.node_classes]
    with cluster.SiteCluster.start(site_profile) as site_cluster:
        submitted = sum(site_cluster.add_jobs(1, classes[i % len(classes)]) for i in range(jobs))
        if submitted < jobs:
            click.echo(f"arihpc: warning: {site} allows {site_profile.max_jobs} jobs at once; "
                       f"submitted {submitted}", err=True)
        click.echo(f"{site}: submitted {submitted} job(s); waiting up to {timeout:g} s", err=True)
        with Client(site_cluster.cluster) as client:
            try:
                client.wait_for_workers(submitted, timeout=timeout)
            except TimeoutError:
                joined = len(client.scheduler_info()["workers"])
                raise click.ClickException(
                    f"only {joined} of {submitted} workers joined within {timeout:g} s; "
                    "every job is being cancelled") from None
            reports = sorted(client.run(probe).values(), key=lambda r: r["worker"])
    emit([{**r, "resources": [f"{k}={v:g}" for k, v in sorted(r["resources"].items())]}
          for r in reports],
         ("worker", "host", "node_class", "batch_job", "display", "job_start", "deadline",
          "left_s", "resources"), output)


@main.command("classify")
@click.argument("logfile", type=click.Path(exists=True, dir_okay=False))
@output_option
def classify_command(logfile: str, output: str) -> None:
    """The failure class of a stage or job log and the line that decided it ('none': no
    failure). Rules: arihpc.failures in arihpc.yaml (or --config)."""
    from arihpc.jobs.failures import classify

    with open(logfile, errors="replace") as f:
        found = classify(f)
    row = {"class": found.name or "none", "line": found.line}
    if output == "json":
        click.echo(json.dumps(row))
    else:
        emit([row], ("class", "line"), output)


# The campaign commands (run, resume, retry, cancel, demo) live in cli_campaign; the
# read-only views (status, dashboard, report) in cli_monitor.
for _command in cli_campaign.COMMANDS + cli_monitor.COMMANDS + cli_plan.COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
