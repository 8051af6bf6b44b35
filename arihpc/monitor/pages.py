"""HTML of the dashboard's pages and of the report: tables and Bokeh figures of the views.

One template (templates/page.html, autoescaped) holds sections of tables and figures. Live pages
load BokehJS from the dashboard's own server and refresh themselves; the report inlines it, so
the file opens without any network.
"""

from __future__ import annotations

import time
from importlib import resources as package_files
from pathlib import Path
from typing import Mapping

import jinja2
from bokeh.document import Document
from bokeh.embed import components
from bokeh.resources import Resources

from arihpc import __version__
from arihpc.monitor import figures, views
from arihpc.monitor.stats import CampaignNumbers
from arihpc.sites.profile import SiteProfile
from arihpc.store.campaign import CampaignStore

BOKEH_COMPONENTS = ["bokeh"]        # BokehJS's core is all these figures need
_template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    package_files.files("arihpc.monitor").joinpath("templates/page.html").read_text())


def when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp)) if stamp else "-"


def span(seconds: float | None) -> str:
    """1 h 05 min, 3 d 4 h, 42 s."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GB"


def _table(table_id: str, title: str, columns, rows, empty: str = "none") -> dict:
    return {"id": table_id, "title": title, "columns": columns, "rows": rows, "empty": empty}


def progress_table(numbers: dict, title: str = "MOUS by state",
                   table_id: str = "progress") -> dict:
    rows = [[state, numbers[state]] for state in figures.PROGRESS_ORDER if state in numbers]
    rows.insert(0, ["selected", numbers["selected"]])
    rows += [[f"failed: {name}", count] for name, count in numbers["failed_by_class"].items()]
    return _table(table_id, title, ["state", "MOUS"], rows)


def end_table(end: dict) -> dict:
    rows = [["MOUS left", end["left"]], ["MOUS slots of the known sites", end["slots"]],
            ["expected end (model)", f"{when(end['model_end'])} "
                                     f"(in {span(end['model_hours'] * 3600)})"
             if end["model_end"] else "-"],
            ["expected end (pace of the last day)", f"{when(end['pace_end'])} "
                                                    f"(in {span(end['pace_hours'] * 3600)})"
             if end["pace_end"] else "-"]]
    return _table("end", "Expected end (arihpc/planning/model.py)", ["", ""], rows)


def now_tables(now: dict) -> list[dict]:
    """The batch jobs, workers and running MOUS of one site now."""
    jobs = [[j["job_id"], j["node_class"], j["state"], span(j["used_s"]), span(j["left_s"]),
             span(j["limit_s"])] for j in now["jobs"]]
    workers = [[w["name"], w["threads"], f"{w['memory_gb']:.2f} / {w['memory_limit_gb']:.2f}",
                f"{w['cpu_percent']:.0f}", ", ".join(f"{s['uid']} {s['stage']}"
                                                     for s in w["stages"]) or "-"]
               for w in now["workers"]]
    running = [[m["uid"], m["state"], m["stage"] or "-", span(m["elapsed_s"]),
                span(m["stage_elapsed_s"]), gb(m["rss_gb"]), gb(m["peak_rss_gb"]),
                m["worker"] or "-"] for m in now["running"]]
    return [
        _table("jobs", "Batch jobs", ["job", "node class", "state", "walltime used",
                                      "walltime left", "walltime asked"], jobs,
               now["queue_error"] or "no arihpc job in the batch queue"),
        _table("workers", "Workers", ["worker", "threads", "memory in use / advertised (GB)",
                                      "CPU %", "running"], workers,
               now["scheduler"]["error"] or "no worker connected"),
        _table("running", "Running MOUS", ["MOUS", "state", "stage", "elapsed",
                                           "stage elapsed", "RSS now", "peak RSS so far",
                                           "worker"], running, "no MOUS running"),
    ]


def _store_section(section_id: str, title: str, view: dict) -> tuple[dict, dict]:
    """A section of a campaign view's tables, and its figures by name."""
    plots = {f"{section_id}-{name}": plot
             for name, plot in figures.campaign_figures(view).items()}
    section = {"id": section_id, "title": title, "notes": [], "figures": list(plots),
               "tables": [progress_table(view["progress"]), end_table(view["expected_end"])]}
    return section, plots


def _render(title: str, subtitle: str, sections: list[dict], plots: dict, resources: str,
            nav=(), refresh: int | None = None) -> str:
    if plots:
        # One document whose models are collected once, not again after each added figure.
        document = Document()
        with document.models.freeze():
            for plot in plots.values():
                document.add_root(plot)
    script, divs = components(plots) if plots else ("", {})
    for section in sections:
        section["figures"] = [divs[name] for name in section["figures"]]
    return _template.render(title=title, subtitle=subtitle, sections=sections, nav=list(nav),
                            resources=resources, script=script, refresh=refresh)


