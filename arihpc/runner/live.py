"""The stages running in this worker process right now, published to the site's dask scheduler.

Each worker heartbeat carries its custom metrics to the scheduler (dask's own mechanism), so the
dashboard reads a running MOUS's stage and memory from the scheduler's ``/json/identity.json``
without asking any worker. Nothing here writes the store.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

METRIC = "arihpc"       # the key of this module's entry in a worker's metrics

_running: dict[str, dict] = {}
_lock = threading.Lock()


class RunningStage:
    """One stage's live figures, from the process runner's samples of its process tree."""

    def __init__(self, uid: str, stage: str, attempt: int):
        self.entry = {"uid": uid, "stage": stage, "attempt": attempt, "started": time.time(),
                      "rss": 0, "peak_rss": 0, "cpu_percent": 0.0}
        self._last = (time.monotonic(), 0.0)

    def sample(self, rss: int, cpu_s: float) -> None:
        """The tree's RSS (bytes) and CPU time so far (s); CPU % over the last second or so."""
        now = time.monotonic()
        with _lock:
            self.entry["rss"] = rss
            self.entry["peak_rss"] = max(self.entry["peak_rss"], rss)
            if now - self._last[0] >= 1.0:
                self.entry["cpu_percent"] = 100 * (cpu_s - self._last[1]) / (now - self._last[0])
                self._last = (now, cpu_s)


@contextmanager
def running(uid: str, stage: str, attempt: int) -> Iterator[RunningStage]:
    """Publish a stage while it runs."""
    stage_now = RunningStage(uid, stage, attempt)
    with _lock:
        _running[uid] = stage_now.entry
    try:
        yield stage_now
    finally:
        with _lock:
            _running.pop(uid, None)


def snapshot() -> list[dict]:
    """Copies of the entries of the stages running in this process."""
    with _lock:
        return [dict(entry) for entry in _running.values()]


def publish(worker) -> None:
    """Add this process's running stages to the metrics a dask worker sends the scheduler."""
    worker.metrics.setdefault(METRIC, lambda _worker: snapshot())
