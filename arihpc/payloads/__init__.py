"""Payloads: the stage commands that make images. Real CASA 6 (restore, image, export, and
simulate for tests and the demo, run offline), and the emulator that stands in for them in tests
and benchmarks of the HPC layer.

May import: the base modules and the runner (work directory, manifest, fetch). Must not import
products, the campaign or later. Each module with a ``main`` runs as ``python -m``.
"""
