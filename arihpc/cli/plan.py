"""``arihpc plan``: how long a campaign takes on given sites, before it starts.

Part of the command-line layer (with arihpc/cli/main.py, which registers it): it prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from arihpc.catalog import formats as catalog
from arihpc.catalog import ordering, selection
from arihpc.cli.common import Progress
from arihpc.planning import model as planning
from arihpc.planning import simulation as planning_sim
from arihpc.sites import profile


def _pools(sites: str | None, machine_count: int | None) -> list[planning_sim.Pool]:
    if bool(sites) == bool(machine_count):
        raise click.UsageError("give either --sites or --machines")
    if machine_count:
        return planning_sim.machines(machine_count)
    names = [name.strip() for name in sites.split(",") if name.strip()]
    return [pool for name in names for pool in planning_sim.site_pools(profile.load_profile(name))]


def _catalog_sizes(files: tuple[str, ...]) -> list[float | None]:
    """Sizes (GB) of the MOUS these exports select, in priority order."""
    records: dict = {}
    for name in files:
        with Progress(f"reading {name}", "rows") as shown:
            read = catalog.read_catalog(name, progress=shown)
        for error in read.errors:
            click.echo(f"arihpc: warning: {error} (row left out)", err=True)
        for uid, record in read.records.items():
            records[uid] = records[uid].merge(record) if uid in records else record
    ranks = ordering.priorities(selection.select(records.values()), records)
    chosen = sorted(ranks, key=ranks.get)
    return [records[uid].size_bytes / 1e9 if records[uid].size_bytes else None for uid in chosen]


def _workload(rng, runs: int, count: int, files: tuple[str, ...], url: str | None,
              history: str | None = None):
    """The MOUS to plan, with the run-time model (fitted to the store's history, or to the
    exported one in ``history``, if any)."""
    runtime, memory = planning.default_models()
    done_gb, hours, peaks = [], [], []
    if history:
        from arihpc.monitor import exports

        done_gb, hours, peaks = exports.read_history(history)
    if files:
        sizes, source = _catalog_sizes(files), f"selected in {', '.join(files)}"
    elif url:
        from arihpc.store.campaign import CampaignStore

        store = CampaignStore.open(url)
        try:
            sizes = store.remaining_sizes()
            done_gb, hours, peaks = (done_gb, hours, peaks) if history else store.history()
        finally:
            store.close()
        source = "left in the store"
    elif history:
        raise click.UsageError("--history fits the run times of --catalog or --store: give one")
    else:
        return planning_sim.study_workload(rng, runs, count), memory
    runtime = planning.fit(done_gb, hours, runtime)
    memory = planning.fit(done_gb, peaks, memory)
    scatter = planning_sim.scatter_of(done_gb, hours, runtime)
    source += (f", run times fitted to {runtime.points} MOUS done" if runtime.points
               else ", the default size model") + (f" in {history}" if history else "")
    if not sizes:
        raise click.ClickException("no selected MOUS to plan (run arihpc select first?)")
    known = sum(1 for s in sizes if s)
    source += f"; sizes known for {known} of {len(sizes)}, run time ~ size^" \
              f"{runtime.slope:.2f}, scatter {scatter:.2f}"
    return planning_sim.sized_workload(rng, runs, sizes, runtime, scatter, source), memory


def _duration(hours: float) -> str:
    if hours < 48:
        return f"{hours:,.1f} h"
    if hours < 90 * 24:
        return f"{hours / 24:,.0f} days"
    if hours < 2 * planning_sim.HOURS_PER_YEAR:
        return f"{hours / 24:,.0f} days ({hours / planning_sim.HOURS_PER_YEAR:.2f} years)"
    return f"{hours / planning_sim.HOURS_PER_YEAR:.1f} years"


def _assumption_lines(plan: planning_sim.Plan) -> list[str]:
    a = plan.assumptions
    pools = ", ".join(f"{p.site}/{p.node_class} {p.slots} slots" + (
        f" {p.walltime_h:g} h" if np.isfinite(p.walltime_h) else " no walltime")
        for p in plan.pools)
    failures = ", ".join(f"{name} {rate:.1%}" for name, (rate, _) in a.failures.items()) or \
        "none"
    return [f"MOUS slots:     {pools}",
            f"assumptions:    stage resume {'on' if a.resume else 'off'}; failures per attempt: "
            f"{failures}; re-runs {a.reruns:.0%}"]


def _report(plan: planning_sim.Plan, count: int) -> list[str]:
    s = plan.summary()

    def median(key: str) -> float:
        return s[key]["median"]

    lines = [f"arihpc plan: {count:,} MOUS ({plan.workload}), {plan.runs:,} simulated campaigns",
             *_assumption_lines(plan),
             f"duration:       median {_duration(median('duration_h'))}, "
             f"90th percentile {_duration(s['duration_h']['p90'])}",
             f"MOUS (median):  done {median('done'):,.0f}, failed {median('failed'):,.0f}, "
             f"no site takes {median('unroutable'):,.0f}",
             f"walltime cuts:  {median('walltime_cuts'):,.0f} (median; "
             + ("each resumed in a fresh job)" if plan.assumptions.resume else
                "each restarting the MOUS from scratch)"),
             f"lost CPU hours: {median('lost_cpu_h'):,.0f} core-hours (median), "
             f"{s['lost_cpu_h']['p90']:,.0f} (90th percentile)"]
    use = [f"{site} {v['utilisation']['median']:.0%}" for site, v in s["sites"].items()]
    return lines + ["utilisation:    " + ", ".join(use) + " (median share of MOUS slots busy)"]


def _plot(plan: planning_sim.Plan, path: str) -> None:
    """Durations over the runs, and each site's utilisation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4),
                                            gridspec_kw={"width_ratios": [3, 2]})
    days = plan.makespan_h / 24
    left.hist(days, bins=40, color="#4c72b0")
    for value, label in ((np.median(days), "median"), (np.percentile(days, 90), "90th pct")):
        left.axvline(value, color="black", linestyle="--" if label != "median" else "-")
        left.annotate(f"{label} {value:,.0f} d", (value, 0), xytext=(3, 12),
                      textcoords="offset points", rotation=90)
    left.set(xlabel="campaign duration (days)", ylabel="simulated campaigns",
             title=f"{plan.runs:,} simulated campaigns")
    sites = list(plan.busy_h)
    right.bar(sites, [np.median(plan.utilisation(site)) for site in sites], color="#55a868")
    right.set(ylim=(0, 1), ylabel="share of MOUS slots busy (median)", title="utilisation")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


