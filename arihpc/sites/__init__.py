"""arihpc.sites: see ../shared/ARCHITECTURE.md (layer list)."""
