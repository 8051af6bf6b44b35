"""Old module paths that job scripts written before this package layout name: the
``arihpc.jobs.worker_watch`` preload and ``python -m arihpc.jobs.runner`` (now arihpc.runner).
May import: the runner, to alias it. Must not be imported by anything in arihpc.
"""
