"""The store, the campaign's single source of truth: ``schema`` (tables, migrations,
events), ``catalog`` (archive metadata, decisions), ``campaign`` (claims, attempts, stages).
May import: the base modules, catalog, planning. Must not import sites or later layers.
"""
