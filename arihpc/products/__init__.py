"""ARI-L products: the qa, preview and package stages and what they use: computed
keywords, ARIQA against the archived QA2 images, previews, headers, the ari_l/ folder and tar.
May import: the layers before it. Must not import the campaign or later layers.
"""
