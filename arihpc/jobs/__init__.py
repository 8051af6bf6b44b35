"""Old module paths, kept only for batch job scripts written before the packages of
docs/architecture.md: every arihpc job script so far preloads ``arihpc.jobs.worker_watch``,
and hand-written ones may run ``python -m arihpc.jobs.runner``. Both now live in
``arihpc.runner``; new job scripts name that.

May import: the runner, to alias it. Must not be imported by anything in arihpc.
"""
