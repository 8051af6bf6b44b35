"""What a freshly started worker reports about itself: proof the batch job is set up right."""

from __future__ import annotations

import os
import socket
import time


def probe(dask_worker=None) -> dict:
    """Host, batch job, DISPLAY, deadline and advertised resources of the worker running this.

    Run it with ``client.run(probe)``: dask passes the worker as ``dask_worker``.
    """
    from distributed import get_worker

    worker = dask_worker or get_worker()
    deadline = os.environ.get("ARIHPC_DEADLINE")
    return {
        "host": socket.gethostname(),
        "site": os.environ.get("ARIHPC_SITE"),
        "node_class": os.environ.get("ARIHPC_NODE_CLASS"),
        "batch_job": os.environ.get("ARIHPC_BATCH_JOB"),
        "display": os.environ.get("DISPLAY"),
        "job_start": int(os.environ.get("ARIHPC_JOB_START", "0")) or None,
        "deadline": int(deadline) if deadline else None,
        "left_s": int(deadline) - int(time.time()) if deadline else None,
        "resources": dict(worker.state.total_resources),
        "worker": worker.name,
    }
