"""Old path of arihpc.runner.worker_watch, preloaded by job scripts submitted before it moved."""

from arihpc.runner.worker_watch import dask_setup

__all__ = ["dask_setup"]
