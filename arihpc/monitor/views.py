"""The data behind every view: ``arihpc status``, the dashboard's pages and ``/api/``, the report.

A view is a JSON-ready dict. The live dashboard, ``/api/`` and ``arihpc status --format json``
call the same functions, so they agree by construction and the tests check that they do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import sqlalchemy as sa

from arihpc import config
from arihpc.errors import ProfileError
from arihpc.monitor import ariqa_results, live, mous_list, sections, stats, workfiles
from arihpc.products import ms_store
from arihpc.sites.profile import SiteProfile, load_profile
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import mous


def profiles_for(store: CampaignStore, given: Mapping[str, SiteProfile | None] | None = None
                 ) -> dict[str, SiteProfile | None]:
    """Each site of the campaign (those given, and those seen in the store) with its profile:
    the file its latest ``arihpc run`` named (its site-start event) when it is on this
    machine, else the profile of that name; None when neither is here."""
    found: dict[str, SiteProfile | None] = dict(given or {})
    with store.engine.connect() as conn:
        seen = {name: (live.scheduler_of(conn, name) or {}).get("profile")
                for name in stats.sites_seen(conn) if name not in found}
    for name, path in seen.items():
        found[name] = None
        for where in ([path] if path and Path(path).is_file() else []) + [name]:
            try:
                found[name] = load_profile(where)
                break
            except ProfileError:
                continue
    return dict(sorted(found.items()))


def read_numbers(store: CampaignStore, rows: list[mous_list.MousRow] | None = None
                 ) -> stats.CampaignNumbers:
    """The store's campaign numbers, read once for a page, a report or an API answer; the
    runs done taken from the MOUS table's ``rows`` when given (every MOUS)."""
    runs = None if rows is None else [
        (r.site, r.size_bytes, r.wall_s, r.peak_rss) for r in rows
        if r.state == "done" and r.size_bytes is not None and r.wall_s is not None]
    with store.engine.connect() as conn:
        return stats.CampaignNumbers(conn, runs)


def mous_slots(numbers: stats.CampaignNumbers, profiles: Mapping[str, SiteProfile | None]
               ) -> dict[str, int]:
    """Per site, its MOUS slots: what its profile gives, or the most MOUS it was seen
    computing at once where that is more (a profile found by name on this machine may not
    be the one its campaign ran with, e.g. the demo's local.yaml and site-configs/local)."""
    sites = set(profiles) | set(numbers.concurrency)
    return {name: max(profiles[name].mous_slots if profiles.get(name) else 0,
                      numbers.concurrency.get(name, 0)) for name in sorted(sites)}


def campaign_view(numbers: stats.CampaignNumbers, profiles: Mapping[str, SiteProfile | None],
                  site: str | None = None) -> dict:
    """The whole campaign (site None) or one site's part, and the campaign's expected end
    over the MOUS slots of the sites (``mous_slots``)."""
    slots = mous_slots(numbers, profiles)
    return {
        "site": site,
        "progress": numbers.progress(site),
        "runs": numbers.runs(site),
        "cut_peaks_gb": numbers.cut_peaks_gb(site),
        "failure_classes": numbers.failure_classes(site),
        "throughput": numbers.throughput(site),
        "expected_end": {**numbers.expected_end(sum(slots.values())), "slots_by_site": slots},
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


def mous_entries(rows: list[mous_list.MousRow], profiles: Mapping[str, SiteProfile | None]
                 ) -> list[sections.MousEntry]:
    """Each row with what its work directory holds on this machine and its ARIQA table."""
    places = workfiles.present(profiles, ((row.uid, row.site) for row in rows))
    files = {uid: workfiles.files_of(uid, workdir) for uid, workdir in places.items()}
    tables = ariqa_results.read_all((uid, f.workdir) for uid, f in files.items()
                                    if f is not None)
    return [sections.MousEntry(row, files.get(row.uid), tables.get(row.uid)) for row in rows]


def mous_page(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
              query: mous_list.TableQuery) -> tuple[list[sections.MousEntry], int]:
    """One page of the MOUS table (sorted, filtered and paged by the store), and how many
    MOUS match the query in all."""
    with store.engine.connect() as conn:
        uids, total = mous_list.page_uids(conn, query)
        rows = mous_list.read_rows(conn, uids)
    return mous_entries(rows, profiles), total


def every_mous(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]
               ) -> list[sections.MousEntry]:
    """Every MOUS of the store, excluded ones too, in claim order (the report's table)."""
    with store.engine.connect() as conn:
        rows = mous_list.read_rows(conn)
    return mous_entries(rows, profiles)


def ariqa_summary(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
                  site: str | None = None) -> ariqa_results.AriqaSummary:
    """The ARIQA tables of every MOUS done or failed (at one site, or anywhere) whose work
    directory is on this machine, summed up."""
    here = {name for name, profile in profiles.items() if profile is not None
            and (site is None or name == site)}
    with store.engine.connect() as conn:
        ended = conn.execute(sa.select(mous.c.uid, mous.c.site).where(
            mous.c.state.in_(("done", "failed")), mous.c.site.in_(sorted(here)))).all()
    tables = ariqa_results.read_all(workfiles.present(profiles, ended).items())
    return ariqa_results.summarize(tables.values())


def mous_api(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
             query: mous_list.TableQuery) -> dict:
    """``/api/mous``: one page of the MOUS table as JSON (sizes in bytes, times in s)."""
    entries, total = mous_page(store, profiles, query)
    return {"total": total, "page": query.page, "per": query.per, "sort": query.sort,
            "order": query.order, "mous": [
                {**e.row._asdict(), "ariqa": e.ariqa.summary() if e.ariqa else None,
                 "weblog": str(e.files.weblog) if e.files and e.files.weblog else None}
                for e in entries]}


def work_dir_of(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
                uid: str) -> Path | None:
    """The work directory of a MOUS of the store on this machine, or None."""
    with store.engine.connect() as conn:
        site = conn.execute(sa.select(mous.c.site).where(mous.c.uid == uid)).scalar()
    workdir = workfiles.work_dir(profiles, site, uid)
    return workdir if workdir is not None and workdir.is_dir() else None


def products_of(workdir: Path) -> list[tuple[str, int, str | None]]:
    """A MOUS's FITS products (export/): name, bytes, and its preview's name if it has one."""
    export, preview = workdir / workfiles.EXPORT, workdir / workfiles.PREVIEW
    return [(p.name, p.stat().st_size,
             f"{p.stem}.png" if (preview / f"{p.stem}.png").is_file() else None)
            for p in sorted(export.glob("*.fits"))]
