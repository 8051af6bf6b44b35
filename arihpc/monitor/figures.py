"""Bokeh figures of a campaign view (arihpc.monitor.views): the same on live pages and reports.

Each builder takes the JSON-ready numbers and returns one figure, with a title that says what
the figure shows and an empty-state note where there is nothing to show yet.
"""

from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool, Label, Span
from bokeh.plotting import figure

WIDTH, HEIGHT = 560, 300
COLOURS = {"queued": "#9e9e9e", "staging": "#7e57c2", "running": "#1e88e5", "done": "#43a047",
           "failed": "#e53935", "cancelled": "#ffb300", "excluded": "#bdbdbd"}
PROGRESS_ORDER = ("queued", "staging", "running", "done", "failed", "cancelled", "excluded")


def _figure(title: str, **kwargs):
    plot = figure(title=title, width=WIDTH, height=HEIGHT, toolbar_location="right",
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


def runtime_vs_size(runs: dict, model: dict):
    """Run time against raw size, log-log, with the planning model fitted to these runs."""
    sizes, hours = np.asarray(runs["size_gb"]), np.asarray(runs["hours"])
    keep = (sizes > 0) & (hours > 0)
    plot = _figure(f"Run time against raw size ({int(keep.sum())} MOUS done)",
                   x_axis_type="log", y_axis_type="log")
    plot.xaxis.axis_label, plot.yaxis.axis_label = "raw size (GB)", "run time (h)"
    if not keep.any():
        return _empty(plot, "no MOUS done yet")
    plot.scatter(sizes[keep], hours[keep], size=5, alpha=0.5, color=COLOURS["running"],
                 legend_label="MOUS")
    x = np.geomspace(sizes[keep].min(), sizes[keep].max() * 1.01, 50)
    line = 10 ** model["intercept"] * x ** model["slope"]
    fitted = f"fitted to {model['points']}" if model["points"] else "study defaults"
    plot.line(x, line, color="#e53935", line_width=2,
              legend_label=f"model: t ∝ size^{model['slope']:.2f} ({fitted})")
    plot.legend.location = "top_left"
    return plot


def peak_memory(finished_gb: list[float], cut_gb: list[float]):
    """Distribution of peak RSS: MOUS done, and attempts cut by walltime."""
    plot = _figure("Peak memory: finished runs and runs cut by walltime")
    plot.xaxis.axis_label, plot.yaxis.axis_label = "peak RSS (GB)", "runs"
    every = np.asarray([*finished_gb, *cut_gb], dtype=float)
    if not every.size:
        return _empty(plot, "no run has ended yet")
    edges = np.histogram_bin_edges(every, bins=30)
    for values, label, colour in ((finished_gb, "finished", COLOURS["done"]),
                                  (cut_gb, "cut by walltime", COLOURS["failed"])):
        counts = np.histogram(np.asarray(values, dtype=float), bins=edges)[0]
        plot.quad(left=edges[:-1], right=edges[1:], bottom=0, top=counts, alpha=0.5,
                  color=colour, legend_label=f"{label} ({len(values)})")
    plot.y_range.start = 0
    return plot


def failure_classes(classes: dict[str, int]):
    """Attempts ended by each failure class, most frequent first."""
    names = list(classes)
    plot = _figure("Failure classes (attempts)", y_range=list(reversed(names)) or ["none"])
    plot.xaxis.axis_label = "attempts"
    if not names:
        return _empty(plot, "no failure so far")
    source = ColumnDataSource({"class": names, "count": list(classes.values())})
    plot.hbar(y="class", right="count", height=0.7, color=COLOURS["failed"], source=source)
    plot.add_tools(HoverTool(tooltips=[("class", "@class"), ("attempts", "@count")]))
    plot.x_range.start = 0
    return plot


def throughput(flow: dict, end: dict, selected: int):
    """MOUS done per time bin and in total, with the expected end of the campaign."""
    plot = _figure("Throughput and expected end", x_axis_type="datetime")
    plot.xaxis.axis_label, plot.yaxis.axis_label = "time (UTC)", "MOUS done (total)"
    if not flow["start"]:
        return _empty(plot, "no MOUS done yet")
    ms = np.asarray(flow["start"]) * 1000
    width = flow["bin_s"] * 1000
    plot.vbar(x=ms + width / 2, top=flow["done"], width=width * 0.9, alpha=0.4,
              color=COLOURS["running"], legend_label=f"done per {flow['bin_s'] // 60:g} min")
    plot.line(ms + width, flow["total"], color=COLOURS["done"], line_width=2,
              legend_label="done, total")
    for key, colour, label in (("model_end", "#e53935", "model"), ("pace_end", "#fb8c00", "pace")):
        if end.get(key) and end["left"]:
            plot.line([ms[-1] + width, end[key] * 1000], [flow["total"][-1], selected],
                      color=colour, line_dash="dashed", legend_label=f"expected end ({label})")
            plot.add_layout(Span(location=end[key] * 1000, dimension="height",
                                 line_color=colour, line_dash="dotted"))
    plot.legend.location = "top_left"
    return plot


def workers(found: list[dict]):
    """Memory in use against what each worker advertises."""
    names = [w["name"] for w in found]
    plot = _figure("Workers: memory in use / advertised (GB)",
                   y_range=list(reversed(names)) or ["none"])
    if not names:
        return _empty(plot, "no worker connected")
    source = ColumnDataSource({"name": names,
                               "limit": [w["memory_limit_gb"] for w in found],
                               "used": [w["memory_gb"] for w in found],
                               "cpu": [w["cpu_percent"] for w in found]})
    plot.hbar(y="name", right="limit", height=0.7, color="#e0e0e0", source=source,
              legend_label="advertised")
    plot.hbar(y="name", right="used", height=0.4, color=COLOURS["running"], source=source,
              legend_label="in use")
    plot.add_tools(HoverTool(tooltips=[("worker", "@name"), ("in use", "@used{0.00} GB"),
                                       ("advertised", "@limit{0.00} GB"),
                                       ("CPU", "@cpu{0} %")]))
    plot.x_range.start = 0
    return plot


def campaign_figures(view: dict) -> dict:
    """name -> figure of a campaign view (arihpc.monitor.views.campaign_view)."""
    return {
        "progress": progress(view["progress"]),
        "runtime": runtime_vs_size(view["runs"], view["expected_end"]["model"]),
        "memory": peak_memory(view["runs"]["peak_gb"], view["cut_peaks_gb"]),
        "failures": failure_classes(view["failure_classes"]),
        "throughput": throughput(view["throughput"], view["expected_end"],
                                 view["progress"]["selected"]),
    }
