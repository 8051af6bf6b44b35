"""The campaign: the orchestrator behind ``arihpc run``, which claims MOUS, submits them to
a site's workers and turns every outcome into store updates, retries and resumes.
May import: the layers before it. Must not import monitor, demo or cli.
"""
