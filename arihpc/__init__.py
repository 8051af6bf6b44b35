"""arihpc: re-image archived ALMA data (ARI-L) on HPC clusters."""

__version__ = "0.1.0"
