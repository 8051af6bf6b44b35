"""The ``arihpc`` command (click): ``main`` (group, global options), ``common`` (output
formats, the --store store), one module per command group. The only layer that prints.
May import: every layer. Nothing imports it.
"""
