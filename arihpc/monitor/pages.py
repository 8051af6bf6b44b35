"""HTML of the dashboard's pages and of the report: tables and Bokeh figures of the views.

One template (templates/page.html, autoescaped) holds sections of tables and figures. Live pages
load BokehJS from the dashboard's own server and refresh themselves; the report inlines it, so
the file opens without any network.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from importlib import resources as package_files
from typing import Mapping

import jinja2
from bokeh.document import Document
from bokeh.embed import components
from bokeh.resources import Resources
from bokeh.settings import settings as bokeh_settings

from arihpc import __version__, config
from arihpc.monitor import figures, mous_list, sections, units, views, workfiles
from arihpc.monitor.ariqa_results import AriqaSummary
from arihpc.monitor.stats import CampaignNumbers
from arihpc.sites.profile import SiteProfile
from arihpc.store.campaign import CampaignStore

GB = 1e9
BOKEH_COMPONENTS = ["bokeh"]        # BokehJS's core is all these figures need
_template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    package_files.files("arihpc.monitor").joinpath("templates/page.html").read_text())


_building = 0                       # pages being built now, in any thread
_building_lock = threading.Lock()


def paused_gc(build):
    """``build`` with Python's cyclic garbage collector off while it runs (on again once no
    page is being built in any thread). A report of 100,000 MOUS makes millions of objects
    that all live until it is written; the collector scanning them over and over took 40 %
    of its time. Reference counting still frees everything; cycles wait for the next pass."""
    @functools.wraps(build)
    def paused(*args, **kwargs):
        global _building
        with _building_lock:
            _building += 1
            gc.disable()
        try:
            return build(*args, **kwargs)
        finally:
            with _building_lock:
                _building -= 1
                if not _building:
                    gc.enable()
    return paused


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
    """A memory or size given in GB, in the unit picked for it: '325 MB', '1.5 GB'."""
    return units.human(None if value is None else value * GB, units.SIZE)


def used_of(used_gb: float, limit_gb: float) -> str:
    """Memory in use of what is advertised, each in its own unit: '410 MB / 8 GB'."""
    return f"{gb(used_gb)} / {gb(limit_gb)}"


def _table(table_id: str, title: str, columns, rows, empty: str = "none") -> dict:
    return {"id": table_id, "title": title, "columns": columns, "rows": rows, "empty": empty}


def progress_table(numbers: dict, title: str = "MOUS by state",
                   table_id: str = "progress") -> dict:
    rows = [[state, numbers[state]] for state in figures.PROGRESS_ORDER if state in numbers]
    rows.insert(0, ["selected", numbers["selected"]])
    rows += [[f"failed: {name}", count] for name, count in numbers["failed_by_class"].items()]
    return _table(table_id, title, ["state", "MOUS"], rows)


def end_table(end: dict) -> dict:
    per_site = ", ".join(f"{name} {n}" for name, n in end.get("slots_by_site", {}).items())
    rows = [["MOUS left", end["left"]],
            ["MOUS slots (each site's profile, or the most seen computing at once)",
             f"{end['slots']} ({per_site})" if per_site else end["slots"]],
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
    workers = [[w["name"], w["threads"], used_of(w["memory_gb"], w["memory_limit_gb"]),
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
        _table("workers", "Workers", ["worker", "threads", "memory in use / advertised",
                                      "CPU %", "running"], workers,
               now["scheduler"]["error"] or "no worker connected"),
        _table("running", "Running MOUS", ["MOUS", "state", "stage", "elapsed",
                                           "stage elapsed", "RSS now", "peak RSS so far",
                                           "worker"], running, "no MOUS running"),
    ]


def _store_section(section_id: str, title: str, view: dict, drawn: bool = True,
                   by_site: dict[str, dict] | None = None) -> tuple[dict, dict]:
    """A section of a campaign view's tables, and its figures by name (none unless
    ``drawn``; each site in its colour with ``by_site``, the views of the sites)."""
    plots = {f"{section_id}-{name}": plot for name, plot in (
        figures.campaign_figures(view, by_site) if drawn else {}).items()}
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
    # The figures are built here and checked by the tests: Bokeh's validation of the whole
    # document (a fifth of the time of a report with 30 figures) is left out.
    validating = bokeh_settings.perform_document_validation
    validating.set_value(False)
    try:
        script, divs = components(plots) if plots else ("", {})
    finally:
        validating.unset_value()
    for section in sections:
        section["figures"] = [divs[name] for name in section["figures"]]
    return _template.render(title=title, subtitle=subtitle, sections=sections, nav=list(nav),
                            resources=resources, script=script, refresh=refresh)


def live_resources(root_url: str = "/") -> str:
    """Script tags loading BokehJS from the dashboard's own /static/."""
    return Resources(mode="server", root_url=root_url, components=BOKEH_COMPONENTS).render()


