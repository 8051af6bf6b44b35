"""The demo: a whole small campaign on this machine (``arihpc demo``): invented MOUS,
their archive and HTTP server (``archive``), its folder, store and local site (``campaign``).
May import: the layers before it. Must not import cli.
"""