@click.command("plan")
@click.option("--sites", metavar="A,B,..", help="Site profiles (names or paths), e.g. "
              "eso,itarc,mup: their node classes, walltime, job limit and size routing.")
@click.option("--machines", "machine_count", type=click.IntRange(min=1),
              help="Instead of sites: N machines running one MOUS at a time, no walltime "
                   "(the study's single-machine estimate).")
@click.option("--catalog", "files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Plan the MOUS these archive exports select (ARI-L rules, priority order); "
                   "repeat for several files.")
@click.option("--store", "url", metavar="URL", help="Plan what is left in this campaign store, "
              "with run times fitted to the MOUS it has done (default: the --store of arihpc).")
@click.option("--history", metavar="FILE", type=click.Path(dir_okay=False, exists=True),
              help="Fit run time and memory to the MOUS done in this `arihpc export stages` "
                   "or `export mous` file (Parquet or CSV) instead of the store's history; "
                   "with --catalog or --store.")
@click.option("--mous", "count", type=click.IntRange(min=1), default=7000, show_default=True,
              help="Without a catalog or store: this many MOUS of the study's distribution.")
@click.option("--runs", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Simulated campaigns (Monte Carlo runs).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Stage resume: a walltime cut continues from the last completed stage "
                   "(arihpc), or restarts the MOUS from scratch, once (the study's method).")
@click.option("--failures/--no-failures", default=True, show_default=True,
              help="Draw failures with arihpc.planning.failure-rates and the retry policy.")
@click.option("--reruns", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of MOUS run again in full (the study planned 0.2 for re-runs).")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option("--plot", metavar="FILE.png", help="Also draw the durations and utilisation.")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def plan_command(ctx: click.Context, sites: str | None, machine_count: int | None,
                 files: tuple[str, ...], url: str | None, history: str | None, count: int,
                 runs: int, resume: bool,
                 failures: bool, reruns: float, seed: int, plot: str | None,
                 output: str) -> None:
    """How long the campaign takes: Monte Carlo runs of a simulation of it on these sites.

    \b
    Each run draws every MOUS's run time (the size model fitted to the store's history, or
    the study's distribution: lognormal, median 6 h, capped at a week), its failures and
    re-runs, and plays the campaign out: MOUS in priority order, each to the MOUS slot that
    frees first among the node classes that take it (size routing, memory, walltime).
    It prints the expected duration (median and 90th percentile), MOUS done and failed,
    walltime cuts, lost CPU hours and each site's utilisation. Examples:
      arihpc plan --sites eso,itarc,mup
      arihpc plan --machines 1                     # the study's ~12 years
      arihpc plan --machines 7 --no-failures --reruns 0.2
      arihpc plan --sites mup --no-resume --plot mup.png
      arihpc --store postgresql://host/ari plan --sites eso,itarc,mup
      arihpc plan --sites eso --catalog new.tsv --history stages.parquet
    """
    pools = _pools(sites, machine_count)
    url = url or (None if files else ctx.find_root().obj["store"])
    rng = np.random.default_rng(seed)
    workload, memory = _workload(rng, runs, count, files, url, history)   # errors: one line
    assumptions = planning_sim.Assumptions.from_config(resume, failures, reruns)
    with Progress(f"simulating {runs:,} campaigns", "MOUS") as shown:
        plan = planning_sim.simulate(workload, pools, assumptions, seed, memory, shown)
    if output == "json":
        click.echo(json.dumps(plan.summary(), indent=1))
    else:
        click.echo("\n".join(_report(plan, workload.hours.shape[1])))
    if plot:
        _plot(plan, plot)
        click.echo(f"plot: {Path(plot).resolve()}", err=output == "json")


COMMANDS = [plan_command]
