"""SLURM sites: dask-jobqueue's SLURMCluster; cores and memory become --cpus-per-task and --mem."""

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob

from arihpc.sites.profile import NodeClass

cluster_class = SLURMCluster
job_class = SLURMJob
# environment variables that may hold the batch job id, first set wins
job_id_variables = ("SLURM_JOB_ID",)


def resource_options(node_class: NodeClass) -> dict:
    """SLURMJob writes #SBATCH --cpus-per-task and --mem from cores and memory itself."""
    return {}


def log_directives(folder: str) -> list[str]:
    """Job stdout/stderr into the site's log folder, named by job name and id."""
    return [f"--output={folder}/%x-%j.out", f"--error={folder}/%x-%j.err"]
