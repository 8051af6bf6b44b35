"""The read-only views of ``arihpc``: status, dashboard, report (see arihpc/monitor/).

Part of the command-line layer (with arihpc/cli/main.py, which registers them): they print.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from arihpc.cli.common import campaign_store, stop_on_signals
from arihpc.sites import profile

site_option = click.option(
    "--site", "sites", multiple=True, metavar="SITE",
    help="A site profile (name or path) to read the batch queue of; repeat for more. Sites "
         "the store names are found by name in site-configs/ and ~/.config/arihpc/sites/.")


def _given(sites: tuple[str, ...]) -> dict:
    """The --site profiles by name."""
    return {p.name: p for p in (profile.load_profile(site) for site in sites)}


def _profiles(store, sites: tuple[str, ...]) -> dict:
    from arihpc.monitor import views

    return views.profiles_for(store, _given(sites))


@click.command("status")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@site_option
@click.pass_context
def status_command(ctx: click.Context, output: str, sites: tuple[str, ...]) -> None:
    """Counts by state, site and failure class, the MOUS running now, and per site its batch
    jobs, workers and memory in use (the numbers of arihpc dashboard and its /api/status)."""
    from arihpc.monitor import views

    store = campaign_store(ctx)
    report = views.status_report(store, _profiles(store, sites))
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
    for item in report["failed"]:
        click.echo(f"failed: {item['uid']} ({item['error_class']}): {item['message']}")
    for name, numbers in report["resources"].items():
        click.echo(_resource_line(name, numbers))
    for name, kept in report["ms_store"].items():
        click.echo(f"site {name}: calibrated MS kept {kept['kept']} ({kept['bytes'] / 1e9:.2f} GB) "
                   f"in {kept['template']}, {kept['expired']} past retention; first to expire "
                   f"{kept['first_retain_until'] or 'none'}")


def _resource_line(site: str, n: dict) -> str:
    line = (f"site {site}: jobs {n['jobs_running']} running, {n['jobs_pending']} pending; "
            f"workers {n['workers']}, memory {n['memory_gb']:.1f} of "
            f"{n['memory_limit_gb']:.1f} GB in use, CPU {n['cpu_percent']:.0f} %; "
            f"MOUS running {n['running_mous']}")
    return line + (f" ({'; '.join(n['errors'])})" if n["errors"] else "")


@click.command("dashboard")
@site_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but 127.0.0.1/localhost needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True,
              help="Port (0: any free port).")
@click.option("--token", envvar="ARIHPC_DASHBOARD_TOKEN", metavar="TOKEN",
              help="Token for requests (default: generated when --host is not loopback). "
                   "Also $ARIHPC_DASHBOARD_TOKEN.")
@click.option("--refresh", type=click.IntRange(min=2), default=10, show_default=True,
              help="Seconds between page refreshes.")
@click.pass_context
def dashboard_command(ctx: click.Context, sites: tuple[str, ...], host: str, port: int,
                      token: str | None, refresh: int) -> None:
    """Serve live pages: every site of the campaign at /, one site at /site/NAME.

    \b
    Each page refreshes itself: progress by state, the batch jobs (squeue/qstat), the
    workers' memory and CPU against what they advertise (from the site's dask scheduler,
    with a link to its own dashboard), the running MOUS with stage and peak RSS so far,
    run time against raw size with the planning model, peak memory, failure classes,
    throughput and the expected end; the MOUS table (one page, sorted and filtered by the
    store: ?sort=run_time&order=desc&q=TEXT&state=failed&page=2) with links to each MOUS's
    weblog and products, ARIQA's counts and distributions, and the continuum previews. The
    same data is JSON under /api/ (/api/mous: a page of the MOUS table; /api/status is
    `arihpc status --format json`), and /metrics serves the figures to Prometheus
    (docs/metrics.md; a Grafana dashboard in docs/grafana-arihpc.json). Read-only: no page
    changes anything. Off 127.0.0.1 every request needs the token (for Prometheus: the
    bearer token).
    """
    import tornado.ioloop

    from arihpc.monitor import server

    if server.needs_token(host) and not token:
        token = server.new_token()
    store = campaign_store(ctx)
    app = server.make_app(store, _given(sites), token, refresh)
    try:
        _, port = server.listen(app, host, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}; choose "
                                   "another --port (0: any free port)") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"arihpc dashboard: {url}", err=True)
    if token:
        click.echo("arihpc dashboard: requests without the token get 403", err=True)
    stop = stop_on_signals()
    loop = tornado.ioloop.IOLoop.current()
    tornado.ioloop.PeriodicCallback(lambda: stop.is_set() and loop.stop(), 200).start()
    loop.start()
    click.echo("arihpc dashboard: stopped", err=True)


@click.command("report")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write.")
@site_option
@click.pass_context
def report_command(ctx: click.Context, out: Path, sites: tuple[str, ...]) -> None:
    """Write one self-contained HTML file of the campaign: the dashboard's figures and tables
    for the whole campaign and for each site, every MOUS in a table the page sorts and
    filters (excluded ones with their reasons; links to weblogs and products on this
    machine), ARIQA's counts and distributions, a gallery of continuum previews. BokehJS
    and the thumbnails are inlined: it opens with no network."""
    from arihpc.monitor import pages

    store = campaign_store(ctx)
    html = pages.report(store, _profiles(store, sites))
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, out)
    click.echo(f"report: {out} ({len(html.encode()) / 1e6:.1f} MB)")


COMMANDS = [status_command, dashboard_command, report_command]
