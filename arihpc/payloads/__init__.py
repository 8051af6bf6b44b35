"""Payloads: the stage commands that make images, real CASA 6 (restore, image, export,
simulate) run offline, and the emulator standing in for it in tests and benchmarks.
May import: the layers before it (the runner's work directory, manifest, fetch). Must not import
products or later layers.
"""
