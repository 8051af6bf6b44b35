"""``arihpc demo``: the generated archive export, then the whole campaign from a fresh directory
(real CASA, and the emulator), then a second run in the same directory that does nothing."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from astropy.io import fits
from click.testing import CliRunner

from arihpc.catalog import formats as catalog
from arihpc.catalog import selection
from arihpc.cli.main import main
from arihpc.demo import archive as demo_data
from arihpc.demo import campaign as demo
from arihpc.mous import disk_name
from arihpc.store.schema import attempts, mous, stages


def run_demo(directory: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arihpc.cli", "demo", "--dir", str(directory),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if k != "ARIHPC_STORE"})


def campaign_rows(directory: Path) -> dict:
    """The attempts and stages the store holds, and each MOUS's state and raw size."""
    engine = sa.create_engine(f"sqlite:///{directory / 'arihpc.db'}")
    try:
        with engine.connect() as conn:
            return {"attempts": sorted(map(tuple, conn.execute(sa.select(attempts)))),
                    "stages": sorted(map(tuple, conn.execute(sa.select(stages)))),
                    "mous": {r.uid: (r.state, r.size_bytes) for r in conn.execute(
                        sa.select(mous.c.uid, mous.c.state, mous.c.size_bytes)
                        .where(mous.c.selected.is_(True)))}}
    finally:
        engine.dispose()


def summary_of(stdout: str) -> str:
    """The summary block without its timing."""
    return re.sub(r", \d+ s\)", ")", stdout[stdout.index("\nsummary:"):])


def check_first_run(out: str, selected: int) -> None:
    """Every selected MOUS done, the two first excluded shown with their reasons."""
    assert re.search(r"X5a3 .* excluded: qa2-fail", out) and \
        re.search(r"X5a7 .* excluded: total-power", out), out
    assert f"making the raw data of {selected} MOUS" in out
    assert f"summary: {selected} of {selected} selected MOUS done, 0 failed" in out, out


def check_second_run(directory: Path, first_out: str, total: int, timeout: float) -> dict:
    """A second run builds, imports, decides and runs nothing, and prints the same summary.
    Returns the store's rows."""
    rows = campaign_rows(directory)
    assert {state for state, _ in rows["mous"].values()} == {"done"}
    assert len(rows["attempts"]) == len(rows["mous"])
    archive_times = {p: p.stat().st_mtime_ns for p in (directory / "archive").rglob("*")}
    second = run_demo(directory, timeout=timeout)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert f"nothing to do: {len(rows['mous'])} MOUS already done" in second.stdout, \
        second.stdout
    assert "making the raw data" not in second.stdout and "(reused)" in second.stdout
    assert f"0 new, 0 updated, {total} unchanged" in second.stdout
    assert campaign_rows(directory) == rows
    assert {p: p.stat().st_mtime_ns for p in (directory / "archive").rglob("*")} == archive_times
    if first_out:
        assert summary_of(second.stdout) == summary_of(first_out)
    return rows


def check_two_runs(directory: Path, args: list[str], timeout: float) -> tuple[str, dict]:
    """The first run of a 4-MOUS demo (2 selected), then the second: the first run's output
    and the store's rows."""
    first = run_demo(directory, *args, timeout=timeout)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    check_first_run(first.stdout, 2)
    return first.stdout, check_second_run(directory, first.stdout, 4, timeout)


def test_generated_export_is_an_aq_tsv_that_shows_every_exclusion(tmp_path):
    path = tmp_path / "export.tsv"
    demo_data.write_export(path, demo_data.demo_rows(12))
    assert catalog.detect_format(path) == "aq-tsv"
    read = catalog.read_catalog(path)
    assert not read.errors and len(read.records) == 12
    verdicts = selection.select(read.records.values())
    assert sum(v.selected for v in verdicts) == 6
    assert {v.tier for v in verdicts if v.selected} == {1, 2}
    reasons = {r for v in verdicts for r in v.reasons}
    assert reasons == {"qa2-fail", "total-power", "cycle", "solar", "full-pol", "vlbi"}
    assert len({r.uid for r in demo_data.demo_rows(30)}) == 30


def test_the_payload_is_casa_when_installed_unless_asked_or_made_otherwise(monkeypatch):
    monkeypatch.setattr(demo, "casa_installed", lambda: True)
    assert demo.choose_payload(None, None)[1].startswith("CASA 6 is installed")
    assert demo.choose_payload(None, "emulator")[0] == "emulator"
    assert demo.choose_payload("emulator", "casa")[1].startswith("asked for with --payload")


def test_without_casa_the_emulator_runs_and_says_why(monkeypatch):
    monkeypatch.setattr(demo, "casa_installed", lambda: False)
    payload, why = demo.choose_payload(None, None)
    assert payload == "emulator" and "CASA is not installed" in why
    with pytest.raises(demo.DemoError, match="needs CASA"):
        demo.choose_payload("casa", None)


def test_a_directory_that_is_not_a_demo_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path), "--payload", "emulator"])
    assert result.exit_code == 1 and "not an arihpc demo directory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_help_explains_the_demo():
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    for words in ("archive export", "simobserve", "127.0.0.1", "again"):
        assert words in result.output


