"""The monitor: read-only views of a campaign (``arihpc status``, the dashboard, the
report) from the store, the batch queue and the sites' dask schedulers, and the MOUS's work
directories. Never writes, but its cache of the ARIQA tables and thumbnails it has made
(monitor.ariqa-cache, filecache.py).
May import: the layers before it. Must not import demo or cli.
"""
