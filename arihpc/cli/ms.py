"""``arihpc ms``: the calibrated measurement sets kept in a site's MS store (storage.ms-store),
for a user support request."""

from __future__ import annotations

from pathlib import Path

import click

from arihpc.cli.common import emit, output_option
from arihpc.errors import ArihpcError
from arihpc.products import ms_store
from arihpc.sites import profile

COLUMNS = ("uid", "bytes", "sha256", "written", "retain_until", "expired", "tar")


def _template(site: str) -> str:
    found = profile.load_profile(site).storage.ms_store
    if not found:
        raise ArihpcError(f"site {site} keeps no calibrated MS: its profile has no "
                          "storage.ms-store (a folder template with {uid})")
    return found


@click.group("ms")
def ms_group() -> None:
    """The calibrated MS of each MOUS, kept after the restore stage in the site's MS store
    (storage.ms-store in the site profile): one tar with its sha256 and retention date."""


@ms_group.command("list")
@click.option("--site", required=True, metavar="SITE", help="Site profile (name or YAML file).")
@output_option
def ms_list(site: str, output: str) -> None:
    """Every MOUS whose calibrated MS the site keeps, with its size, sha256 and retention date."""
    records = ms_store.kept(_template(site))
    emit(records, COLUMNS, output)
    if output == "table" and not records:
        click.echo("no calibrated MS kept yet")


@ms_group.command("fetch")
@click.argument("uid")
@click.option("--site", required=True, metavar="SITE", help="Site profile (name or YAML file).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to unpack the measurement set(s) into.")
def ms_fetch(uid: str, site: str, dest: Path) -> None:
    """Check UID's kept tar against its sha256, then unpack its measurement set(s) into DEST."""
    got = ms_store.fetch(_template(site), uid, dest.resolve())
    for name in got["ms"]:
        click.echo(f"{Path(got['dest']) / name}")
    click.echo(f"sha256 {got['verified_sha256']} verified ({got['bytes']} bytes, kept until "
               f"{got['retain_until']})")


COMMANDS = [ms_group]
