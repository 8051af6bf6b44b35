"""Torque sites (IT-ARC): dask-jobqueue's PBSCluster with a ``nodes=1:ppn=N,mem=M`` request."""

from dask_jobqueue import PBSCluster
from dask_jobqueue.pbs import PBSJob

from arihpc.sites.profile import NodeClass

cluster_class = PBSCluster
job_class = PBSJob
# SLURM's PBS wrappers (the CI sites) run the job under SLURM, which sets SLURM_JOB_ID.
# environment variables that may hold the batch job id, first set wins
job_id_variables = ("PBS_JOBID", "SLURM_JOB_ID")


def resource_options(node_class: NodeClass) -> dict:
    return {"resource_spec": f"nodes=1:ppn={node_class.job_cores},"
                             f"mem={pbs_memory(node_class.job_memory_gb)}"}


def pbs_memory(gb: float) -> str:
    """Memory the way PBS writes it: whole gb where exact, else mb."""
    return f"{int(gb)}gb" if gb == int(gb) else f"{int(gb * 1000)}mb"


def log_directives(folder: str) -> list[str]:
    """Job stdout/stderr into the site's log folder (PBS names them by job)."""
    return [f"-o {folder}/", f"-e {folder}/"]
