"""Loaded into each batch job's dask worker (``--preload arihpc.runner.worker_watch``): the
worker ends when the job's shell does.

The worker runs without a nanny. When a job ends (scancel, the walltime, qdel), the batch system
signals the job's shell and the worker; a worker caught closing by that signal can hang, and
once its shell is gone it is a child of init, which batch systems tracking processes by parent
(SLURM's proctrack/linuxproc, Torque without cgroups) no longer kill: it would hold the node's
memory and its scheduler connection. So a thread watches the parent and ends the process when it
changes, as arihpc/runner/guard.py does for a stage.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)
POLL_S = 1.0
EXIT_STATUS = 143           # as if SIGTERM had ended it: what the job's end meant


def watch_parent(parent: int, poll_s: float = POLL_S) -> None:
    """Return only by ending the process, once its parent is no longer ``parent``."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning("the job's shell (pid %d) is gone: this worker ends with it", parent)
    logging.shutdown()
    os._exit(EXIT_STATUS)


def dask_setup(worker) -> None:
    """dask's preload hook: start the watch (a daemon thread: it never keeps the worker up)."""
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True,
                     name="arihpc-parent-watch").start()
