"""Plan a campaign before it starts: Monte Carlo runs of a discrete-event simulation.

Each run draws every MOUS's run time (the size model of ``model.py`` with its scatter, or
the study's distribution when no sizes are known), its failures (a rate per class, the retry
policy of ``arihpc.failures.retry``) and its re-runs, then plays the campaign out: the MOUS in
priority order, each to the MOUS slot that frees first among the node classes that take it (a
site's size routing, the smallest node class of that site with the memory, and, with stage
resume, a walltime that holds its longest stage). A MOUS longer than a job resumes in a fresh
job; without stage resume a walltime cut starts it again from scratch.

The runs are simulated together, vectorised over runs, one MOUS at a time: 1,000 campaigns of
7,000 MOUS take seconds (scripts/bench_plan.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from arihpc import config
from arihpc.errors import ConfigError
from arihpc.planning.model import PowerLaw, default_models

INF = math.inf
HOURS_PER_YEAR = 8766.0


@dataclass(frozen=True)
class Pool:
    """The MOUS slots of one node class of one site, as the planner sees them."""

    site: str
    node_class: str
    slots: int
    cores: float                # cores behind one MOUS slot: lost CPU hours count them
    memory_gb: float            # what one job of the class asks
    walltime_h: float = INF     # one batch job's limit
    usable_h: float = INF       # the walltime less the drain margin
    min_size_gb: float = 0.0
    max_size_gb: float = INF


def site_pools(profile) -> list[Pool]:
    """The pools of a SiteProfile: one per node class, a job per node, the site's job limit
    shared out in proportion to the node counts."""
    classes = sorted(profile.node_classes, key=lambda c: c.job_memory_gb)
    nodes = sum(c.count for c in classes)
    pools = []
    for c in classes:
        jobs = max(1, min(c.count, round(profile.max_jobs * c.count / nodes)))
        largest = min(INF if profile.max_size_gb is None else profile.max_size_gb,
                      INF if c.max_size_gb is None else c.max_size_gb)
        pools.append(Pool(profile.name, c.name, jobs * c.slots, c.job_cores / c.slots,
                          c.job_memory_gb, profile.walltime_s / 3600,
                          (profile.walltime_s - profile.drain_margin_s) / 3600,
                          profile.min_size_gb, largest))
    return pools


def machines(count: int, cores: float = 1.0) -> list[Pool]:
    """The study's idealised machines: one MOUS at a time each, no walltime, any size."""
    return [Pool("machines", "machine", count, cores, INF)]


@dataclass(frozen=True)
class Assumptions:
    """What may go wrong and what it costs."""

    resume: bool = True
    failures: dict = field(default_factory=dict)    # class -> (rate per attempt, stage)
    retries: dict = field(default_factory=dict)     # class -> further attempts
    stage_fractions: dict = field(default_factory=lambda: {"all": 1.0})
    reruns: float = 0.0                             # share of MOUS run again in full
    job_start_h: float = 0.0
    no_resume_retries: int = 1

    @classmethod
    def from_config(cls, resume: bool = True, failures: bool = True,
                    reruns: float = 0.0) -> "Assumptions":
        """arihpc.planning and arihpc.failures.retry of the campaign config."""
        get = config.get
        rates = {name: (float(v["rate"]), str(v["stage"]))
                 for name, v in (get("planning.failure-rates") or {}).items()} if failures else {}
        policies = get("failures.retry")
        retries = {name: int((policies.get(name) or {}).get("retries", 0)) for name in rates}
        fractions = {k: float(v) for k, v in get("planning.stage-fractions").items()}
        unknown = [stage for _, stage in rates.values() if stage not in fractions]
        if unknown:
            raise ConfigError(f"arihpc.planning.failure-rates: stage(s) {', '.join(unknown)} "
                             f"not in stage-fractions ({', '.join(fractions)})")
        return cls(resume, rates, retries, fractions, reruns,
                   float(get("planning.job-start-h")), int(get("planning.no-resume-retries")))

    @property
    def longest_stage(self) -> float:
        return max(self.stage_fractions.values()) / sum(self.stage_fractions.values())


