"""Planning: run time and memory from raw size, a MOUS's route to a node class, and the
Monte Carlo plan of a whole campaign (``arihpc plan``). Pure numbers.
May import: the base modules, catalog. Must not import store, sites or later layers.
"""