def mous_sections(prefix: str, entries: list[sections.MousEntry], table: sections.MousTable,
                  summary: AriqaSummary, links) -> tuple[list[dict], dict]:
    """The MOUS table, the ARIQA section and the gallery of these MOUS, with the ARIQA
    figures by name."""
    ariqa, plots = sections.ariqa_section(f"{prefix}-ariqa", summary,
                                          float(config.get("products.ariqa-threshold")))
    return [sections.mous_section(table), ariqa,
            sections.gallery_section(f"{prefix}-gallery", entries, links)], plots


def _live_mous(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
               site: str | None, arguments: Mapping[str, str]) -> tuple[list[dict], dict]:
    """A live page's MOUS sections: one page of the table from the store, the ARIQA of the
    site (or campaign), the thumbnails of the MOUS on that page."""
    query = mous_list.TableQuery.from_arguments(arguments, site)
    entries, total = views.mous_page(store, profiles, query)
    title = f"MOUS claimed by {site}" if site else "Every MOUS"
    table = sections.mous_table(entries, workfiles.LiveLinks(), query, total, False, title)
    return mous_sections(site or "campaign", entries, table,
                         views.ariqa_summary(store, profiles, site), workfiles.LiveLinks())


@paused_gc
def site_page(store: CampaignStore, site: str, site_profile: SiteProfile | None,
              profiles: Mapping[str, SiteProfile | None], refresh: int | None = 10,
              resources: str | None = None, arguments: Mapping[str, str] | None = None) -> str:
    """One site: what runs there now, its share of the campaign, its MOUS (one page of the
    table, by the page's query ``arguments``), their ARIQA and previews."""
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
    more, ariqa_plots = _live_mous(store, profiles, site, arguments or {})
    subtitle = (f"arihpc {__version__} · {when(now['at'])} · "
                f"{'refreshes every %d s' % refresh if refresh else 'snapshot'}")
    nav = [("all sites", "/")] + ([("dask dashboard", dashboard)] if dashboard and
                                  not now["scheduler"]["error"] else [])
    return _render(f"arihpc · site {site}", subtitle, [current, section, *more],
                   {**live_plot, **plots, **ariqa_plots}, resources or live_resources(), nav,
                   refresh)


def overview_sections(numbers: CampaignNumbers, profiles: Mapping[str, SiteProfile | None],
                      nows: dict[str, dict], site_link: str | None) -> tuple[list[dict], dict]:
    """The whole campaign (its figures with a colour per site) and one line per site."""
    by_site = {name: views.campaign_view(numbers, profiles, name) for name in profiles}
    section, plots = _store_section("campaign", "Whole campaign",
                                    views.campaign_view(numbers, profiles), by_site=by_site)
    rows = []
    for name, now in nows.items():
        used = views.resources_of(now)
        label = {"text": name, "href": site_link.format(site=name)} if site_link else name
        rows.append([label, used["jobs_pending"], used["jobs_running"], used["workers"],
                     used_of(used["memory_gb"], used["memory_limit_gb"]),
                     used["running_mous"], "; ".join(used["errors"]) or "-"])
    section["tables"].insert(1, _table("sites", "Sites", [
        "site", "jobs pending", "jobs running", "workers", "memory in use / advertised",
        "MOUS running", "not read"], rows, "no site has run yet"))
    return [section], plots


