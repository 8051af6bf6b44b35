"""arihpc: re-image archived ALMA data (ARI-L) on HPC clusters.

The modules directly here are the base every layer may import: ``mous`` (the work item),
``errors`` (the exception hierarchy) and ``config`` (packaged defaults in ``arihpc.yaml``, read
through dask.config). They import nothing of arihpc's packages. The packages are the layers of
docs/architecture.md, each importing only the ones before it (tests/test_layers.py checks).
"""

__version__ = "0.1.0"
