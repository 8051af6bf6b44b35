"""The demo: a whole small campaign on this machine (``arihpc demo``): invented MOUS, their
archive exports and raw data served over HTTP (``archive``), and the demo's folder, store and
local site (``campaign``).

May import: every layer before it. Must not import cli.
"""
