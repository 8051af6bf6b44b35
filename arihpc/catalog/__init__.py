"""The catalog: real ALMA archive exports read into one record per MOUS, the ARI-L selection
and the campaign's order. Pure functions over MOUS records, no I/O but reading input files.

May import: the base modules (mous, errors, config). Must not import any other package.
"""
