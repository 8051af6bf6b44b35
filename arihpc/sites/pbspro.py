"""PBS Pro sites (MUP): dask-jobqueue's PBSCluster with a ``select=1:ncpus=N:mem=M`` chunk."""

from dask_jobqueue import PBSCluster
from dask_jobqueue.pbs import PBSJob

from arihpc.sites.profile import NodeClass
from arihpc.sites.torque import log_directives, pbs_memory  # noqa: F401 (same for PBS Pro)

cluster_class = PBSCluster
job_class = PBSJob
# SLURM's PBS wrappers (the CI sites) run the job under SLURM, which sets SLURM_JOB_ID.
# environment variables that may hold the batch job id, first set wins
job_id_variables = ("PBS_JOBID", "SLURM_JOB_ID")


def resource_options(node_class: NodeClass) -> dict:
    return {"resource_spec": f"select=1:ncpus={node_class.job_cores}:"
                             f"mem={pbs_memory(node_class.job_memory_gb)}"}