@dataclass(frozen=True)
class Workload:
    """Per run and MOUS (runs x MOUS arrays, MOUS in priority order): raw size and run time."""

    sizes_gb: np.ndarray
    hours: np.ndarray
    source: str


def study_workload(rng: np.random.Generator, runs: int, count: int) -> Workload:
    """The study's run times (lognormal, capped), smallest first like the default order; the
    sizes follow from the default size model, for the sites' size routing."""
    study = config.get("planning.study-runtime")
    hours = np.minimum(float(study["median-h"]) *
                       np.exp(float(study["sigma"]) * rng.standard_normal((runs, count))),
                       float(study["cap-h"]))
    hours.sort(axis=1)
    runtime = default_models()[0]
    return Workload(runtime.inverse(hours), hours,
                    f"the study's distribution: lognormal, median {study['median-h']} h, "
                    f"sigma {study['sigma']}, cap {study['cap-h']} h")


def sized_workload(rng: np.random.Generator, runs: int, sizes_gb: Sequence[float | None],
                   runtime: PowerLaw, scatter: float, source: str) -> Workload:
    """Run times from the size model with lognormal scatter, capped like the study's; an
    unknown size counts as the median size. ``sizes_gb`` are in priority order."""
    median = float(config.get("planning.median-size-gb"))
    sizes = np.array([s if s else median for s in sizes_gb], dtype=float)
    cap = float(config.get("planning.study-runtime")["cap-h"])
    hours = np.minimum(runtime(sizes) * np.exp(scatter * rng.standard_normal((runs, len(sizes)))),
                       cap)
    return Workload(np.broadcast_to(sizes, hours.shape), hours, source)


def scatter_of(sizes_gb: Sequence[float], hours: Sequence[float], runtime: PowerLaw) -> float:
    """Spread (natural log) of run times around a fitted model; the configured one until the
    model was fitted."""
    if not runtime.points:
        return float(config.get("planning.runtime-scatter"))
    pairs = [(s, h) for s, h in zip(sizes_gb, hours) if s and h and s > 0 and h > 0]
    residuals = np.log([h for _, h in pairs]) - np.log(runtime(np.array([s for s, _ in pairs])))
    return float(np.std(residuals, ddof=2)) if len(pairs) > 2 else 0.0


# --- failures and re-runs, drawn for every run and MOUS before the campaign is played ---

def _stage_spans(a: Assumptions) -> dict[str, tuple[float, float]]:
    """stage -> (start, length) as fractions of a MOUS's run time."""
    total = sum(a.stage_fractions.values())
    spans, start = {}, 0.0
    for stage, share in a.stage_fractions.items():
        spans[stage] = (start / total, share / total)
        start += share
    return spans


