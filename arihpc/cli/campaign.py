"""The campaign commands of ``arihpc``: run, resume, retry, cancel, classify.

Part of the command-line layer (arihpc/cli/main.py registers them): they print.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from arihpc.campaign.outage import ride_out
from arihpc.cli.common import campaign_store, emit, output_option, quiet_dask, stop_on_signals
from arihpc.mous import parse_uid
from arihpc.sites import profile


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

    \b
    Claims MOUS exclusively (several sites may share one PostgreSQL store; run one
    `arihpc run` per site), submits them to the site's dask scheduler with their
    priority and predicted memory, keeps each node class's batch jobs topped up within
    max-jobs, and fetches the next MOUS ahead of compute on the site's I/O slots
    (storage.io-slots, within storage.staging-gb). A MOUS whose next stage does not
    fit before its job's deadline continues in a fresh job; failures follow the retry
    policy of their class (arihpc classify, arihpc.failures in the config).

    Ctrl-C or SIGTERM: no new submissions, running attempts are recorded, clean exit; the
    next run continues them from their checkpoints. After a kill -9 the next run cancels
    the dead run's batch jobs and resumes its MOUS from their checkpoints.

    On a terminal: a progress bar with an ETA (the planning model until a few MOUS are
    done, then the pace seen); otherwise one log line per change.
    """
    from arihpc.campaign.orchestrator import campaign_options, run_site

    quiet_dask()
    site_profile = profile.load_profile(site)
    if max_jobs:
        site_profile = dataclasses.replace(site_profile, max_jobs=max_jobs)
    store = ride_out(lambda: campaign_store(ctx), "opening the store",
                     limit_key="store-open-wait-s")
    stop = stop_on_signals()
    tally = run_site(store, site_profile, payload or site_profile.payload,
                     campaign_options(site_profile, json.loads(payload_options)), limit, stop,
                     progress(store))
    click.echo(f"{site}: {tally.done} done, {tally.failed} failed, {tally.retried} to retry, "
               f"{tally.resumed} resumed after a walltime or yield, {tally.recovered} recovered; "
               f"{ride_out(store.remaining, 'counting what is left')} MOUS left in the campaign"
               + (" (stopped)" if stop.is_set() else ""))


def duration(seconds: float) -> str:
    """3 min, 5.2 h, 41 d: the unit a person reads an ETA in."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(1, round(seconds / 60))} min"


def progress(store, width: int = 24):
    """A progress bar with counts and ETA on a terminal; plain log lines otherwise."""
    state = {"last": None}

    def show(tally) -> None:
        line = (f"done {tally.done}  failed {tally.failed}  retrying {tally.retried}  "
                f"resumed {tally.resumed}")
        if sys.stderr.isatty():
            left = ride_out(store.remaining, "counting what is left") if tally.left is None \
                else tally.left
            total = tally.done + tally.failed + left
            filled = round(width * (tally.done + tally.failed) / total) if total else width
            eta = (f"  ETA {duration(tally.eta_s)} ({tally.eta_basis})"
                   if tally.eta_s is not None and left else "")
            click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}  left {left}{eta}   ",
                       nl=False, err=True)
        elif line != state["last"]:
            click.echo(f"arihpc: {line}", err=True)
        state["last"] = line
    return show


@click.command("resume")
@click.argument("uids", nargs=-1)
@click.pass_context
def resume_command(ctx: click.Context, uids: tuple[str, ...]) -> None:
    """Give interrupted, waiting or cancelled MOUS (all, or UIDs) back to the queue."""
    chosen = [parse_uid(u) for u in uids] or None
    count = campaign_store(ctx).set_state(chosen, "new", ("waiting", "cancelled", "queued"))
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
    count = campaign_store(ctx).set_state(chosen, "new", ("failed",), error_class)
    click.echo(f"{count} failed MOUS back in the queue")


@click.command("cancel")
@click.argument("uids", nargs=-1, required=True)
@click.pass_context
def cancel_command(ctx: click.Context, uids: tuple[str, ...]) -> None:
    """Take MOUS out of the campaign (not claimed again until resumed)."""
    count = campaign_store(ctx).set_state([parse_uid(u) for u in uids], "cancelled",
                                           ("new", "waiting", "queued", "failed"))
    click.echo(f"{count} MOUS cancelled")


@click.command("classify")
@click.argument("logfile", type=click.Path(exists=True, dir_okay=False))
@output_option
def classify_command(logfile: str, output: str) -> None:
    """The failure class of a stage or job log and the line that decided it ('none': no
    failure). Rules: arihpc.failures in arihpc.yaml (or --config)."""
    from arihpc.runner.failures import classify

    with open(logfile, errors="replace") as f:
        found = classify(f)
    row = {"class": found.name or "none", "line": found.line}
    if output == "json":
        click.echo(json.dumps(row))
    else:
        emit([row], ("class", "line"), output)


COMMANDS = [run_command, resume_command, retry_command, cancel_command, classify_command]