def live_resources(root_url: str = "/") -> str:
    """Script tags loading BokehJS from the dashboard's own /static/."""
    return Resources(mode="server", root_url=root_url, components=BOKEH_COMPONENTS).render()


def site_page(store: CampaignStore, site: str, site_profile: SiteProfile | None,
              profiles: Mapping[str, SiteProfile | None], refresh: int | None = 10,
              resources: str | None = None) -> str:
    """One site: what runs there now, and its share of the campaign."""
    now = views.site_view(store, site, site_profile)
    numbers = views.read_numbers(store)
    section, plots = _store_section("site", f"{site}: MOUS claimed here",
                                    views.campaign_view(numbers, profiles, site))
    section["tables"].insert(1, progress_table(numbers.progress(), "Whole campaign: MOUS by state",
                                                  "campaign-progress"))
    live_plot = {"now-workers": figures.workers(now["workers"])}
    dashboard = now["scheduler"].get("dashboard")
    current = {"id": "now", "title": f"{site} now", "tables": now_tables(now),
               "notes": [f"dask dashboard of this site: {dashboard}"] if dashboard and
               not now["scheduler"]["error"] else [], "figures": list(live_plot)}
    subtitle = (f"arihpc {__version__} · {when(now['at'])} · "
                f"{'refreshes every %d s' % refresh if refresh else 'snapshot'}")
    nav = [("all sites", "/")] + ([("dask dashboard", dashboard)] if dashboard and
                                  not now["scheduler"]["error"] else [])
    return _render(f"arihpc · site {site}", subtitle, [current, section],
                   {**live_plot, **plots}, resources or live_resources(), nav, refresh)


def overview_sections(numbers: CampaignNumbers, profiles: Mapping[str, SiteProfile | None],
                      nows: dict[str, dict], site_link: str | None) -> tuple[list[dict], dict]:
    """The whole campaign and one line per site."""
    section, plots = _store_section("campaign", "Whole campaign",
                                    views.campaign_view(numbers, profiles))
    rows = []
    for name, now in nows.items():
        used = views.resources_of(now)
        label = {"text": name, "href": site_link.format(site=name)} if site_link else name
        rows.append([label, used["jobs_pending"], used["jobs_running"], used["workers"],
                     f"{used['memory_gb']:.2f} / {used['memory_limit_gb']:.2f}",
                     used["running_mous"], "; ".join(used["errors"]) or "-"])
    section["tables"].insert(1, _table("sites", "Sites", [
        "site", "jobs pending", "jobs running", "workers", "memory in use / advertised (GB)",
        "MOUS running", "not read"], rows, "no site has run yet"))
    return [section], plots


def overview_page(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
                  refresh: int | None = 10, resources: str | None = None) -> str:
    sections, plots = overview_sections(views.read_numbers(store), profiles,
                                        views.site_views(store, profiles), "/site/{site}")
    nav = [(f"site {name}", f"/site/{name}") for name in profiles]
    subtitle = f"arihpc {__version__} · {when(time.time())} · refreshes every {refresh} s"
    return _render("arihpc · campaign", subtitle, sections, plots,
                   resources or live_resources(), nav, refresh)


def weblog_section(found: list[dict]) -> dict:
    """The report's list of MOUS done or failed, each linked to its weblog when it has one."""
    rows = [[item["uid"], item["site"] or "-", item["state"],
             {"text": "weblog", "href": Path(item["weblog"]).as_uri()} if item["weblog"]
             else "no weblog here"] for item in found]
    return {"id": "weblogs", "title": "MOUS weblogs", "notes": [], "figures": [],
            "tables": [_table("weblogs", "Each MOUS done or failed", ["MOUS", "site", "state",
                                                                     "weblog"], rows)]}


def report(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]) -> str:
    """One self-contained HTML file: the campaign, then each site, with BokehJS inlined."""
    numbers, nows = views.read_numbers(store), views.site_views(store, profiles)
    sections, plots = overview_sections(numbers, profiles, nows, "#site-{site}")
    for name in profiles:
        section, site_plots = _store_section(f"site-{name}", f"Site {name}",
                                             views.campaign_view(numbers, profiles, name))
        section["tables"] = now_tables(nows[name]) + section["tables"]
        sections.append(section)
        plots.update(site_plots)
    sections.append(weblog_section(views.weblogs(store, profiles)))
    subtitle = (f"arihpc {__version__} · report written {when(time.time())} · "
                f"store {store.engine.url.render_as_string(hide_password=True)}")
    inline = Resources(mode="inline", components=BOKEH_COMPONENTS).render()
    return _render("arihpc · campaign report", subtitle, sections, plots, inline,
                   [(f"site {name}", f"#site-{name}") for name in profiles])
