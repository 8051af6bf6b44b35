"""Torque sites (IT-ARC): dask-jobqueue's PBSCluster with a ``nodes=1:ppn=N,mem=M`` request."""

from dask_jobqueue import PBSCluster
from dask_jobqueue.pbs import PBSJob

from arihpc.sites.profile import NodeClass

cluster_class = PBSCluster
job_class = PBSJob
job_id_variable = "PBS_JOBID"


def resource_options(node_class: NodeClass) -> dict:
    return {"resource_spec": f"nodes=1:ppn={node_class.job_cores},"
                             f"mem={pbs_memory(node_class.job_memory_gb)}"}


def pbs_memory(gb: float) -> str:
    """Memory the way PBS writes it: whole gb where exact, else mb."""
    return f"{int(gb)}gb" if gb == int(gb) else f"{int(gb * 1000)}mb"
