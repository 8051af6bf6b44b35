"""The monitor: read-only views of a campaign (``arihpc status``, the dashboard, the
report) from the store, the batch queue and the sites' dask schedulers. Never writes.
May import: the layers before it. Must not import demo or cli.
"""
