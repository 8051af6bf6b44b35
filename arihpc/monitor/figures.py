"""Bokeh figures of a campaign view (arihpc.monitor.views): the same on live pages and reports.

Each builder takes the JSON-ready numbers and returns one figure, with a title that says what
the figure shows and an empty-state note where there is nothing to show yet.
"""

from __future__ import annotations

import numpy as np
from bokeh.models import (
    BoxAnnotation,
    ColumnDataSource,
    FixedTicker,
    HoverTool,
    Label,
    Range1d,
    Span,
    Title,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from arihpc.monitor import units

GB = 1e9
WIDTH, HEIGHT = 560, 300
COLOURS = {"queued": "#9e9e9e", "staging": "#7e57c2", "running": "#1e88e5", "done": "#43a047",
           "failed": "#e53935", "cancelled": "#ffb300", "excluded": "#bdbdbd"}
PROGRESS_ORDER = ("queued", "staging", "running", "done", "failed", "cancelled", "excluded")


def site_colours(sites) -> dict[str, str]:
    """A colour per site, the same in every figure of a page."""
    return {name: Category10_10[i % len(Category10_10)] for i, name in enumerate(sites)}


def _figure(title: str, **kwargs):
    kwargs.setdefault("height", HEIGHT)
    plot = figure(title=title, width=WIDTH, toolbar_location="right",
                  tools="pan,wheel_zoom,box_zoom,reset,save", **kwargs)
    plot.title.text_font_size = "12pt"
    return plot


def _empty(plot, text: str):
    plot.add_layout(Label(x=WIDTH / 2 - 120, y=HEIGHT / 2 - 40, x_units="screen",
                          y_units="screen", text=text, text_color="#777777"))
    return plot


def progress(numbers: dict):
    """Selected MOUS by state (failed split by class below), and the excluded ones."""
    states = [s for s in PROGRESS_ORDER if s in numbers]
    source = ColumnDataSource({"state": states, "count": [numbers[s] for s in states],
                               "colour": [COLOURS[s] for s in states]})
    plot = _figure(f"Progress: {numbers['done']} of {numbers['selected']} selected MOUS done",
                   y_range=list(reversed(states)))
    plot.hbar(y="state", right="count", height=0.7, color="colour", source=source)
    plot.add_tools(HoverTool(tooltips=[("state", "@state"), ("MOUS", "@count")]))
    plot.x_range.start = 0
    plot.xaxis.axis_label = "MOUS"
    return plot


def _log_axis(axis, values, unit: units.Unit) -> Range1d:
    """A log axis over these values (in ``unit``): its range, and ticks at 1-2-5 multiples
    of powers of ten labelled in that unit (wide beyond the data, for panning)."""
    low, high = units.log_range(values)
    ticks = units.log_ticks(low, high, margin=1000)
    axis.ticker = FixedTicker(ticks=ticks)
    axis.major_label_overrides = {tick: units.number(tick) for tick in ticks}
    return Range1d(low, high)


def _legend_below(plot):
    """The figure's legend moved under the plot, off its points; a click on an entry hides
    what it names."""
    legend = plot.legend[0]
    plot.center.remove(legend)
    legend.update(orientation="horizontal", click_policy="hide", label_text_font_size="9pt",
                  spacing=12, location="center")
    plot.add_layout(legend, "below")
    return plot


def runtime_vs_size(runs: dict, model: dict, by_site: dict[str, dict] | None = None):
    """Run time against raw size, log-log, with the planning model fitted to these runs;
    ``by_site``: the runs of each site, drawn each in its colour."""
    size_b = np.asarray(runs["size_gb"], dtype=float) * GB
    run_s = np.asarray(runs["hours"], dtype=float) * 3600
    keep = (size_b > 0) & (run_s > 0)
    size_unit, time_unit = units.pick(size_b[keep], units.SIZE), \
        units.pick(run_s[keep], units.DURATION)
    x, y = size_unit.of(size_b[keep]), time_unit.of(run_s[keep])
    plot = _figure(f"Run time against raw size ({int(keep.sum())} MOUS done)",
                   x_axis_type="log", y_axis_type="log", height=HEIGHT + 40)
    plot.xaxis.axis_label = size_unit.label("raw size")
    plot.yaxis.axis_label = time_unit.label("run time")
    plot.x_range, plot.y_range = _log_axis(plot.xaxis, x, size_unit), \
        _log_axis(plot.yaxis, y, time_unit)
    if not keep.any():
        return _empty(plot, "no MOUS done yet")
    if by_site:
        # the same axes, a colour per site (a click on a site's legend entry hides it)
        for (name, site_runs), colour in zip(by_site.items(), site_colours(by_site).values()):
            size_s = np.asarray(site_runs["size_gb"], dtype=float) * GB
            run_ss = np.asarray(site_runs["hours"], dtype=float) * 3600
            shown = (size_s > 0) & (run_ss > 0)
            if shown.any():
                plot.scatter(size_unit.of(size_s[shown]), time_unit.of(run_ss[shown]), size=6,
                             alpha=0.6, color=colour, legend_label=f"{name} ({int(shown.sum())})")
    else:
        plot.scatter(x, y, size=6, alpha=0.6, color=COLOURS["running"],
                     legend_label=f"MOUS done ({int(keep.sum())})")
    line_x = np.geomspace(plot.x_range.start, plot.x_range.end, 50)
    # the model: hours from GB; drawn in the axes' units
    line_y = 10 ** model["intercept"] * (line_x * size_unit.factor / GB) ** model["slope"]
    fitted = f"fitted to {model['points']}" if model["points"] else "study defaults"
    plot.line(line_x, line_y * 3600 / time_unit.factor, color="#e53935", line_width=2,
              legend_label=f"model: t ∝ size^{model['slope']:.2f} ({fitted})")
    return _legend_below(plot)


def peak_memory(finished_gb: list[float], cut_gb: list[float]):
    """Distribution of peak RSS: MOUS done, and attempts cut by walltime, in nice bins."""
    finished, cut = np.asarray(finished_gb, float) * GB, np.asarray(cut_gb, float) * GB
    unit = units.pick([*finished, *cut], units.SIZE)
    plot = _figure("Peak memory: finished runs and runs cut by walltime")
    plot.xaxis.axis_label, plot.yaxis.axis_label = unit.label("peak RSS"), "runs"
    edges = units.nice_bins(unit.of([*finished, *cut]))
    if not edges.size:
        return _empty(plot, "no run has ended yet")
    for values, label, colour in ((finished, "finished", COLOURS["done"]),
                                  (cut, "cut by walltime", COLOURS["failed"])):
        counts = np.histogram(unit.of(values), bins=edges)[0]
        plot.quad(left=edges[:-1], right=edges[1:], bottom=0, top=counts, alpha=0.5,
                  color=colour, legend_label=f"{label} ({len(values)})")
    plot.y_range.start = 0
    return _legend_below(plot)


def failure_classes(classes: dict[str, int], by_site: dict[str, dict[str, int]] | None = None):
    """Attempts ended by each failure class, most frequent first; ``by_site``: each site's
    counts, stacked in its colour."""
    names = list(classes)
    plot = _figure("Failure classes (attempts)", y_range=list(reversed(names)) or ["none"])
    plot.xaxis.axis_label = "attempts"
    if not names:
        return _empty(plot, "no failure so far")
    plot.x_range.start = 0
    if not by_site:
        source = ColumnDataSource({"class": names, "count": list(classes.values())})
        plot.hbar(y="class", right="count", height=0.7, color=COLOURS["failed"], source=source)
        plot.add_tools(HoverTool(tooltips=[("class", "@class"), ("attempts", "@count")]))
        return plot
    sites = list(by_site)
    source = ColumnDataSource({"class": names, **{site: [by_site[site].get(n, 0) for n in names]
                                                  for site in sites}})
    plot.hbar_stack(sites, y="class", height=0.7, color=list(site_colours(sites).values()),
                    source=source, legend_label=sites)
    plot.add_tools(HoverTool(tooltips=[("class", "@class"),
                                       *((site, f"@{{{site}}}") for site in sites)]))
    return _legend_below(plot)


def throughput(flow: dict, end: dict, selected: int, by_site: dict[str, dict] | None = None):
    """MOUS done per time bin and in total, with the expected end of the campaign;
    ``by_site``: each site's own total, in its colour."""
    plot = _figure("Throughput and expected end", x_axis_type="datetime")
    plot.xaxis.axis_label, plot.yaxis.axis_label = "time (UTC)", "MOUS done (total)"
    if not flow["start"]:
        return _empty(plot, "no MOUS done yet")
    ms = np.asarray(flow["start"]) * 1000
    width = flow["bin_s"] * 1000
    plot.vbar(x=ms + width / 2, top=flow["done"], width=width * 0.9, alpha=0.4,
              color=COLOURS["running"],
              legend_label=f"done per {units.human(flow['bin_s'], units.DURATION)}")
    plot.line(ms + width, flow["total"], color=COLOURS["done"], line_width=2,
              legend_label="done, total")
    for (name, site_flow), colour in zip((by_site or {}).items(),
                                         site_colours(by_site or {}).values()):
        if site_flow["start"]:
            site_ms = np.asarray(site_flow["start"]) * 1000 + site_flow["bin_s"] * 1000
            plot.line(site_ms, site_flow["total"], color=colour, line_width=1.5,
                      legend_label=f"done at {name}")
    for key, colour, label in (("model_end", "#e53935", "model"), ("pace_end", "#fb8c00", "pace")):
        if end.get(key) and end["left"]:
            plot.line([ms[-1] + width, end[key] * 1000], [flow["total"][-1], selected],
                      color=colour, line_dash="dashed", legend_label=f"expected end ({label})")
            plot.add_layout(Span(location=end[key] * 1000, dimension="height",
                                 line_color=colour, line_dash="dotted"))
    return _legend_below(plot)


def workers(found: list[dict]):
    """Memory in use against what each worker advertises."""
    names = [w["name"] for w in found]
    unit = units.pick([w["memory_limit_gb"] * GB for w in found], units.SIZE)
    plot = _figure(f"Workers: memory in use / advertised ({unit.name})",
                   y_range=list(reversed(names)) or ["none"])
    plot.xaxis.axis_label = unit.label("memory")
    if not names:
        return _empty(plot, "no worker connected")
    source = ColumnDataSource({"name": names,
                               "limit": unit.of([w["memory_limit_gb"] * GB for w in found]),
                               "used": unit.of([w["memory_gb"] * GB for w in found]),
                               "cpu": [w["cpu_percent"] for w in found]})
    plot.hbar(y="name", right="limit", height=0.7, color="#e0e0e0", source=source,
              legend_label="advertised")
    plot.hbar(y="name", right="used", height=0.4, color=COLOURS["running"], source=source,
              legend_label="in use")
    plot.add_tools(HoverTool(tooltips=[("worker", "@name"),
                                       ("in use", f"@used{{0.00}} {unit.name}"),
                                       ("advertised", f"@limit{{0.00}} {unit.name}"),
                                       ("CPU", "@cpu{0} %")]))
    plot.x_range.start = 0
    return _legend_below(plot)


CDF_POINTS = 2000          # a distribution of more values is drawn through this many quantiles


def reldiff_cdf(label: str, values: np.ndarray, band, compared: int):
    """The cumulative distribution of one relative difference (a - b)/(a + b), in per cent,
    with its reference band (arihpc.monitor.ariqa_results.Band) shaded."""
    percent = np.sort(np.asarray(values, dtype=float)) * 100
    bounded = band.low is not None or band.high is not None
    inside = float(band.holds(percent / 100).mean()) if percent.size else 0.0
    within = f"; {inside:.0%} within the band" if percent.size and bounded else ""
    plot = _figure(f"{label[0].upper()}{label[1:]}: {percent.size} products{within}",
                   height=HEIGHT - 20)
    plot.title.text_font_size = "11pt"
    plot.xaxis.axis_label = f"{label}: (a − b)/(a + b), pipeline a vs QA2 b (%)"
    plot.yaxis.axis_label = "fraction of products ≤ x"
    extent = max(25.0, float(np.abs(percent).max()) * 1.1 if percent.size else 0.0)
    plot.x_range, plot.y_range = Range1d(-extent, extent), Range1d(0, 1.05)
    if bounded:
        plot.add_layout(BoxAnnotation(left=None if band.low is None else band.low * 100,
                                      right=None if band.high is None else band.high * 100,
                                      fill_color="#43a047", fill_alpha=0.12, line_alpha=0))
    plot.add_layout(Title(text=band.source, text_font_size="9pt", text_color="#616161",
                          text_font_style="normal"), "below")
    if not percent.size:
        return _empty(plot, f"none compared with QA2 ({compared} ARIQA tables)")
    if percent.size > CDF_POINTS:
        levels = np.linspace(0, 1, CDF_POINTS)
        x, y = np.quantile(percent, levels), levels
    else:
        x, y = percent, np.arange(1, percent.size + 1) / percent.size
    plot.step(np.concatenate([[x[0]], x]), np.concatenate([[0], y]), mode="after",
              line_width=2, color=COLOURS["running"])
    return plot


def campaign_figures(view: dict, by_site: dict[str, dict] | None = None) -> dict:
    """name -> figure of a campaign view (arihpc.monitor.views.campaign_view); ``by_site``:
    the views of the sites (name -> view), drawn each in its colour where a figure can."""
    sites = {name: site for name, site in (by_site or {}).items()
             if site["progress"]["selected"]} if by_site else {}
    return {
        "progress": progress(view["progress"]),
        "runtime": runtime_vs_size(view["runs"], view["expected_end"]["model"],
                                   {name: site["runs"] for name, site in sites.items()}),
        "memory": peak_memory(view["runs"]["peak_gb"], view["cut_peaks_gb"]),
        "failures": failure_classes(view["failure_classes"], {
            name: site["failure_classes"] for name, site in sites.items()}),
        # one site's own total would be the campaign's line drawn over again
        "throughput": throughput(view["throughput"], view["expected_end"],
                                 view["progress"]["selected"],
                                 {name: site["throughput"] for name, site in sites.items()}
                                 if len(sites) > 1 else None),
    }
