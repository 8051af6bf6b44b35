"""The runner: what runs inside a batch job, whatever the payload: a MOUS's stages, each
an external command under the process guard, with checkpoints, lock, fetch, failure classes.
May import: the layers before it. Must not import payloads or products (it starts them by name).
"""
