"""The store: the campaign's single source of truth (SQLAlchemy Core, SQLite or PostgreSQL).
``schema`` (tables, migrations, opening, events), ``catalog`` (archive metadata, decisions),
``campaign`` (claims, attempts, stages, recovery, status: written by the orchestrator only).

May import: the base modules, catalog and planning. Must not import sites, the runner or later.
"""
