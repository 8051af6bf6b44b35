"""``python -m arihpc.cli``: the ``arihpc`` command, from a checkout or a job without the script."""

from arihpc.cli.main import main

main()
