"""Planning: a MOUS's run time and memory predicted from its raw size, its route to a site and
node class, and the Monte Carlo simulation of a whole campaign (``arihpc plan``). Pure numbers.

May import: the base modules and catalog. Must not import the store, sites or anything later:
profiles reach it as arguments.
"""
