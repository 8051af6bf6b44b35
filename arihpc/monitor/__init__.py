"""The monitor: read-only views of a campaign (``arihpc status``, the live dashboard, the
static report), from the store, the batch queue and the sites' dask schedulers. Never writes.

May import: every layer before it (what the campaign does reaches it through the store and the
schedulers). Must not import demo or cli.
"""
