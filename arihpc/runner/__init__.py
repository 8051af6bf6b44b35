"""The runner: what runs inside a batch job, whatever the payload. ``run`` takes one MOUS
through its stages (``plans`` says which command each stage is), each under the process guard
(``process``, ``guard``), with checkpoints and a lock (``workdir``), the fetch stage, the
failure classes, and what a worker reports live.

May import: the base modules and the layers before it. Must not import payloads, products or
later: it starts their stage commands by module name, as external commands.
"""
