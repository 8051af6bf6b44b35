"""The local site: a dask LocalCluster on this machine, one worker process per "job"."""

from __future__ import annotations

from distributed import LocalCluster, Nanny

from arihpc.sites.profile import NodeClass


def start_cluster(dashboard_address: str) -> LocalCluster:
    return LocalCluster(n_workers=0, processes=True, dashboard_address=dashboard_address)


def worker_spec(node_class: NodeClass, resources: dict[str, float], env: dict[str, str]) -> dict:
    """A worker like one batch job of this node class: same threads, memory and resources."""
    # Stages run as subprocesses, so a thread only waits: a fetch ahead needs its own thread
    # beside the compute slots even on a one-core "node".
    threads = max(node_class.job_cores, int(resources["slots"] + resources.get("io", 0)))
    return {"cls": Nanny, "options": {
        "nthreads": threads,
        "memory_limit": int(node_class.job_memory_gb * 1e9),
        "resources": resources,
        "env": env,
    }}
