"""The resource model (log-log linear), routing to sites, and jobs per MOUS."""

import math

import numpy as np
import pytest

from arihpc.planning.model import (
    PowerLaw,
    Prediction,
    campaign_hours,
    default_models,
    fit,
    predict,
)
from arihpc.planning.routing import route
from arihpc.sites.profile import load_profile


def test_defaults_put_the_median_mous_at_the_study_median():
    runtime, memory = default_models()
    assert runtime(13) == pytest.approx(7) and memory(13) == pytest.approx(8)
    assert runtime(130) == pytest.approx(70)                 # slope 1: ten times the size
    assert (runtime.points, memory.points) == (0, 0)


def test_fit_recovers_a_power_law_from_history():
    rng = np.random.default_rng(3)
    sizes = 10 ** rng.uniform(0, 3, 60)
    hours = 0.2 * sizes ** 0.8 * 10 ** rng.normal(0, 0.05, 60)
    model = fit(sizes, hours, default_models()[0])
    assert model.slope == pytest.approx(0.8, abs=0.05)
    assert 10 ** model.intercept == pytest.approx(0.2, rel=0.15)
    assert model.points == 60


def test_too_little_history_keeps_the_defaults():
    fallback = default_models()[0]
    assert fit([10, 20], [1, 2], fallback) is fallback
    assert fit([10] * 9, [1] * 9, fallback) is fallback          # one size: no slope
    assert fit([0, -1, 5], [1, 1, 0], fallback) is fallback


def test_unknown_size_is_predicted_as_the_median():
    runtime, memory = default_models()
    assert predict(None, runtime, memory) == predict(13, runtime, memory)
    assert predict(0.01, runtime, memory).memory_gb == 2          # the floor


def test_routing_follows_size_rules_memory_and_walltime():
    sites = [load_profile(n) for n in ("eso", "itarc", "mup")]
    small = route(10, Prediction(3, 6), sites)
    assert (small.site, small.node_class, small.jobs) == ("itarc", "opteron8", 1)
    large_mem = route(10, Prediction(3, 20), sites)
    assert (large_mem.site, large_mem.node_class) == ("itarc", "xeon32")
    # over 100 GB goes to ESO, on the smallest node class whose memory fits
    big = route(300, Prediction(200, 100), sites)
    assert (big.site, big.node_class) == ("eso", "mem128")
    assert big.jobs == math.ceil(200 / ((168 * 3600 - 600) / 3600))
    # a run longer than MUP's 96 h walltime is planned as several jobs
    mup = route(50, Prediction(300, 30), [load_profile("mup")])
    assert mup.jobs == math.ceil(300 / (96 - 10 / 60)) == 4
    assert route(50, Prediction(3, 500), sites) is None            # no node has the memory


def test_campaign_hours():
    assert campaign_hours([Prediction(10, 1)] * 7, slots=7) == 10
    assert PowerLaw.through(13, 7, 1)(26) == pytest.approx(14)
