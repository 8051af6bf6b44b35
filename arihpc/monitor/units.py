"""Units a person reads, picked from the data: s/min/h/d for durations, kB/MB/GB/TB for sizes.

Every axis and every table cell of the dashboard and the report goes through here. A column or
an axis shows its values in one unit, the largest in which the median is at least 1, made
smaller while the smallest value would show below ``MIN_SHOWN`` (0.01) of it. Histogram bins
and log-axis ticks are "nice" numbers (1, 2 or 5 times a power of ten) in that unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

MIN_SHOWN = 0.01        # no axis or table shows a value below this in its unit (but zero)


@dataclass(frozen=True)
class Unit:
    """One unit of a scale: its name and how many base units (seconds, bytes) it holds."""

    name: str
    factor: float

    def of(self, values) -> np.ndarray:
        """Values in base units, in this unit."""
        return np.asarray(values, dtype=float) / self.factor

    def label(self, quantity: str) -> str:
        """An axis label: 'run time (min)'."""
        return f"{quantity} ({self.name})"


DURATION: tuple[Unit, ...] = (Unit("ms", 1e-3), Unit("s", 1), Unit("min", 60),
                              Unit("h", 3600), Unit("d", 86400))
SIZE: tuple[Unit, ...] = (Unit("B", 1), Unit("kB", 1e3), Unit("MB", 1e6), Unit("GB", 1e9),
                          Unit("TB", 1e12))
EMPTY = 2               # the unit of a scale shown when there is no value: min, MB


def _positive(values: Iterable[float | None]) -> np.ndarray:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    return data[np.isfinite(data) & (data > 0)]


def pick(values: Iterable[float | None], scale: Sequence[Unit]) -> Unit:
    """The unit of ``scale`` to show these values (base units) in; min or MB when there is
    no positive value."""
    data = _positive(values)
    if not data.size:
        return scale[EMPTY]
    median = float(np.median(data))
    index = max([i for i, unit in enumerate(scale) if median >= unit.factor], default=0)
    while index > 0 and data.min() / scale[index].factor < MIN_SHOWN:
        index -= 1
    return scale[index]


def number(value: float | None) -> str:
    """Three significant figures at most, no exponent, no trailing zeros: 0.05, 1.5, 12.3,
    123, 12,345."""
    if value is None or not math.isfinite(value):
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    text = f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= MIN_SHOWN \
        else f"{value:.2g}"
    return text.rstrip("0").rstrip(".") if "." in text and "e" not in text else text


def shown(value: float | None, unit: Unit) -> str:
    """A value (base units) in this unit with its name: '12.3 min'."""
    return "-" if value is None else f"{number(value / unit.factor)} {unit.name}"


def human(value: float | None, scale: Sequence[Unit]) -> str:
    """One value (base units) in the unit picked for it alone (the largest it is at least
    one of): '42 s', '3.5 GB'. Plain Python: a table of 100,000 rows calls it 400,000 times."""
    if value is None or value != value:
        return "-"
    unit = scale[EMPTY] if value == 0 else scale[0]
    for candidate in scale:
        if abs(value) >= candidate.factor:
            unit = candidate
    return f"{number(value / unit.factor)} {unit.name}"


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``raw`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _rounded(values: np.ndarray, step: float) -> np.ndarray:
    """Multiples of ``step`` without float noise (0.30000000000000004 -> 0.3)."""
    return np.round(values, max(0, 1 - math.floor(math.log10(step))))


def nice_bins(values: Iterable[float], bins: int = 12, finest: float = 0.02) -> np.ndarray:
    """Histogram edges at multiples of a nice step covering the values: about ``bins`` bins
    over their spread, none narrower than ``finest`` of the largest value (nearly equal
    values fall in one or two bins, not in bins 0.0001 wide). Empty when there is no value."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    data = data[np.isfinite(data)]
    if not data.size:
        return np.array([])
    low, high = float(data.min()), float(data.max())
    scale = max(abs(low), abs(high)) or 1.0
    step = nice_step(max((high - low) / bins, scale * finest))
    first, last = math.floor(low / step), math.floor(high / step) + 1
    return _rounded(np.arange(first, last + 1) * step, step)


def log_ticks(low: float, high: float, most: int = 8, margin: float = 1.0) -> list[float]:
    """Ticks for a log axis over [low, high] (> 0): every 1-2-5 multiple of a power of ten
    when that gives at most ``most`` inside, else 1-3, else the powers of ten (every 2nd,
    3rd... when even those are too many); continued a factor ``margin`` beyond each end."""
    first = math.floor(math.log10(low / margin))
    last = math.ceil(math.log10(high * margin))
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = [float(_rounded(np.array([m * 10.0 ** p]), m * 10.0 ** p)[0])
                 for p in range(first, last + 1) for m in mantissas]
        if sum(low <= t <= high for t in ticks) <= most:
            return [t for t in ticks if low / margin <= t <= high * margin]
    every = math.ceil((math.log10(high) - math.log10(low) + 1) / most)
    return [10.0 ** p for p in range(first, last + 1, every)]


def log_range(values: Iterable[float]) -> tuple[float, float]:
    """A log axis's range around positive values: a factor 1.5 beyond each end, and at
    least a factor 4 wide, so one value alone still shows two ticks."""
    data = _positive(values)
    if not data.size:
        return 1.0, 10.0
    low, high = float(data.min()) / 1.5, float(data.max()) * 1.5
    if high / low < 4:
        middle = math.sqrt(low * high)
        low, high = middle / 2, middle * 2
    return low, high
