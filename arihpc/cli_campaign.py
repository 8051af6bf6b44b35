"""The campaign commands of ``arihpc``: run, status, resume, retry, cancel.

Part of the command-line layer (with arihpc/cli.py, which registers them): they print.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time

import click

from arihpc.mous import parse_uid
from arihpc.sites import profile


def _campaign_store(ctx: click.Context):
    from arihpc.store_campaign import CampaignStore

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


@click.command("run")
@click.option("--site", required=True, help="Site profile (name or path) to keep busy.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Override the site's job limit.")
@click.option("--limit", type=click.IntRange(min=1), help="Claim at most K MOUS in this run.")
@click.option("--payload", type=click.Choice(["casa", "emulator"]),
              help="Override the profile's payload (emulator: tests and benchmarks only).")
@click.option("--payload-options", default="{}", metavar="JSON",
              help="Payload options, e.g. the emulator's failure plan.")
@click.pass_context
def run_command(ctx: click.Context, site: str, max_jobs: int | None, limit: int | None,
                payload: str | None, payload_options: str) -> None:
    """Keep a site busy with selected MOUS, in priority order, until the campaign is done.

    Ctrl-C or SIGTERM: no new submissions, running attempts are recorded, clean exit; the
    next run continues them from their checkpoints (so does it after a kill -9).
    """
    from arihpc.campaign import campaign_options, run_site

    quiet_dask()
    site_profile = profile.load_profile(site)
    if max_jobs:
        site_profile = dataclasses.replace(site_profile, max_jobs=max_jobs)
    store = _campaign_store(ctx)
    stop = stop_on_signals()
    tally = run_site(store, site_profile, payload or site_profile.payload,
                     campaign_options(site_profile, json.loads(payload_options)), limit, stop,
                     progress(store))
    click.echo(f"{site}: {tally.done} done, {tally.failed} failed, {tally.retried} to retry, "
               f"{tally.resumed} resumed after a walltime or yield, {tally.recovered} recovered; "
               f"{store.remaining()} MOUS left in the campaign"
               + (" (stopped)" if stop.is_set() else ""))


def progress(store):
    """A one-line progress display on a terminal; plain log lines otherwise."""
    state = {"last": None}

    def show(tally) -> None:
        line = (f"done {tally.done}  failed {tally.failed}  retrying {tally.retried}  "
                f"resumed {tally.resumed}")
        if sys.stderr.isatty():
            elapsed = time.time() - tally.started
            left = store.remaining()
            eta = f"  ETA {elapsed / tally.done * left / 60:.0f} min" if tally.done else ""
            click.echo(f"\r{line}  left {left}{eta}   ", nl=False, err=True)
        elif line != state["last"]:
            click.echo(f"arihpc: {line}", err=True)
        state["last"] = line
    return show


@click.command("status")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def status_command(ctx: click.Context, output: str) -> None:
    """Counts by state, site and failure class, and the MOUS running now."""
    report = _campaign_store(ctx).status()
    if output == "json":
        click.echo(json.dumps(report, indent=1, sort_keys=True))
        return
    for title in ("states", "sites", "failure_classes"):
        click.echo(f"{title.replace('_', ' ')}: " + (", ".join(
            f"{k} {v}" for k, v in sorted(report[title].items())) or "none"))
    click.echo(f"excluded: {report['excluded']}")
    for item in report["running"]:
        click.echo(f"running: {item['uid']} at {item['site']}, next stage "
                   f"{item['stage'] or 'first'}")


@click.command("resume")
@click.argument("uids", nargs=-1)
@click.pass_context
def resume_command(ctx: click.Context, uids: tuple[str, ...]) -> None:
    """Give interrupted, waiting or cancelled MOUS (all, or UIDs) back to the queue."""
    chosen = [parse_uid(u) for u in uids] or None
    count = _campaign_store(ctx).set_state(chosen, "new", ("waiting", "cancelled", "queued"))
    click.echo(f"{count} MOUS back in the queue")


@click.command("retry")
@click.option("--class", "error_class", help="Retry every failed MOUS of this failure class.")
@click.option("--uid", "uids", multiple=True, help="Retry this failed MOUS.")
@click.pass_context
def retry_command(ctx: click.Context, error_class: str | None, uids: tuple[str, ...]) -> None:
    """Put failed MOUS back in the queue (by failure class or uid)."""
    if not error_class and not uids:
        raise click.UsageError("give --class CLASS or --uid UID")
    chosen = [parse_uid(u) for u in uids] or None
    count = _campaign_store(ctx).set_state(chosen, "new", ("failed",), error_class)
    click.echo(f"{count} failed MOUS back in the queue")


@click.command("cancel")
@click.argument("uids", nargs=-1, required=True)
@click.pass_context
def cancel_command(ctx: click.Context, uids: tuple[str, ...]) -> None:
    """Take MOUS out of the campaign (not claimed again until resumed)."""
    count = _campaign_store(ctx).set_state([parse_uid(u) for u in uids], "cancelled",
                                           ("new", "waiting", "queued", "failed"))
    click.echo(f"{count} MOUS cancelled")


COMMANDS = [run_command, status_command, resume_command, retry_command, cancel_command]
