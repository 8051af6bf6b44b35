"""``arihpc demo``: a whole small campaign on this machine, told as it goes (arihpc/demo/).

Part of the command-line layer (arihpc/cli/main.py registers it): it prints.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import click

from arihpc.cli.campaign import progress
from arihpc.cli.common import quiet_dask, stop_on_signals
from arihpc.demo import archive as demo_data
from arihpc.demo import campaign as demos
from arihpc.store.campaign import CampaignStore


@click.command("demo")
@click.option("--dir", "directory", default=demos.DEFAULT_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo keeps everything; a second run reuses it.")
@click.option("--mous", "count", type=click.IntRange(1, 120),
              help="MOUS in the generated archive export (default 12, half of them selected; "
                   "on a later run: what DIR was made with).")
@click.option("--payload", type=click.Choice(["casa", "emulator"]),
              help="casa: real CASA (the default when it is installed); emulator: stand-in "
                   "stages without images (the default without CASA).")
@click.pass_context
def demo_command(ctx: click.Context, directory: Path, count: int | None,
                 payload: str | None) -> None:
    """Run a whole small campaign on this machine, from archive export to FITS products.

    \b
    In DIR (created) it:
    - writes an ALMA Archive Query TSV export of --mous invented MOUS, imports it
      into an SQLite store (DIR/arihpc.db) and applies the ARI-L selection, showing
      each excluded MOUS with its reasons;
    - makes the raw data of the selected MOUS: real measurement sets from CASA
      simobserve when CASA is installed, else random bytes for the emulator payload,
      and imports their sizes from a DataLink VOTable, like the archive's;
    - serves them over HTTP on 127.0.0.1 and runs the campaign on the local site
      (DIR/local.yaml, two MOUS at a time): fetch, restore, keep-ms, image,
      export, then qa, preview, moments, package each MOUS with CASA (there is no
      archived QA2 delivery here, so the ARIQA verdicts read not-assessed), or
      fetch, restore, image, export with the emulator;
    - prints what was made and where (FITS under DIR/work/UID/export/, the ARI-L
      tar under DIR/work/UID/package/).

    Run it again: everything is found done and nothing runs. The store is always
    DIR/arihpc.db (--store is not used); --config applies (selection rules, order).
    """
    started = time.time()
    quiet_dask()
    # Ctrl-C is a KeyboardInterrupt until the campaign starts (dask-jobqueue, imported by
    # arihpc.sites, makes it a silent exit with status 0).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    demo = demos.prepare(directory, count, payload)
    if ctx.find_root().obj.get("store"):
        click.echo(f"arihpc: note: the demo's store is {demo.store_url}; --store (or "
                   "$ARIHPC_STORE) is not used", err=True)
    click.echo(f"arihpc demo in {demo.directory}")
    click.echo(f"payload {demo.payload}: {demo.why}")
    with contextlib.closing(CampaignStore.open(demo.store_url)) as store:
        try:
            selected = _demo_select(demo, store)
            _demo_archive(demo, store, selected)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: run arihpc demo again to continue", err=True)
            ctx.exit(130)
        stopped = _demo_run(demo, store) if store.remaining() else _nothing_to_do(store)
        failed = _demo_summary(demo, store, time.time() - started)
    if stopped or failed:
        ctx.exit(1)


def _demo_select(demo, store) -> list:
    """Import the demo's archive export, decide, show every MOUS; the selected rows."""
    imported, verdicts = demos.import_and_select(store, demo.export, "aq-tsv")
    click.echo(f"archive export {demo.export}: {len(demo.rows)} MOUS; store {demo.store_url}: "
               f"{imported.inserted} new, {imported.updated} updated, "
               f"{imported.unchanged} unchanged")
    decided = {v.uid: v for v in verdicts}
    for row in demo.rows:
        verdict = decided[row.uid]
        what = (f"selected, tier {verdict.tier}" if verdict.selected
                else "excluded: " + ", ".join(verdict.reasons))
        click.echo(f"  {row.uid:<21} {row.project}  {row.qa2:<8} {row.array:<3} band "
                   f"{row.band}  {row.source:<14} {what}")
    chosen = [row for row in demo.rows if decided[row.uid].selected]
    click.echo(f"selection (ARI-L rules): {len(chosen)} selected, "
               f"{len(demo.rows) - len(chosen)} excluded")
    if any("antennas-unknown" in decided[row.uid].flags for row in chosen):
        click.echo("  (an archive TSV gives no antenna count: the selected MOUS are flagged "
                   "antennas-unknown and kept)")
    return chosen