def test_emulator_demo_runs_the_campaign_then_does_nothing(tmp_path):
    directory = tmp_path / "demo"
    out, rows = check_two_runs(directory, ["--mous", "4", "--payload", "emulator"], timeout=180)
    assert "payload emulator: asked for with --payload" in out
    for uid in ("uid://A001/X1b4/X5a1", "uid://A001/X1b4/X5a5"):
        disk = disk_name(uid)
        served = directory / "archive" / disk / f"{disk}.asdm.bin"
        fetched = directory / "work" / disk / "fetch" / served.name
        # fetched over HTTP from the demo's archive, checksum and all
        assert fetched.read_bytes() == served.read_bytes()
        assert (directory / "work" / disk / "export" / "export.out").is_file()
        assert rows["mous"][uid][1] == demo_data.EMULATED_BYTES     # size from the DataLink
    changed = run_demo(directory, "--mous", "5", timeout=60)
    assert changed.returncode == 1 and "made with --mous 4 --payload emulator" in changed.stderr


@pytest.mark.casa
def test_casa_demo_makes_fits_products_then_does_nothing(tmp_path, tmp_path_factory):
    # the session's 12-MOUS CASA demo, which test_report.py reads too (one CASA run, not two)
    from test_report import casa_demo, casa_demo_output

    directory = casa_demo(tmp_path_factory)
    out = casa_demo_output()
    if out:                     # not kept for a demo given by $ARIHPC_TEST_CASA_DEMO
        check_first_run(out, 6)
        assert "payload casa: asked for with --payload" in out
    check_second_run(directory, out, 12, timeout=400)
    for uid, source in (("uid://A001/X1b4/X5a1", "NGC3256"), ("uid://A001/X1b4/X5a5", "Arp220")):
        export = directory / "work" / disk_name(uid) / "export"
        products = sorted(export.glob("*.fits"))
        names = [p.name for p in products]
        assert names == [f"member.{disk_name(uid)}.{source}_sci.{kind}.I.pbcor.fits"
                         for kind in ("spw0.cube", "spw0_1.cont", "spw1.cube")]
        tar = directory / "work" / disk_name(uid) / "package" / f"{disk_name(uid)}.ari_l.tar"
        assert tar.is_file() and (not out or f"ARI-L tar {tar}" in out)
        for product in products:
            assert not out or product.name in out
            with fits.open(product) as hdul:
                header, data = hdul[0].header, hdul[0].data
                assert data is not None and data.size > 0 and (data == data).any()
                assert {"BMAJ", "BMIN"} <= set(header)
        manifest = json.loads((directory / "archive" / disk_name(uid) / "MANIFEST.json")
                              .read_text())
        assert manifest["files"][0]["name"].endswith(".ms.tar")
    _check_ms_store(directory, tmp_path)
    _check_lines_and_weblogs(directory)


def _check_lines_and_weblogs(directory: Path) -> None:
    """The injected line is found within one channel of its true frequency, in the line spw
    only; every new FITS passes fitsverify; every done MOUS has a scored weblog."""
    from astropy.table import Table
    from fits_images import fitsverify

    from arihpc.demo.archive import BAND_GHZ, CHANNEL_MHZ, demo_rows

    checked = 0
    for row in demo_rows(12):
        work = directory / "work" / disk_name(row.uid)
        if not work.is_dir():
            continue                                # not selected
        checked += 1
        cube = next((work / "export").glob("*.spw1.cube.I.pbcor.fits"))
        # The line is topocentric; the cube LSRK, shifted as its first channel is.
        shift = fits.getheader(cube)["CRVAL3"] - (BAND_GHZ[row.band] + 2) * 1e9
        truth = float(row.line.split(":")[0]) * 1e9 + shift
        found = Table.read(next((work / "moments").glob("*.spw1.cube.I.lines.ecsv")))
        assert len(found) == 1 and abs(found["freq_hz"][0] - truth) < CHANNEL_MHZ * 1e6
        other = Table.read(next((work / "moments").glob("*.spw0.cube.I.lines.ecsv")))
        assert len(other) == 0 and other.meta["comment"].startswith("no line above")
        maps = sorted((work / "moments").glob("*.fits"))
        assert [m.name.split(".")[-2] for m in maps] == ["mom0", "mom1", "mom8"]
        for path in maps:
            fitsverify(path)
        weblog = (work / "weblog" / "index.html").read_text()
        assert "http://" not in weblog and "https://" not in weblog
        for stage in ("fetch", "restore", "keep-ms", "image", "export", "qa", "preview",
                      "moments", "package"):
            assert f'id="stage-{stage}"' in weblog, stage
    assert checked == 6


def _check_ms_store(directory: Path, tmp_path: Path) -> None:
    """Every done MOUS's calibrated MS is in the demo's MS store; fetch restores it."""
    from click.testing import CliRunner

    from arihpc.cli.main import main

    site = str(directory / "local.yaml")
    listed = CliRunner().invoke(main, ["ms", "list", "--site", site, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert len(rows) == 6, rows
    for row in rows:
        tar = Path(row["tar"])
        assert tar.parent == directory / "ms-store" / disk_name(row["uid"])
        assert Path(f"{tar}.sha256").read_text().split()[0] == row["sha256"]
    fetched = CliRunner().invoke(main, ["ms", "fetch", rows[0]["uid"], "--site", site,
                                        "--dest", str(tmp_path / "fetched")])
    assert fetched.exit_code == 0, fetched.output
    assert f"sha256 {rows[0]['sha256']} verified" in fetched.output
    assert list((tmp_path / "fetched").glob("*.ms/table.dat"))
