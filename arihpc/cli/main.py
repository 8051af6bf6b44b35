"""The ``arihpc`` command: the group, its global options, and every command module's commands.

Each command group lives in a module of its own (catalog, sites, plan, campaign, demo,
monitor, ms, export); this one registers them. The command-line layer is the only one that
prints.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from arihpc import __version__, config
from arihpc.cli import campaign, catalog, demo, export, monitor, ms, plan, sites
from arihpc.errors import ArihpcError, ProfileError


class ArihpcGroup(click.Group):
    """Turn arihpc's own errors into one clear line and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArihpcError as e:
            error = click.ClickException(str(e))
            if isinstance(e, ProfileError):
                error.exit_code = 2         # a bad profile is bad usage: nothing was submitted
            raise error from e


@click.group(cls=ArihpcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="arihpc")
@click.option("--store", "store", metavar="URL", envvar="ARIHPC_STORE",
              help="Campaign store: an SQLite file path or URL (default ./arihpc.db), or "
                   "postgresql://user@host/db for a store shared by several sites. "
                   "Also $ARIHPC_STORE.")
@click.option("--config", "config_file", metavar="FILE", envvar="ARIHPC_CONFIG",
              type=click.Path(dir_okay=False),
              help="Campaign config file overriding arihpc/arihpc.yaml (thresholds, order). "
                   "Also $ARIHPC_CONFIG.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def main(ctx: click.Context, store: str | None, config_file: str | None, verbose: bool) -> None:
    """arihpc: re-image archived ALMA MOUS (ARI-L) on HPC clusters.

    \b
    A campaign starts from archive exports:
      arihpc catalog import survey.tsv obscore.xml datalink.xml
      arihpc select            # apply the ARI-L rules, record the decisions
      arihpc queue             # the selected MOUS in the order they will run
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="arihpc: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        ctx.with_resource(config.campaign_config(config_file))
    except ArihpcError as e:
        raise click.ClickException(str(e)) from e
    ctx.obj = {"store": store}


for _module in (catalog, sites, plan, campaign, demo, monitor, ms, export):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
