"""The catalog: ALMA archive exports read into one record per MOUS, the ARI-L selection
and the priority order. Pure functions; no I/O but reading the input files.
May import: the base modules (mous, errors, config). Must not import any package.
"""
