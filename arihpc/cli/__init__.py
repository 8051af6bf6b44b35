"""The ``arihpc`` command (click): ``main`` (the group, global options), one module per command
group, ``common`` (output formats, the store of --store). The only layer that prints.

May import: every layer. Nothing imports it.
"""
