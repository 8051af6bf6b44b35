"""The arihpc command end to end on the real samples: import, list, export, select, queue."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run

from arihpc import __version__

CATALOGS = ["study7__survey_BH.tsv", "study7__NGC3504.tsv", "astroquery-legacy__ngc4945.xml",
            "astroquery__alma-onerow.txt", "study7__admit_aq.log",
            "astroquery__alma-datalink.xml", "astroquery__alma-datalink-recurse-this.xml",
            "astroquery__alma-empty.txt"]


@pytest.fixture
def loaded(store_url, samples_dir):
    result = run(store_url, "catalog", "import", *[samples_dir / n for n in CATALOGS])
    assert result.exit_code == 0, result.output
    return store_url


def json_of(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_version():
    result = run("sqlite://", "--version")
    assert result.exit_code == 0 and __version__ in result.stdout


@pytest.mark.samples
def test_import_then_list(loaded):
    rows = json_of(run(loaded, "catalog", "list", "--format", "json"))
    assert len(rows) == 35 and len({r["uid"] for r in rows}) == 35
    by_uid = {r["uid"]: r for r in rows}
    assert by_uid["uid://A001/X1295/X35"]["antennas"] == 50
    assert by_uid["uid://A001/X12a3/Xe9"]["size_bytes"] == 9984396288
    assert by_uid["uid://A001/X1288/Xbba"]["qa2"] == "SEMIPASS"
    assert by_uid["uid://A001/X196/X30"]["total_power"] is True
    table = run(loaded, "catalog", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["uid", "project", "cycle"] and len(table) == 36


@pytest.mark.samples
def test_export_round_trips_through_import(loaded, tmp_path):
    out = tmp_path / "catalog.csv"
    result = run(loaded, "catalog", "export", out)
    assert result.exit_code == 0 and "35 MOUS" in result.stdout
    copy = f"sqlite:///{tmp_path}/copy.db"
    imported = run(copy, "catalog", "import", out)
    assert imported.exit_code == 0 and "arihpc-csv, 35 MOUS" in imported.stdout
    original = json_of(run(loaded, "catalog", "list", "--format", "json"))
    assert json_of(run(copy, "catalog", "list", "--format", "json")) == original
    # Exporting the copy gives the same bytes: nothing is lost or reformatted on the way.
    again = tmp_path / "again.csv"
    run(copy, "catalog", "export", again)
    assert again.read_text() == out.read_text()
    stdout = run(loaded, "catalog", "export", "-").stdout
    assert stdout == out.read_text()


@pytest.mark.samples
def test_select_json_gives_every_applicable_reason(loaded):
    verdicts = {v["uid"]: v for v in json_of(run(loaded, "select", "--format", "json"))}
    assert set(next(iter(verdicts.values()))) == {"uid", "selected", "tier", "reasons", "flags"}
    assert verdicts["uid://A001/X87a/X706"] == {
        "uid": "uid://A001/X87a/X706", "selected": True, "tier": 1, "reasons": [],
        "flags": ["antennas-unknown"]}
    for tp in ("uid://A001/X196/X34", "uid://A001/X196/X30", "uid://A001/X2d6/X2d4"):
        assert verdicts[tp]["reasons"] == ["total-power"] and verdicts[tp]["tier"] is None
    assert verdicts["uid://A001/X1288/Xbba"]["reasons"] == ["cycle"]          # SEMIPASS, cycle 5
    assert verdicts["uid://A001/X133f/X196"]["reasons"] == ["cycle", "antennas"]  # 12 x 7m
    assert verdicts["uid://A001/X12a3/Xe9"]["reasons"] == ["cycle", "qa2-unknown"]
    assert verdicts["uid://A002/X327408/X248"]["reasons"] == ["cycle"]        # cycle 0
    assert sum(v["selected"] for v in verdicts.values()) == 14


@pytest.mark.samples
def test_select_explain_shows_the_path(loaded):
    result = run(loaded, "select", "--explain", "uid___A001_X196_X34")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("uid://A001/X196/X34  project 2013.1.00099.S")
    assert any("cycle in {2, 3, 4}?" in ln and "2 (project 2013.1.00099.S)" in ln
               and ln.endswith("ok") for ln in lines)
    assert any("QA2" in ln and ln.endswith("tier 1") for ln in lines)
    assert any("total power?" in ln and ln.endswith("exclude total-power") for ln in lines)
    assert lines[-1] == "=> excluded: total-power (flagged: antennas-unknown)"
    missing = run(loaded, "select", "--explain", "uid://A001/X1/X1")
    assert missing.exit_code == 1 and "not in the store" in missing.stderr
    bad = run(loaded, "select", "--explain", "../etc/passwd")
    assert bad.exit_code == 1 and "not an ALMA MOUS uid" in bad.stderr


@pytest.mark.samples
def test_queue_lists_the_selected_in_priority_order(loaded):
    before = run(loaded, "queue", "--format", "json")
    assert json.loads(before.stdout) == [] and "run 'arihpc select'" in before.stderr
    run(loaded, "select")
    rows = json_of(run(loaded, "queue", "--format", "json"))
    assert set(rows[0]) == {"uid", "rank", "cycle", "qa2", "size_bytes", "tier"}
    assert [r["rank"] for r in rows] == list(range(1, 15))
    assert [r["cycle"] for r in rows] == sorted((r["cycle"] for r in rows), reverse=True)
    assert rows[0]["uid"] == "uid://A001/X1262/Xa1"            # cycle 4, uid tiebreak
    table = list(csv.DictReader(io.StringIO(run(loaded, "queue", "--format", "csv").stdout)))
    assert [t["uid"] for t in table] == [r["uid"] for r in rows]


@pytest.mark.samples
def test_queue_uses_size_once_datalink_gives_it(store_url, tmp_path):
    tsv = tmp_path / "aq.tsv"
    tsv.write_text("Member ous id\tProject code\tQA2 Status\n"
                   "uid://A001/X12a3/Xe9\t2016.1.01185.S\tSEMIPASS\n"
                   "uid://A001/X12a3/Xe8\t2016.1.01185.S\tSEMIPASS\n"
                   "uid://A001/X12a3/Xe7\t2016.1.01185.S\tPASS\n")
    run(store_url, "catalog", "import", tsv)
    csv_file = tmp_path / "sizes.csv"
    csv_file.write_text("uid,size_bytes,size_source\nuid://A001/X12a3/Xe8,99999999999,datalink\n")
    run(store_url, "catalog", "import", csv_file)
    run(store_url, "select")
    rows = json_of(run(store_url, "queue", "--format", "json"))
    assert [r["uid"][-3:] for r in rows] == ["Xe7", "Xe8", "Xe9"]   # unknown size after known
    assert [r["tier"] for r in rows] == [1, 2, 2]


def test_campaign_config_option(tmp_path):
    store = f"sqlite:///{tmp_path}/c.db"
    tsv = tmp_path / "aq.tsv"
    tsv.write_text("Member ous id\tProject code\tQA2 Status\n"
                   "uid://A001/X1/X1\t2017.1.00001.S\tPASS\n")
    run(store, "catalog", "import", tsv)
    assert json_of(run(store, "select", "--format", "json"))[0]["reasons"] == ["cycle"]
    conf = tmp_path / "campaign.yaml"
    conf.write_text("arihpc:\n  selection:\n    cycles: [5]\n")
    result = run(store, "--config", conf, "select", "--format", "json")
    assert json_of(result)[0]["selected"] is True
    conf.write_text("arihpc:\n  selection:\n    cycle: [5]\n")
    result = run(store, "--config", conf, "select")
    assert result.exit_code == 1 and "unknown setting(s): arihpc.selection.cycle" in result.stderr


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "arihpc"       # what pip made of setup.cfg
    exe = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert exe.returncode == 0 and "catalog" in exe.stdout and "queue" in exe.stdout
    bad = subprocess.run([str(script), "--store", str(tmp_path / "c.db"), "catalog", "import",
                          str(tmp_path / "missing.tsv")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "missing.tsv: cannot read" in bad.stderr
