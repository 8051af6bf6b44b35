"""The local site: a dask LocalCluster on this machine, one worker process per "job"."""

from __future__ import annotations

from distributed import LocalCluster, Nanny

from arihpc.sites.profile import NodeClass


def start_cluster(dashboard_address: str) -> LocalCluster:
    return LocalCluster(n_workers=0, processes=True, dashboard_address=dashboard_address)


def worker_spec(node_class: NodeClass, env: dict[str, str]) -> dict:
    """A worker like one batch job of this node class: same threads, memory and resources."""
    return {"cls": Nanny, "options": {
        "nthreads": node_class.job_cores,
        "memory_limit": int(node_class.job_memory_gb * 1e9),
        "resources": {"slots": node_class.slots, "memory_gb": node_class.job_memory_gb},
        "env": env,
    }}
