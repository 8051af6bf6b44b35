"""PBS Pro sites (MUP): the same PBS job as Torque's (torque.py), asking for its node with a
``select=1:ncpus=N:mem=M`` chunk instead of ``nodes=1:ppn=N``."""

from arihpc.sites.profile import NodeClass
from arihpc.sites.torque import (  # noqa: F401 (PBS Pro's are the same)
    cluster_class,
    job_class,
    job_id_variables,
    log_directives,
    pbs_memory,
)


def resource_options(node_class: NodeClass) -> dict:
    return {"resource_spec": f"select=1:ncpus={node_class.job_cores}:"
                             f"mem={pbs_memory(node_class.job_memory_gb)}"}