def draw_failures(rng: np.random.Generator, hours: np.ndarray,
                  a: Assumptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot hours, lost hours, done) per run and MOUS, walltime aside.

    Each attempt fails with the class rates, at a uniform point of the class's stage. With
    stage resume a failure loses the work since the last checkpoint, otherwise all of the
    attempt's work. A class failing more often than its retries gives the MOUS up, and its
    checkpointed work is lost too. A re-run repeats the whole MOUS once more.
    """
    spans = _stage_spans(a)
    rates = [(name, rate, *spans[stage], a.retries.get(name, 0))
             for name, (rate, stage) in a.failures.items() if rate > 0]
    alive = np.ones(hours.shape, bool)
    failed = np.zeros(hours.shape, bool)
    kept = np.zeros(hours.shape)             # fraction of the work checkpointed
    lost = np.zeros(hours.shape)
    counts = {name: np.zeros(hours.shape, np.int16) for name, *_ in rates}
    for _ in range(1 + sum(r[-1] + 1 for r in rates) if rates else 0):
        u, point, low = rng.random(hours.shape), rng.random(hours.shape), 0.0
        struck = np.zeros(hours.shape, bool)
        for name, rate, start, length, retries in rates:
            hit = alive & (u >= low) & (u < low + rate)
            low += rate
            at = start + point * length
            since = np.maximum(kept, start) if a.resume else 0.0
            lost += np.where(hit, np.maximum(at - since, 0.0) * hours, 0.0)
            if a.resume:
                kept = np.where(hit, np.maximum(kept, start), kept)
            counts[name] += hit
            failed |= hit & (counts[name] > retries)
            struck |= hit
        alive = struck & ~failed
        if not alive.any():
            break
    lost += np.where(failed, kept * hours, 0.0)
    done = ~failed
    rerun = done & (rng.random(hours.shape) < a.reruns)
    lost += np.where(rerun, hours, 0.0)
    return np.where(done, hours, 0.0) + lost, lost, done


# --- the campaign played out ---

@dataclass
class Plan:
    """What the simulated campaigns came to, one value per run."""

    workload: str
    assumptions: Assumptions
    pools: list[Pool]
    makespan_h: np.ndarray
    done: np.ndarray
    failed: np.ndarray
    unroutable: np.ndarray        # no site takes them (size, memory or walltime)
    cuts: np.ndarray              # walltime cuts (resumed or not)
    lost_cpu_h: np.ndarray        # core-hours of work thrown away
    busy_h: dict[str, np.ndarray]   # site -> slot hours in use

    @property
    def runs(self) -> int:
        return len(self.makespan_h)

    def slots(self, site: str) -> int:
        return sum(p.slots for p in self.pools if p.site == site)

    def utilisation(self, site: str) -> np.ndarray:
        """Share of the site's MOUS slots in use until the campaign ends, per run."""
        return self.busy_h[site] / (self.slots(site) * np.maximum(self.makespan_h, 1e-9))

    def summary(self) -> dict:
        """Medians and 90th percentiles over the runs, for printing or JSON."""
        def spread(values: np.ndarray) -> dict:
            return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
        return {
            "runs": self.runs, "workload": self.workload, "resume": self.assumptions.resume,
            "duration_h": spread(self.makespan_h),
            "duration_years": spread(self.makespan_h / HOURS_PER_YEAR),
            "done": spread(self.done), "failed": spread(self.failed),
            "unroutable": spread(self.unroutable), "walltime_cuts": spread(self.cuts),
            "lost_cpu_h": spread(self.lost_cpu_h),
            "sites": {site: {"slots": self.slots(site), "utilisation":
                             spread(self.utilisation(site))} for site in self.busy_h},
        }


