"""The site commands of ``arihpc``: sites list|check|script|up.

Part of the command-line layer (arihpc/cli/main.py registers them): they print.
"""

from __future__ import annotations

import dataclasses

import click
import yaml

from arihpc.cli.common import emit, output_option
from arihpc.errors import ArihpcError
from arihpc.sites import cluster, profile


@click.group("sites")
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

    from arihpc.runner.probe import probe

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


COMMANDS = [sites_group]
