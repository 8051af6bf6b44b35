"""A site right now: its batch jobs, its dask workers and the MOUS they run.

Read-only. The batch queue comes from ``squeue``/``qstat`` (arihpc.sites.batch); the workers
from the site's dask scheduler, found through the ``site-start`` event its ``arihpc run`` wrote
in the store, over the scheduler's own HTTP endpoint ``/json/identity.json``. Each worker's
metrics carry the stages it runs (arihpc.runner.live). A source that cannot be read is reported
with the reason, and the rest of the page still shows.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from arihpc.errors import ArihpcError
from arihpc.runner.live import METRIC
from arihpc.sites.batch import JobState, read_queue
from arihpc.sites.profile import SiteProfile
from arihpc.store.schema import attempts, events, mous

GB = 1e9
SCHEDULER_TIMEOUT_S = 3.0


def scheduler_of(conn: Connection, site: str) -> dict | None:
    """The newest ``site-start`` of a site (scheduler address, dashboard link, owner), with
    ``stopped`` true when its run has ended cleanly since; None if the site never ran."""
    rows = conn.execute(sa.select(events.c.at, events.c.kind, events.c.data)
                        .where(events.c.kind.in_(("site-start", "site-stop")))
                        .order_by(events.c.id.desc()).limit(200)).all()
    stopped = set()
    for at, kind, data in rows:
        data = json.loads(data)
        if data.get("site") != site:
            continue
        if kind == "site-stop":
            stopped.add(data.get("owner"))
        else:
            return {**data, "started_at": at, "stopped": data.get("owner") in stopped}
    return None


def read_identity(dashboard_link: str, timeout: float = SCHEDULER_TIMEOUT_S) -> dict:
    """The scheduler's identity (its workers and their metrics) from its HTTP endpoint."""
    base = dashboard_link.rsplit("/", 1)[0] if dashboard_link.endswith("/status") \
        else dashboard_link.rstrip("/")
    with urllib.request.urlopen(f"{base}/json/identity.json", timeout=timeout) as response:
        return json.load(response)


def workers_of(identity: dict) -> list[dict]:
    """Each worker: what it advertises, and what it uses with the stages it runs (their process
    trees are not the worker's own process, so their memory and CPU are added)."""
    found = []
    for address, worker in sorted(identity.get("workers", {}).items()):
        metrics = worker.get("metrics", {})
        stages = metrics.get(METRIC) or []
        found.append({
            "name": str(worker.get("name")), "address": address,
            "threads": worker.get("nthreads"), "resources": worker.get("resources", {}),
            "memory_limit_gb": (worker.get("memory_limit") or 0) / GB,
            "memory_gb": ((metrics.get("memory") or 0) + sum(s["rss"] for s in stages)) / GB,
            "cpu_percent": (metrics.get("cpu") or 0.0) + sum(s["cpu_percent"] for s in stages),
            "stages": stages,
        })
    return found


def batch_jobs(profile: SiteProfile) -> list[dict]:
    """The site's arihpc jobs that are pending or running in its batch queue."""
    prefix = f"arihpc-{profile.name}-"
    return [{"job_id": job.job_id, "name": job.name, "node_class": job.name[len(prefix):],
             "state": job.state.value, "used_s": job.used_s, "limit_s": job.limit_s,
             "left_s": job.left_s}
            for job in read_queue(profile)
            if job.state in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETING)]


def running_mous(conn: Connection, site: str, workers: list[dict],
                 now: float | None = None) -> list[dict]:
    """The site's open attempts, with the stage, elapsed time and peak RSS their worker
    reports (None where no worker reports it: not started yet, or scheduler unreachable)."""
    now = time.time() if now is None else now
    live = {stage["uid"]: (stage, worker["name"]) for worker in workers
            for stage in worker["stages"]}
    rows = conn.execute(sa.select(attempts.c.uid, attempts.c.started_at, attempts.c.memory_gb,
                                  mous.c.state, mous.c.size_bytes)
                        .join(mous, mous.c.uid == attempts.c.uid)
                        .where(attempts.c.site == site, attempts.c.ended_at.is_(None))
                        .order_by(mous.c.priority, attempts.c.uid)).all()
    found = []
    for row in rows:
        stage, worker = live.get(row.uid, (None, None))
        found.append({
            "uid": row.uid, "state": row.state, "worker": worker,
            "size_gb": row.size_bytes / GB if row.size_bytes else None,
            "memory_asked_gb": row.memory_gb, "elapsed_s": now - row.started_at,
            "stage": stage["stage"] if stage else None,
            "stage_elapsed_s": now - stage["started"] if stage else None,
            "rss_gb": stage["rss"] / GB if stage else None,
            "peak_rss_gb": stage["peak_rss"] / GB if stage else None,
        })
    return found


def site_now(conn: Connection, site: str, profile: SiteProfile | None) -> dict:
    """Everything live about one site, each source with its error if it could not be read."""
    now = time.time()
    scheduler = scheduler_of(conn, site)
    workers, scheduler_error = [], None
    if scheduler is None:
        scheduler_error = "this site has not run yet"
    elif scheduler["stopped"]:
        scheduler_error = "its arihpc run has ended"
    else:
        try:
            workers = workers_of(read_identity(scheduler["dashboard"]))
        except (OSError, urllib.error.URLError, ValueError) as e:
            scheduler_error = f"scheduler not reachable: {e}"
    jobs, queue_error = [], None
    if profile is None:
        queue_error = "no site profile of this name here (arihpc sites list)"
    else:
        try:
            jobs = batch_jobs(profile)
        except (ArihpcError, OSError) as e:
            queue_error = str(e)
    return {
        "site": site, "at": now,
        "scheduler": {**(scheduler or {}), "error": scheduler_error},
        "queue_error": queue_error, "jobs": jobs, "workers": workers,
        "resources": resources(jobs, workers),
        "running": running_mous(conn, site, workers, now),
    }


def resources(jobs: list[dict], workers: list[dict]) -> dict:
    """Totals for a site: jobs by state, workers, memory and CPU in use against advertised."""
    return {
        "jobs_pending": sum(1 for j in jobs if j["state"] == JobState.PENDING.value),
        "jobs_running": sum(1 for j in jobs if j["state"] != JobState.PENDING.value),
        "workers": len(workers),
        "threads": sum(w["threads"] or 0 for w in workers),
        "memory_gb": sum(w["memory_gb"] for w in workers),
        "memory_limit_gb": sum(w["memory_limit_gb"] for w in workers),
        "cpu_percent": sum(w["cpu_percent"] for w in workers),
    }
