"""arihpc/monitor/units.py: units picked from the data, numbers a person reads, nice bins and
log ticks; and the ARIQA summary and reference bands of arihpc/monitor/ariqa_results.py."""

import math

import numpy as np
import pytest
from astropy.table import Table

from arihpc.monitor import ariqa_results, units
from arihpc.products import ariqa


@pytest.mark.parametrize("values, scale, unit", [
    ([75, 120, 240], units.DURATION, "min"),          # the demo's run times: not 0.004 h
    ([7 * 3600, 6 * 3600, 30 * 86400], units.DURATION, "h"),
    ([2 * 86400, 3 * 86400], units.DURATION, "d"),
    ([0.3], units.DURATION, "ms"),
    ([8.2e6] * 6, units.SIZE, "MB"),                  # the demo's raw sizes: not 0.006 GB
    ([13e9, 2e9, 400e9], units.SIZE, "GB"),
    ([2e12, 5e12], units.SIZE, "TB"),
    ([], units.SIZE, "MB"), ([None, 0], units.DURATION, "min"),
])
def test_the_unit_is_picked_from_the_data(values, scale, unit):
    assert units.pick(values, scale).name == unit


def test_the_unit_steps_down_until_the_smallest_value_shows_at_least_0_01():
    # median 2 h, but 10 s would be 0.003 h: minutes (10 s = 0.17 min)
    assert units.pick([10, 7200, 7300], units.DURATION).name == "min"
    assert units.pick([1e5, 5e9, 6e9], units.SIZE).name == "MB"


@pytest.mark.parametrize("value, text", [
    (0, "0"), (0.05, "0.05"), (1.5, "1.5"), (1.0, "1"), (12.34, "12.3"), (123.4, "123"),
    (12345.6, "12,346"), (-0.5, "-0.5"), (None, "-"), (float("nan"), "-"), (0.004, "0.004"),
])
def test_numbers_have_three_significant_figures_and_no_trailing_zeros(value, text):
    assert units.number(value) == text


@pytest.mark.parametrize("value, scale, text", [
    (90, units.DURATION, "1.5 min"), (26.6, units.DURATION, "26.6 s"),
    (6 * 3600, units.DURATION, "6 h"), (3 * 86400, units.DURATION, "3 d"),
    (8_202_240, units.SIZE, "8.2 MB"), (3e9, units.SIZE, "3 GB"), (0, units.SIZE, "0 MB"),
    (None, units.SIZE, "-"),
])
def test_one_value_shows_in_its_own_unit(value, scale, text):
    assert units.human(value, scale) == text


def test_nice_bins_are_multiples_of_a_nice_step():
    edges = units.nice_bins([0.1, 5.3, 12.0])
    step = edges[1] - edges[0]
    assert edges[0] <= 0.1 and edges[-1] > 12.0 and step == 1
    assert np.allclose(np.diff(edges), step)
    # nearly equal values (the demo's peak RSS): one or two wide bins, not 0.0005 wide ones
    assert list(units.nice_bins([324.2, 325.0, 324.5])) == [320, 330]
    assert list(units.nice_bins([0.3, 0.35])) == [0.3, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36]
    assert units.nice_bins([]).size == 0


def test_nice_steps_and_log_ticks():
    assert [units.nice_step(x) for x in (0.013, 0.9, 3, 7, 40)] == [0.02, 1, 5, 10, 50]
    assert units.log_ticks(4.1, 16.4) == [5, 10]
    assert units.log_ticks(0.83, 6) == [1, 2, 5]
    many = units.log_ticks(1e-3, 1e9)
    assert len(many) <= 9 and all(math.log10(t).is_integer() for t in many)
    low, high = units.log_range([8.2])
    assert low < 8.2 < high and high / low >= 4


def test_every_label_of_a_log_axis_is_at_least_0_01():
    for values in ([0.012, 0.5], [1, 2, 3], [50, 5000]):
        low, high = units.log_range(values)
        assert min(units.log_ticks(low, high)) >= 0.01


def _table(rows: list[dict]) -> Table:
    full = []
    for row in rows:
        empty = {name: {"str": "", "int": -1, "float": np.nan}[spec[0]]
                 for name, spec in ariqa.COLUMNS.items()}
        full.append({**empty, **row})
    return Table({name: np.array([r[name] for r in full], dtype=spec[0])
                  for name, spec in ariqa.COLUMNS.items()})


