"""Route a MOUS to a site and node class from its size and predicted memory.

A site takes the MOUS its size routing admits (``min-size-gb``, ``max-size-gb``); of its node
classes the smallest one with the memory whose largest-MOUS limit admits it runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from arihpc.planning.model import Prediction


@dataclass(frozen=True)
class Route:
    site: str
    node_class: str
    jobs: int            # batch jobs the MOUS needs (it resumes across walltime cuts)


def node_class_for(site, memory_gb: float, size_gb: float | None):
    """The smallest node class of a site with this memory that takes a MOUS of this size."""
    fitting = [c for c in site.node_classes if c.job_memory_gb >= memory_gb
               and (c.max_size_gb is None or (size_gb or 0) <= c.max_size_gb)]
    return min(fitting, key=lambda c: c.job_memory_gb) if fitting else None


def route(size_gb: float | None, prediction: Prediction, sites: Iterable) -> Route | None:
    """The first site (and its smallest fitting node class) that takes this MOUS, or None.

    ``sites`` are SiteProfile objects: their size routing, node classes' memory and
    largest-MOUS limits decide; the walltime decides how many jobs the MOUS needs.
    """
    size = size_gb or 0.0
    for site in sites:
        if size < site.min_size_gb or (site.max_size_gb is not None and size > site.max_size_gb):
            continue
        chosen = node_class_for(site, prediction.memory_gb, size)
        if chosen is None:
            continue
        usable_h = (site.walltime_s - site.drain_margin_s) / 3600
        return Route(site.name, chosen.name, max(1, math.ceil(prediction.runtime_h / usable_h)))
    return None
