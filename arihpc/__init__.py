"""arihpc: re-image archived ALMA data (ARI-L) on HPC clusters.

The modules directly here are the base every layer may import: ``mous`` (the work item),
``errors`` (the exception hierarchy) and ``config`` (packaged defaults in ``arihpc.yaml``, read
through dask.config). They import nothing of arihpc's packages. The packages are the layers of
docs/architecture.md, each importing only the ones before it (tests/test_layers.py checks).

One name here reaches up the layers, on purpose and only when called: ``open_campaign``, the
entry point for notebooks, loads arihpc.monitor.tables (and pandas) at its first call, so
``import arihpc`` stays light and the base imports nothing of the layers when it is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def open_campaign(store_url: str | None = None) -> Any:
    """Open a campaign store for analysis: its tables as pandas DataFrames.

    ``store_url``: a path or URL as ``arihpc --store`` takes it (default $ARIHPC_STORE, else
    ./arihpc.db). The ``arihpc.monitor.tables.Campaign`` returned has ``.mous()``,
    ``.attempts()``, ``.stages()`` and ``.queue()`` (the same tables as ``arihpc export``)
    and ``.close()``; use it in a ``with`` block. See docs/notebook.md.
    """
    # By module name, at call time: the base layer itself imports none of the layers.
    return importlib.import_module("arihpc.monitor.tables").open_campaign(store_url)