def test_the_ariqa_summary_counts_each_verdict_and_keeps_the_compared_differences(tmp_path):
    work = {}
    for name, rows in {
        "uid___A001_X1_X1": [{"product": "a", "verdict": "accept", "reason": "ok",
                              "reldiff_peak": 0.05, "reldiff_flux": -0.1, "reldiff_rms": 0.02,
                              "reldiff_dynamic_range": 0.03},
                             {"product": "b", "verdict": "no-counterpart", "reason": "none"}],
        "uid___A001_X1_X2": [{"product": "c", "verdict": "reject", "reason": "rms 1.5 x",
                              "reldiff_peak": -0.2, "reldiff_flux": 0.3, "reldiff_rms": 0.2,
                              "reldiff_dynamic_range": -0.25}],
    }.items():
        (tmp_path / name / "qa").mkdir(parents=True)
        ariqa.write_table(_table(rows), tmp_path / name / "qa" / "ariqa.ecsv")
        work[name] = tmp_path / name
    (tmp_path / "bad" / "qa").mkdir(parents=True)
    (tmp_path / "bad" / "qa" / "ariqa.ecsv").write_text("not a table\n")
    found = [ariqa_results.read(n, d) for n, d in work.items()]
    assert ariqa_results.read("bad", tmp_path / "bad") is None          # counted as none
    assert ariqa_results.read("none", tmp_path / "none") is None
    assert [t.summary() for t in found] == ["1 accept, 1 no-counterpart", "1 reject"]
    summary = ariqa_results.summarize(found)
    assert summary.tables == 2
    assert summary.counts == {"accept": 1, "reject": 1, "no-counterpart": 1}
    assert summary.rejected == [("uid___A001_X1_X2", "c", "rms 1.5 x")]
    assert sorted(summary.reldiff["peak"]) == [-0.2, 0.05]


def test_the_reference_bands_say_where_they_come_from():
    bands = ariqa_results.reference_bands(0.3)
    assert (bands["peak"].low, bands["peak"].high) == (-0.15, 0.15)
    assert "ARI study" in bands["peak"].source
    # rms 30 % worse than QA2's: (1.3 - 1) / (1.3 + 1) = 13.0 %
    assert bands["rms"].high == pytest.approx(0.3 / 2.3) and bands["rms"].low is None
    assert bands["dynamic_range"].low == pytest.approx(-0.3 / 2.3)
    assert bands["flux"].low is None and bands["flux"].high is None
    assert list(bands["peak"].holds(np.array([-0.2, 0.0, 0.15]))) == [False, True, True]


def test_the_campaign_figures_draw_each_site_in_its_colour():
    from bokeh.models import GlyphRenderer

    from arihpc.monitor import figures

    def view(sizes_gb, hours, classes, ends):
        return {"progress": {"selected": len(sizes_gb) + 1, "done": len(sizes_gb), "queued": 1,
                             "staging": 0, "running": 0, "failed": 0, "cancelled": 0},
                "runs": {"size_gb": sizes_gb, "hours": hours, "peak_gb": [1.0] * len(hours)},
                "cut_peaks_gb": [], "failure_classes": classes,
                "throughput": {"bin_s": 3600, "start": ends, "done": [1] * len(ends),
                               "total": list(range(1, len(ends) + 1))},
                "expected_end": {"model": {"intercept": 0.0, "slope": 1.0, "points": 3},
                                 "left": 1, "model_end": None, "pace_end": None}}
    eso = view([1.0, 2.0], [1.0, 2.0], {"oom": 2, "tclean": 1}, [0.0, 3600.0])
    mup = view([5.0], [4.0], {"oom": 1}, [7200.0])
    idle = {**view([], [], {}, []), "progress": {**eso["progress"], "selected": 0}}
    campaign = view([1.0, 2.0, 5.0], [1.0, 2.0, 4.0], {"oom": 3, "tclean": 1},
                    [0.0, 3600.0, 7200.0])
    drawn = figures.campaign_figures(campaign, {"eso": eso, "mup": mup, "idle": idle})
    colours = figures.site_colours(["eso", "mup"])

    def labels(plot) -> list[str]:
        return [item.label.value for item in plot.legend[0].items]
    assert labels(drawn["runtime"])[:2] == ["eso (2)", "mup (1)"]     # no MOUS at idle
    scatters = [r for r in drawn["runtime"].renderers if isinstance(r, GlyphRenderer)
                and r.glyph.__class__.__name__ == "Scatter"]
    assert [r.glyph.fill_color for r in scatters] == [colours["eso"], colours["mup"]]
    assert [len(r.data_source.data["x"]) for r in scatters] == [2, 1]
    stacked = drawn["failures"].renderers
    assert [r.glyph.fill_color for r in stacked] == [colours["eso"], colours["mup"]]
    assert dict(zip(stacked[0].data_source.data["class"], stacked[0].data_source.data["eso"])
                ) == {"oom": 2, "tclean": 1}
    assert "done at eso" in labels(drawn["throughput"]) and "done at mup" in labels(
        drawn["throughput"])
    alone = figures.campaign_figures(campaign, {"eso": eso})
    assert not any(label.startswith("done at") for label in labels(alone["throughput"]))
