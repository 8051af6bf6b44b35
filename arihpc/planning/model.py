"""Predict a MOUS's run time and peak memory from its raw size.

The model is linear in log-log space (the ARI study: run time grows as a power of raw size):
``log10(y) = intercept + slope * log10(size_gb)``. Until the campaign has enough finished
attempts, the defaults in ``arihpc.planning`` (median MOUS 13 GB, median run 7 h) are used;
``fit`` replaces them with a least-squares fit on the campaign's own history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from arihpc import config


@dataclass(frozen=True)
class PowerLaw:
    """y = 10**intercept * size_gb**slope, fitted on ``points`` runs (0: the defaults)."""

    intercept: float
    slope: float
    points: int = 0

    def __call__(self, size_gb):
        """The value at this size (GB), or at each size of an array."""
        return 10 ** self.intercept * np.maximum(size_gb, 1e-3) ** self.slope

    def inverse(self, value):
        """The size (GB) at which the law gives ``value`` (arrays too); slope 0: infinite."""
        if self.slope == 0:
            return np.where(np.asarray(value) >= 10 ** self.intercept, np.inf, 0.0)
        return (np.asarray(value, dtype=float) / 10 ** self.intercept) ** (1 / self.slope)

    @classmethod
    def through(cls, size_gb: float, value: float, slope: float) -> "PowerLaw":
        """The power law of this slope through one point (e.g. the study's medians)."""
        return cls(math.log10(value) - slope * math.log10(size_gb), slope)


def default_models() -> tuple[PowerLaw, PowerLaw]:
    """(run time in hours, peak memory in GB) from arihpc.planning in arihpc.yaml."""
    get = config.get
    median = float(get("planning.median-size-gb"))
    runtime = PowerLaw.through(median, float(get("planning.median-runtime-h")),
                               float(get("planning.runtime-slope")))
    memory = PowerLaw.through(median, float(get("planning.median-memory-gb")),
                              float(get("planning.memory-slope")))
    return runtime, memory


def fit(sizes_gb: Sequence[float], values: Sequence[float], fallback: PowerLaw) -> PowerLaw:
    """Least squares in log-log space; the fallback until there are enough distinct sizes."""
    pairs = [(s, v) for s, v in zip(sizes_gb, values) if s and v and s > 0 and v > 0]
    if len(pairs) < int(config.get("planning.min-history")) or \
            len({round(math.log10(s), 3) for s, _ in pairs}) < 2:
        return fallback
    x = np.log10([s for s, _ in pairs])
    y = np.log10([v for _, v in pairs])
    slope, intercept = np.polyfit(x, y, 1)
    return PowerLaw(float(intercept), float(slope), len(pairs))


@dataclass(frozen=True)
class Prediction:
    runtime_h: float
    memory_gb: float


def predict(size_gb: float | None, runtime: PowerLaw, memory: PowerLaw) -> Prediction:
    """Run time and peak memory of a MOUS; an unknown size counts as the median size."""
    size = size_gb if size_gb else float(config.get("planning.median-size-gb"))
    return Prediction(float(runtime(size)), max(float(config.get("planning.min-memory-gb")),
                                                float(memory(size))))


def total_runtime_h(sizes_gb: Sequence[float | None], runtime: PowerLaw) -> float:
    """Predicted run time (h) of all these MOUS together; an unknown size counts as the
    median size. Vectorised: a campaign of 100,000 MOUS takes milliseconds."""
    median = float(config.get("planning.median-size-gb"))
    sizes = np.array([s if s else median for s in sizes_gb], dtype=float)
    return float(np.sum(runtime(sizes)))


def campaign_hours(predictions: Iterable[Prediction], slots: int) -> float:
    """Wall-clock hours to run these MOUS on ``slots`` MOUS slots kept busy."""
    return sum(p.runtime_h for p in predictions) / max(1, slots)
