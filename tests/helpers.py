"""Small helpers shared by the tests (not fixtures)."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner, Result

from arihpc.cli.main import main
from arihpc.store.schema import metadata


def run(store_url: str, *args: str) -> Result:
    """Run the arihpc CLI in-process against a store; stdout and stderr kept apart."""
    return CliRunner().invoke(main, ["--store", store_url, *map(str, args)],
                              catch_exceptions=False)


def snapshot(store_url: str) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: equal snapshots mean an unchanged store."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return {name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                    for name, table in metadata.tables.items()}
    finally:
        engine.dispose()


def import_sizes(store_url: str, folder, sizes: dict[str, int]) -> None:
    """Give MOUS their raw sizes (bytes), as a DataLink import would."""
    path = folder / "sizes.csv"
    path.write_text("uid,size_bytes,size_source\n"
                    + "".join(f"{uid},{size},datalink\n" for uid, size in sizes.items()))
    assert run(store_url, "catalog", "import", path).exit_code == 0


def select_mous(store_url: str, folder, uids: list[str],
                sizes: dict[str, int] | None = None) -> None:
    """A store whose MOUS are these uids (cycle 4, QA2 PASS, 12 m), with raw sizes in bytes if
    given, all selected by ``arihpc select``."""
    path = folder / "aq.tsv"
    path.write_text("Member ous id\tProject code\tQA2 Status\tArray\n" + "".join(
        f"{u}\t2016.1.{i:05d}.S\tPASS\t12m\n" for i, u in enumerate(uids)))
    assert run(store_url, "catalog", "import", path).exit_code == 0
    if sizes:
        import_sizes(store_url, folder, sizes)
    assert run(store_url, "select").exit_code == 0
