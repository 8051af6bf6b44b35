"""Sites: the site profile, its dask-jobqueue cluster (one thin module per batch system),
the batch queue read back, and ``command``, the one function for short external commands.
May import: the layers before it. Must not import the runner or later layers.
"""