@paused_gc
def overview_page(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
                  refresh: int | None = 10, resources: str | None = None,
                  arguments: Mapping[str, str] | None = None) -> str:
    """The whole campaign, each site's line, every MOUS (one page of the table)."""
    found, plots = overview_sections(views.read_numbers(store), profiles,
                                     views.site_views(store, profiles), "/site/{site}")
    more, ariqa_plots = _live_mous(store, profiles, None, arguments or {})
    nav = [(f"site {name}", f"/site/{name}") for name in profiles]
    subtitle = f"arihpc {__version__} · {when(time.time())} · refreshes every {refresh} s"
    return _render("arihpc · campaign", subtitle, [*found, *more], {**plots, **ariqa_plots},
                   resources or live_resources(), nav, refresh)


@paused_gc
def report(store: CampaignStore, profiles: Mapping[str, SiteProfile | None]) -> str:
    """One self-contained HTML file: the campaign, every MOUS (excluded ones too; sorted,
    found and paged by the page itself), ARIQA, the gallery, then each site; BokehJS and the
    thumbnails inlined, links to the work directories as file:// URIs."""
    entries = views.every_mous(store, profiles)
    numbers = views.read_numbers(store, [e.row for e in entries])
    nows = views.site_views(store, profiles)
    found, plots = overview_sections(numbers, profiles, nows, "#site-{site}")
    table = sections.mous_table(entries, workfiles.ReportLinks(), mous_list.TableQuery(per=100),
                                len(entries), True, "Every MOUS")
    more, ariqa_plots = mous_sections("report", entries, table, sections.summaries(entries),
                                      workfiles.ReportLinks())
    found += more
    plots.update(ariqa_plots)
    # Each site's numbers in tables; its figures are the campaign's, a colour per site (a
    # figure costs ~70 ms to build and embed: five per site made most of a report's time).
    for name in profiles:
        view = views.campaign_view(numbers, profiles, name)
        claimed = view["progress"]["selected"] > 0
        section, _ = _store_section(f"site-{name}", f"Site {name}", view, drawn=False)
        section["tables"] = now_tables(nows[name]) + section["tables"]
        section["notes"] += [f"its figures: the whole campaign's, in the colour of {name}"
                             if claimed else f"no MOUS claimed by {name} yet"]
        found.append(section)
    subtitle = (f"arihpc {__version__} · report written {when(time.time())} · "
                f"store {store.engine.url.render_as_string(hide_password=True)}")
    inline = Resources(mode="inline", components=BOKEH_COMPONENTS).render()
    return _render("arihpc · campaign report", subtitle, found, plots, inline,
                   [("every MOUS", "#mous-section"), ("ARIQA", "#report-ariqa"),
                    ("gallery", "#report-gallery")]
                   + [(f"site {name}", f"#site-{name}") for name in profiles])


_products_template = jinja2.Environment(autoescape=True).from_string(
    """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>products of {{ uid }}
</title><style>body { font-family: sans-serif; margin: 1.5em; } td, th { padding: 0.2em 0.6em;
text-align: left; } img { max-width: 560px; border: 1px solid #ddd; }</style></head><body>
<h1>Products of {{ uid }}</h1><p><a href="/">all sites</a> ·
<a href="file/weblog/index.html">weblog</a></p>
{% if products %}<table><tr><th>FITS product</th><th>size</th><th>preview</th></tr>
{% for name, size, preview in products %}<tr><td><a href="file/export/{{ name }}">{{ name }}</a>
</td><td>{{ size }}</td><td>{% if preview %}<a href="file/preview/{{ preview }}"><img
src="file/preview/{{ preview }}" alt="preview of {{ name }}" loading="lazy"></a>{% else %}-
{% endif %}</td></tr>{% endfor %}</table>{% else %}<p>no FITS product here</p>{% endif %}
</body></html>""")


def products_page(uid: str, products: list[tuple[str, int, str | None]]) -> str:
    """A MOUS's FITS products with their sizes and previews (the dashboard's /mous/UID/products;
    its links are relative to it)."""
    return _products_template.render(uid=uid, products=[
        (name, units.human(size, units.SIZE), preview) for name, size, preview in products])
