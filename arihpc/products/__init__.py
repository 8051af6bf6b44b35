"""ARI-L products: the qa, preview and package stages (``stages``, run as ``python -m``) and
what they use: computed FITS keywords, ARIQA against the archived QA2 images, PNG previews,
completed headers, the ari_l/ folder, its README and the tar for ingestion.

May import: the base modules and the runner (work directory, manifest). Must not import the
campaign or later.
"""
