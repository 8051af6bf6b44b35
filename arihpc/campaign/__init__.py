"""The campaign: the orchestrator that keeps one site busy (``arihpc run``). It claims MOUS
from the store, submits them to the site's dask workers, and turns every outcome into store
updates, retries and resumes (``outcomes``), knowing each worker's deadline and load
(``workers``). The only writer of campaign progress.

May import: every layer before it. Must not import monitor, demo or cli.
"""
