"""The data behind every view: ``arihpc status``, the dashboard's pages and ``/api/``, the report.

A view is a JSON-ready dict. The live dashboard, ``/api/`` and ``arihpc status --format json``
call the same functions, so they agree by construction and the tests check that they do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from arihpc import config
from arihpc.errors import ProfileError
from arihpc.monitor import live, stats
from arihpc.mous import disk_name
from arihpc.products import ms_store
from arihpc.sites.profile import SiteProfile, load_profile
from arihpc.store.campaign import CampaignStore


def profiles_for(store: CampaignStore, given: Mapping[str, SiteProfile] | None = None
                 ) -> dict[str, SiteProfile | None]:
    """Each site of the campaign (those given, and those seen in the store) with its profile,
    found by name where not given; None when this machine has no profile of that name."""
    found: dict[str, SiteProfile | None] = dict(given or {})
    with store.engine.connect() as conn:
        seen = stats.sites_seen(conn)
    for name in seen:
        if name not in found:
            try:
                found[name] = load_profile(name)
            except ProfileError:
                found[name] = None
    return dict(sorted(found.items()))


def read_numbers(store: CampaignStore) -> stats.CampaignNumbers:
    """The store's campaign numbers, read once for a page, a report or an API answer."""
    with store.engine.connect() as conn:
        return stats.CampaignNumbers(conn)


def campaign_view(numbers: stats.CampaignNumbers, profiles: Mapping[str, SiteProfile | None],
                  site: str | None = None) -> dict:
    """The whole campaign (site None) or one site's part, and the campaign's expected end
    over the MOUS slots of the sites whose profiles are known."""
    return {
        "site": site,
        "progress": numbers.progress(site),
        "runs": numbers.runs(site),
        "cut_peaks_gb": numbers.cut_peaks_gb(site),
        "failure_classes": numbers.failure_classes(site),
        "throughput": numbers.throughput(site),
        "expected_end": numbers.expected_end(
            sum(p.mous_slots for p in profiles.values() if p is not None)),
    }


def site_view(store: CampaignStore, site: str, site_profile: SiteProfile | None) -> dict:
    """One site now: batch jobs, workers, running MOUS, with their sources' errors."""
    with store.engine.connect() as conn:
        return live.site_now(conn, site, site_profile)


def site_views(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]
               ) -> dict[str, dict]:
    """``site_view`` of every site."""
    return {name: site_view(store, name, site_profile) for name, site_profile in profiles.items()}


def resources_of(now: dict) -> dict:
    """A site's line of ``arihpc status``: batch jobs pending and running, workers, memory
    and CPU in use, MOUS running, its dask dashboard, and what could not be read."""
    return {**now["resources"], "running_mous": len(now["running"]),
            "dashboard": now["scheduler"].get("dashboard"),
            "errors": [e for e in (now["queue_error"], now["scheduler"]["error"]) if e]}


def status_report(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]) -> dict:
    """``arihpc status --format json`` and ``/api/status``: the store's counts, the progress
    by state, the latest failed MOUS with their reasons, and per site its batch jobs,
    workers and memory in use."""
    report = store.status()
    with store.engine.connect() as conn:
        report["progress"] = stats.StateCounts(conn).progress()
    # Why the latest failed MOUS were not packaged (a low stage score, a CASA error, ...).
    report["failed"] = store.failed_mous(int(config.get("monitor.status-failed")))
    report["resources"] = {name: resources_of(now)
                           for name, now in site_views(store, profiles).items()}
    report["ms_store"] = ms_store_view(profiles)
    return report


def ms_store_view(profiles: Mapping[str, SiteProfile | None]) -> dict[str, dict]:
    """Per site that keeps calibrated MS (storage.ms-store): its template, the MS kept, their
    bytes, the earliest retention date, and how many are past it."""
    found = {}
    for name, site_profile in profiles.items():
        template = site_profile.storage.ms_store if site_profile else None
        if template:
            records = ms_store.kept(template)
            found[name] = {"template": template, "kept": len(records),
                           "bytes": sum(r["bytes"] for r in records),
                           "expired": sum(r["expired"] for r in records),
                           "first_retain_until": min((r["retain_until"] for r in records),
                                                     default=None),
                           "mous": [{k: r[k] for k in ("uid", "bytes", "sha256", "retain_until",
                                                       "tar")} for r in records]}
    return found


WEBLOG = Path("weblog", "index.html")      # in a MOUS's work directory (arihpc.products.weblog)


def weblogs(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]) -> list[dict]:
    """Each MOUS done or failed with the path of its weblog, <work-dir>/<uid>/weblog/index.html
    under its site's profile, or None when that file is not on this machine."""
    found = []
    for uid, site, state in store.ended_mous():
        site_profile = profiles.get(site) if site else None
        path = (Path(site_profile.storage.work_dir) / disk_name(uid) / WEBLOG
                if site_profile is not None else None)
        found.append({"uid": uid, "site": site, "state": state,
                      "weblog": str(path.resolve()) if path and path.is_file() else None})
    return found