class _Pools:
    """The pools as arrays, and which of them takes a MOUS: per site the smallest node class
    with the memory (pools sorted by site, then memory), within size routing and walltime."""

    def __init__(self, pools: list[Pool], memory: PowerLaw, a: Assumptions):
        self.pools = sorted(pools, key=lambda p: (p.site, p.memory_gb))
        self.sites = sorted({p.site for p in pools})

        def array(name: str) -> np.ndarray:
            return np.array([getattr(p, name) for p in self.pools], dtype=float)

        self.lo, self.hi, self.memory_gb = array("min_size_gb"), array("max_size_gb"), \
            array("memory_gb")
        self.walltime_h, self.usable_h, self.cores = array("walltime_h"), array("usable_h"), \
            array("cores")
        self.site_of = np.array([self.sites.index(p.site) for p in self.pools])
        first = np.searchsorted(self.site_of, self.site_of)      # each site's first pool
        self.site_start = first
        self.slot_pool = np.repeat(np.arange(len(self.pools)), [p.slots for p in self.pools])
        self.memory, self.min_memory = memory, float(config.get("planning.min-memory-gb"))
        self.longest = a.longest_stage if a.resume else 0.0

    def taking(self, sizes: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """runs x slots: the slots that may take this MOUS in each run."""
        memory = np.maximum(self.memory(sizes), self.min_memory)[:, None]
        fits = (sizes[:, None] >= self.lo) & (sizes[:, None] <= self.hi) & \
            (memory <= self.memory_gb) & ((self.longest * hours)[:, None] <= self.usable_h)
        seen = np.cumsum(fits, axis=1)
        before_site = np.where(self.site_start > 0, seen[:, self.site_start - 1], 0)
        smallest = fits & (seen - before_site == 1)
        return smallest[:, self.slot_pool]


def _occupy(slot_h, lost_h, done, hours, usable, walltime, a: Assumptions):
    """Slot hours, walltime cuts, lost hours and done of one MOUS on the chosen pools.

    With resume: a job per usable walltime, each fresh job paying its start. Without: a run
    longer than the walltime is cut and started again from scratch, then given up.
    """
    if a.resume:
        jobs = np.where(np.isfinite(usable), np.ceil(slot_h / np.where(
            np.isfinite(usable), usable, 1.0)), 1.0)
        cuts = np.maximum(jobs - 1, 0)
        return slot_h + cuts * a.job_start_h, cuts, lost_h, done
    over = hours > walltime
    tries = 1 + a.no_resume_retries
    cut_h = np.where(over, tries * np.where(over, walltime, 0.0), 0.0)
    return (np.where(over, cut_h + a.no_resume_retries * a.job_start_h, slot_h),
            np.where(over, tries, 0), np.where(over, cut_h, lost_h), done & ~over)


def simulate(workload: Workload, pools: Iterable[Pool], assumptions: Assumptions,
             seed: int | None = None, memory: PowerLaw | None = None,
             progress: Callable[[int, int], None] | None = None) -> Plan:
    """Play the campaign out once per run of the workload (all runs at once).

    ``progress(MOUS placed, MOUS in all)``, if given, is called about every 1 % of the MOUS.
    """
    rng = np.random.default_rng(seed)
    pools = _Pools(list(pools), memory or default_models()[1], assumptions)
    hours = workload.hours
    runs, count = hours.shape
    slot_h, lost_h, done = draw_failures(rng, hours, assumptions)
    free = np.zeros((runs, len(pools.slot_pool)))
    used = np.zeros_like(free)
    row = np.arange(runs)
    tally = {name: np.zeros(runs) for name in ("done", "failed", "unroutable", "cuts", "lost")}
    step = max(1, count // 100)
    for i in range(count):
        if progress and i % step == 0:
            progress(i, count)
        choice = np.where(pools.taking(workload.sizes_gb[:, i], hours[:, i]), free, INF)
        slot = choice.argmin(axis=1)
        start = choice[row, slot]
        placed = np.isfinite(start)
        pool = pools.slot_pool[slot]
        took, cuts, lost, ok = _occupy(slot_h[:, i], lost_h[:, i], done[:, i], hours[:, i],
                                       pools.usable_h[pool], pools.walltime_h[pool],
                                       assumptions)
        took = np.where(placed, took, 0.0)
        free[row, slot] = np.where(placed, start + took, free[row, slot])
        used[row, slot] += took
        tally["done"] += placed & ok
        tally["failed"] += placed & ~ok
        tally["unroutable"] += ~placed
        tally["cuts"] += np.where(placed, cuts, 0)
        tally["lost"] += np.where(placed, lost * pools.cores[pool], 0.0)
    if progress:
        progress(count, count)
    busy = {site: used[:, pools.site_of[pools.slot_pool] == k].sum(axis=1)
            for k, site in enumerate(pools.sites)}
    return Plan(workload.source, assumptions, pools.pools, free.max(axis=1), tally["done"],
                tally["failed"], tally["unroutable"], tally["cuts"], tally["lost"], busy)
