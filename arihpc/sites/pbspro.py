"""PBS Pro sites (MUP): dask-jobqueue's PBSCluster with a ``select=1:ncpus=N:mem=M`` chunk."""

from dask_jobqueue import PBSCluster
from dask_jobqueue.pbs import PBSJob

from arihpc.sites.profile import NodeClass
from arihpc.sites.torque import pbs_memory

cluster_class = PBSCluster
job_class = PBSJob
job_id_variable = "PBS_JOBID"


def resource_options(node_class: NodeClass) -> dict:
    return {"resource_spec": f"select=1:ncpus={node_class.job_cores}:"
                             f"mem={pbs_memory(node_class.job_memory_gb)}"}
