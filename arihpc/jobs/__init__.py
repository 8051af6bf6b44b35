"""arihpc.jobs: see ../shared/ARCHITECTURE.md (layer list)."""
