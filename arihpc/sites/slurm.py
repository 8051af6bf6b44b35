"""SLURM sites: dask-jobqueue's SLURMCluster; cores and memory become --cpus-per-task and --mem."""

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob

from arihpc.sites.profile import NodeClass

cluster_class = SLURMCluster
job_class = SLURMJob
job_id_variable = "SLURM_JOB_ID"


def resource_options(node_class: NodeClass) -> dict:
    """SLURMJob writes #SBATCH --cpus-per-task and --mem from cores and memory itself."""
    return {}