def _demo_archive(demo, store, selected: list) -> None:
    """The raw data of the selected MOUS (reused when present), then their sizes."""
    todo = demo_data.missing_raw(demo.archive, selected)
    if todo:
        how = "CASA simobserve" if demo.payload == "casa" else "random bytes for the emulator"
        reused = len(selected) - len(todo)
        click.echo(f"archive {demo.archive}: making the raw data of {len(todo)} MOUS with "
                   f"{how}, {demo_data.BUILD_JOBS} at a time"
                   + (f" ({reused} already there)" if reused else ""))
        demo_data.build_archive(demo.archive, todo, demo.payload == "casa",
                                lambda row: click.echo(f"  made {row.uid} ({row.source})"))
    else:
        click.echo(f"archive {demo.archive}: the raw data of all {len(selected)} selected MOUS "
                   "are there already (reused)")
    listed = demo_data.write_datalink(demo.datalink, demo.archive, selected)
    imported, _ = demos.import_and_select(store, demo.datalink, "datalink")
    click.echo(f"archive DataLink {demo.datalink}: raw sizes of {listed} MOUS; store: "
               f"{imported.updated} updated, {imported.unchanged} unchanged")


def _demo_run(demo, store) -> bool:
    """Serve the archive and run the campaign on the local site; True if stopped."""
    from arihpc.campaign.orchestrator import campaign_options, run_site

    with demo_data.serve(demo.archive) as url:
        site = demos.write_profile(demo, url)
        click.echo(f"campaign: {store.remaining()} MOUS on the local site ({site.path}), "
                   f"{demos.SLOTS} at a time; archive served at {url}")
        stop = stop_on_signals()
        tally = run_site(store, site, demo.payload, campaign_options(site), None, stop,
                         progress(store))
    if sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(f"campaign: {tally.done} done, {tally.failed} failed, {tally.retried} retried"
               + ("; stopped: run arihpc demo again to continue" if stop.is_set() else ""))
    return stop.is_set()


def _nothing_to_do(store) -> bool:
    states = [state for state, _ in store.states().values()]
    failed = states.count("failed")
    click.echo(f"nothing to do: {states.count('done')} MOUS already done"
               + (f", {failed} failed" if failed else ""))
    return False


def _demo_summary(demo, store, elapsed_s: float) -> int:
    """What was made and where; returns how many MOUS failed."""
    results = demos.results(demo, store)
    done = sum(r.state == "done" for r in results)
    failed = sum(r.state == "failed" for r in results)
    click.echo(f"\nsummary: {done} of {len(results)} selected MOUS done, {failed} failed "
               f"(payload {demo.payload}, {elapsed_s:.0f} s)")
    for r in results:
        if r.state == "done":
            size = _human(sum(n for _, n in r.products))
            what = f"done, {len(r.products)} product(s), {size}, in {r.workdir / 'export'}"
            tars = sorted((r.workdir / "package").glob("*.ari_l.tar"))
            what += f"; ARI-L tar {tars[0]}" if tars else ""
        elif r.state == "failed":
            what = f"failed ({r.error_class}): logs in {r.workdir / 'log'}"
        else:
            what = f"{r.state}, not finished: run arihpc demo again to continue"
        click.echo(f"  {r.row.uid}  {r.row.source}: {what}")
        for name, size in r.products:
            click.echo(f"      {name}  {_human(size)}")
        _by_products(r.workdir)
    click.echo(f"work directories: {demo.work}; site profile: {demo.profile}; calibrated MS: "
               f"arihpc ms list --site {demo.profile}")
    click.echo(f"look further: arihpc --store {demo.store_url} status  "
               "(or queue, catalog list, select --explain UID)")
    return failed


def _by_products(workdir: Path) -> None:
    """The lines found, the calibrated MS kept and the weblog of one MOUS, where made."""
    for listing in sorted((workdir / "moments").glob("*.lines.ecsv")):
        comment = next((ln for ln in listing.read_text().splitlines() if "comment:" in ln), "")
        click.echo(f"      {listing.name}: {comment.split('comment:')[-1].strip(' }')}")
    kept = workdir / "keep-ms" / "kept.json"
    if kept.is_file():
        record = json.loads(kept.read_text())
        click.echo(f"      calibrated MS kept: {record['tar']} (sha256 {record['sha256'][:12]}..., "
                   f"until {record['retain_until']})")
    weblog = workdir / "weblog" / "index.html"
    if weblog.is_file():
        click.echo(f"      weblog: {weblog}")


def _human(size: float) -> str:
    """A size in bytes as people read it: 253.4 kB."""
    if size < 1000:
        return f"{size:.0f} bytes"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000:
            break
    return f"{size:.1f} {unit}"


COMMANDS = [demo_command]
