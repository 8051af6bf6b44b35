"""arihpc.monitor: see ../shared/ARCHITECTURE.md (layer list)."""
