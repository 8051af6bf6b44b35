"""Sites: a site profile (validated YAML from site-configs/), the dask-jobqueue cluster built
for it (one thin module per batch system), the batch queue read back, and ``command``, the one
function every short external command goes through.

May import: the base modules, catalog, planning, store. Must not import the runner or later.
"""
