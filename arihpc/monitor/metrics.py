"""The dashboard's ``/metrics``: the campaign's figures in the Prometheus text format.

``CampaignCollector`` reads the store, and each site's batch queue and dask scheduler, on each
scrape, through the functions behind ``arihpc status`` and the pages (arihpc.monitor.views),
so a Grafana panel shows the numbers the dashboard shows. It is registered in a registry of
its own (``registry_for``), never prometheus_client's global one: no process metrics of the
dashboard, no background thread. docs/metrics.md lists the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.engine import Connection

from arihpc.monitor import stats, views
from arihpc.sites.profile import SiteProfile
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, mous, stages

CONTENT_TYPE = CONTENT_TYPE_LATEST
GB = 1e9
HOUR_S = 3600.0
# The states of a site's "MOUS by state" table (stats.StateCounts.progress): new, waiting
# and queued are all "queued" there.
STATES = ("queued", "staging", "running", "done", "failed", "cancelled")
ENDED = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Scrape:
    """What one scrape read: the store's numbers, each site now, and the stages' CPU."""

    numbers: stats.CampaignNumbers
    campaign: dict                      # views.campaign_view of the whole campaign
    now: dict[str, dict]                # site -> views.site_view
    cpu_s: dict[str, dict[str, float]]  # site -> {"useful": s, "lost": s}
    at: float


def stage_cpu_s(conn: Connection) -> dict[str, dict[str, float]]:
    """CPU seconds of the recorded stage runs of ended MOUS, by the site that ran them.

    Useful: for a MOUS done, the latest run of each of its stages (what its products came
    from). Lost: every other run of an ended MOUS (an earlier run of a stage done again, at
    another site after ``site-affinity-s``; all the stages of a MOUS failed or cancelled).
    The store records completed stages only: the CPU of a stage cut or failed part-way is in
    neither. MOUS not ended yet are in neither.
    """
    latest = (sa.select(stages.c.uid, stages.c.stage,
                        sa.func.max(stages.c.started_at).label("started_at"))
              .group_by(stages.c.uid, stages.c.stage).subquery())
    kept = sa.and_(mous.c.state == "done", stages.c.started_at == latest.c.started_at)
    cpu = sa.func.coalesce(stages.c.cpu_s, 0.0)
    query = (sa.select(attempts.c.site,
                       sa.func.sum(sa.case((kept, cpu), else_=0.0)),
                       sa.func.sum(sa.case((kept, 0.0), else_=cpu)))
             .select_from(stages.join(attempts, attempts.c.id == stages.c.attempt_id)
                          .join(mous, mous.c.uid == stages.c.uid)
                          .join(latest, sa.and_(latest.c.uid == stages.c.uid,
                                                latest.c.stage == stages.c.stage)))
             .where(mous.c.state.in_(ENDED))
             .group_by(attempts.c.site))
    return {site: {"useful": float(useful or 0), "lost": float(lost or 0)}
            for site, useful, lost in conn.execute(query)}


def read_scrape(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]) -> Scrape:
    """Everything one scrape exports, read once."""
    numbers = views.read_numbers(store)
    campaign = views.campaign_view(numbers, profiles)
    now = views.site_views(store, profiles)
    with store.engine.connect() as conn:
        cpu_s = stage_cpu_s(conn)
    return Scrape(numbers, campaign, now, cpu_s, time.time())


def _family(kind, name: str, documentation: str, labels: list[str],
            samples: Iterable[tuple[list[str], float]]):
    """A metric family of ``kind`` (GaugeMetricFamily, CounterMetricFamily) with samples."""
    family = kind(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _gauge(*args) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, *args)


def _counter(*args) -> CounterMetricFamily:
    return _family(CounterMetricFamily, *args)


def progress_families(scrape: Scrape) -> Iterator[Metric]:
    """MOUS by state per site and campaign-wide, failed MOUS by class, failed attempts."""
    numbers, sites = scrape.numbers, sorted(scrape.now)
    progress = {site: numbers.progress(site) for site in sites}
    yield _gauge("arihpc_mous", "Selected MOUS a site claimed, by state (new, waiting and "
                 "queued are queued), as the dashboard's MOUS by state table.", ["site", "state"],
                 (([site, state], progress[site][state]) for site in sites for state in STATES))
    whole = scrape.campaign["progress"]
    yield _gauge("arihpc_campaign_mous", "MOUS of the whole campaign by state, unclaimed ones "
                 "included (queued), and those not selected (excluded).", ["state"],
                 (([state], whole[state]) for state in (*STATES, "excluded")))
    yield _gauge("arihpc_mous_failed", "MOUS failed for good, by the class of their last "
                 "failure.", ["site", "class"],
                 (([site, name], count) for site in sites
                  for name, count in progress[site]["failed_by_class"].items()))
    yield _counter("arihpc_attempt_failures", "Attempts that ended with a failure class "
                   "(walltime cuts included), from the store's attempts.", ["site", "class"],
                   (([site, name], count) for site in sites
                    for name, count in numbers.failure_classes(site).items()))


def pace_families(scrape: Scrape) -> Iterator[Metric]:
    """MOUS done (a counter and the last hour's pace), the MOUS left and the expected end."""
    numbers, sites = scrape.numbers, sorted(scrape.now)
    yield _counter("arihpc_mous_done", "MOUS done (attempts ended done), by the site that "
                   "did them.", ["site"],
                   (([site], int(np.count_nonzero(numbers.end_sites == site))) for site in sites))
    recent = numbers.ends >= scrape.at - HOUR_S
    yield _gauge("arihpc_mous_done_per_hour", "MOUS done in the last hour.", ["site"],
                 (([site], int(np.count_nonzero(recent & (numbers.end_sites == site))))
                  for site in sites))
    end = scrape.campaign["expected_end"]
    yield _gauge("arihpc_mous_left", "Selected MOUS not done, failed or cancelled (the whole "
                 "campaign).", [], [([], end["left"])])
    yield _gauge("arihpc_mous_slots", "MOUS slots of the sites whose profiles are known: "
                 "MOUS run at once at most.", [], [([], end["slots"])])
    eta = {"model": (end["model_hours"], end["model_end"]),
           "pace": (end["pace_hours"], end["pace_end"])}
    known = {method: value for method, value in eta.items() if value[1] is not None}
    yield _gauge("arihpc_eta_seconds", "Seconds until the campaign ends: by the planning "
                 "model fitted to the runs done over the MOUS slots (model), or at the pace "
                 "of the last 24 h (pace).", ["method"],
                 (([method], hours * 3600) for method, (hours, _) in known.items()))
    yield _gauge("arihpc_expected_end_timestamp_seconds", "When the campaign ends (Unix "
                 "time), by method as arihpc_eta_seconds.", ["method"],
                 (([method], ends) for method, (_, ends) in known.items()))


def live_families(scrape: Scrape) -> Iterator[Metric]:
    """Per site now: batch jobs, workers, memory, running MOUS and their stages."""
    lines = {site: views.resources_of(now) for site, now in sorted(scrape.now.items())}
    yield _gauge("arihpc_batch_jobs", "The site's arihpc batch jobs by state (running "
                 "includes completing), from squeue/qstat.", ["site", "state"],
                 (([site, state], line[f"jobs_{state}"]) for site, line in lines.items()
                  for state in ("pending", "running")))
    yield _gauge("arihpc_workers", "Dask workers of the site's arihpc run.", ["site"],
                 (([site], line["workers"]) for site, line in lines.items()))
    yield _gauge("arihpc_memory_in_use_bytes", "Memory the workers and the stages they run "
                 "use.", ["site"],
                 (([site], line["memory_gb"] * GB) for site, line in lines.items()))
    yield _gauge("arihpc_memory_limit_bytes", "Memory the workers advertise: what their "
                 "batch jobs requested.", ["site"],
                 (([site], line["memory_limit_gb"] * GB) for site, line in lines.items()))
    yield _gauge("arihpc_memory_requested_bytes", "Memory the running MOUS asked for (the "
                 "memory guard's limit of their stages).", ["site"],
                 (([site], sum(m["memory_asked_gb"] or 0 for m in now["running"]) * GB)
                  for site, now in sorted(scrape.now.items())))
    yield _gauge("arihpc_running_mous", "MOUS with an open attempt at the site.", ["site"],
                 (([site], line["running_mous"]) for site, line in lines.items()))
    yield _gauge("arihpc_running_stages", "Stages running now, by stage, as the workers "
                 "report them.", ["site", "stage"], _stages_running(scrape.now))
    yield _gauge("arihpc_source_errors", "Sources of the live figures (batch queue, dask "
                 "scheduler) that could not be read at this scrape.", ["site"],
                 (([site], len(line["errors"])) for site, line in lines.items()))


def _stages_running(now: Mapping[str, dict]) -> Iterator[tuple[list[str], float]]:
    for site, site_now in sorted(now.items()):
        counts: dict[str, int] = {}
        for item in site_now["running"]:
            if item["stage"]:
                counts[item["stage"]] = counts.get(item["stage"], 0) + 1
        for stage, count in sorted(counts.items()):
            yield [site, stage], count


def cpu_families(scrape: Scrape) -> Iterator[Metric]:
    """Useful and lost CPU (core-seconds) of the stages recorded, per site."""
    for kind, meaning in (("useful", "the latest run of each stage of a MOUS done"),
                          ("lost", "stage runs of a MOUS failed or cancelled, and earlier "
                                   "runs of a stage a MOUS done ran again")):
        yield _gauge(f"arihpc_{kind}_cpu_seconds", f"CPU seconds (core-seconds) of {meaning}; "
                     "stages cut or failed part-way are not recorded.", ["site"],
                     (([site], cpu[kind]) for site, cpu in sorted(scrape.cpu_s.items())))


FAMILIES = (progress_families, pace_families, live_families, cpu_families)


class CampaignCollector(Collector):
    """Reads the campaign on each scrape; ``profiles`` gives the sites to show now."""

    def __init__(self, store: CampaignStore,
                 profiles: Callable[[], Mapping[str, SiteProfile | None]]):
        self.store, self.profiles = store, profiles

    def collect(self) -> Iterator[Metric]:
        scrape = read_scrape(self.store, self.profiles())
        for families in FAMILIES:
            yield from families(scrape)


def registry_for(store: CampaignStore,
                 profiles: Callable[[], Mapping[str, SiteProfile | None]]) -> CollectorRegistry:
    """A registry of its own holding the campaign's collector (nothing read until scraped)."""
    registry = CollectorRegistry()
    registry.register(CampaignCollector(store, profiles))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text format (content type ``CONTENT_TYPE``)."""
    return generate_latest(registry)
