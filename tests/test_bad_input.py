"""Bad input: a clear error naming file, line and field; good rows imported; exit 1;
nothing already in the store lost or changed. Every test runs on SQLite and PostgreSQL."""

import pytest
from helpers import run, snapshot

HEADER = "Member ous id\tProject code\tQA2 Status\tBand\tALMA source name\n"
EXISTING = ("uid://A001/X87a/X706\t2016.1.00650.S\tPASS\t6\tNGC3504\n"
            "uid://A001/X87a/X708\t2016.1.00650.S\tSEMIPASS\t6\tNGC3504\n")


@pytest.fixture
def store(store_url, tmp_path):
    """A store that already holds two MOUS and a selection decision."""
    path = tmp_path / "existing.tsv"
    path.write_text(HEADER + EXISTING)
    assert run(store_url, "catalog", "import", path).exit_code == 0
    assert run(store_url, "select").exit_code == 0
    return store_url


def mous_rows(store_url, uids=("uid://A001/X87a/X706", "uid://A001/X87a/X708")):
    return [row for row in snapshot(store_url)["mous"] if row[0] in uids]


def import_fails(store, path, *args):
    """Import a file that is bad as a whole: exit 1, and not one byte of the store changes."""
    before = snapshot(store)
    result = run(store, "catalog", "import", *args, path)
    assert result.exit_code == 1
    assert snapshot(store) == before
    assert "(file not imported)" in result.stderr
    return result.stderr


def test_bad_uid_row(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text(HEADER + "uid://A001/X1/X1\t2016.1.00001.S\tPASS\t3\tA\n"
                    "uid://A001/X87a/../X706\t2016.1.00001.S\tFAIL\t3\tB\n"
                    "uid___A001_X1_X2\t2015.1.00001.S\tPASS\t3\tC\n")
    before = mous_rows(store)
    result = run(store, "catalog", "import", path)
    assert result.exit_code == 1
    assert (f"{path}:3: field 'Member ous id': 'uid://A001/X87a/../X706' is not an ALMA MOUS "
            "uid") in result.stderr
    assert "2 MOUS, 1 bad row(s)" in result.stdout
    assert mous_rows(store) == before                                   # nothing lost
    assert {r[0] for r in snapshot(store)["mous"]} == {
        "uid://A001/X87a/X706", "uid://A001/X87a/X708", "uid://A001/X1/X1", "uid://A001/X1/X2"}


def test_bad_row_of_an_existing_mous_changes_nothing_of_it(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text(HEADER + "uid://A001/X87a/X706\t2016.1.00650.S\tMAYBE\t6\tNGC3504\n"
                    "uid://A001/X87a/X708\t2016.1.00650.S\tPASS\tseven\tNGC3504\n")
    before = snapshot(store)
    result = run(store, "catalog", "import", path)
    assert result.exit_code == 1
    assert f"{path}:2: field 'QA2 Status': unknown QA2 status 'MAYBE'" in result.stderr
    assert f"{path}:3: field 'Band': 'seven' is not an ALMA band" in result.stderr
    after = snapshot(store)
    assert after["mous"] == before["mous"] and after["attempts"] == before["attempts"]


def test_missing_required_column(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text("Member ous id\tProject code\tBand\nuid://A001/X1/X1\t2016.1.00001.S\t3\n")
    stderr = import_fails(store, path)
    assert f"{path}:1: field 'QA2 Status': required column is missing" in stderr


@pytest.mark.samples
def test_missing_required_column_in_a_real_obscore_votable(store, samples_dir):
    stderr = import_fails(store, samples_dir / "astroquery__alma-shapes.xml")
    assert "astroquery__alma-shapes.xml:1: field 'member_ous_uid': required column is missing" \
        in stderr


def test_non_numeric_size_in_arihpc_csv(store, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("uid,project,qa2,size_bytes\n"
                    "uid://A001/X87a/X706,2016.1.00650.S,PASS,12 GB\n"
                    "uid://A001/X1/X5,2016.1.00650.S,PASS,1200\n")
    before = mous_rows(store)
    result = run(store, "catalog", "import", path)
    assert result.exit_code == 1
    assert f"{path}:2: field 'size_bytes': '12 GB' is not a whole number" in result.stderr
    assert mous_rows(store) == before
    listed = run(store, "catalog", "list", "--format", "csv").stdout
    assert "uid://A001/X1/X5" in listed


def test_non_numeric_size_in_obscore(store, tmp_path):
    path = tmp_path / "obscore.txt"
    path.write_text("member_ous_uid proposal_id qa2_passed access_estsize\n"
                    "uid://A001/X87a/X706 2016.1.00650.S T lots\n")
    before = mous_rows(store)
    result = run(store, "catalog", "import", path)
    assert result.exit_code == 1
    assert f"{path}:2: field 'access_estsize': 'lots' is not a number" in result.stderr
    assert mous_rows(store) == before


@pytest.mark.samples
def test_non_numeric_size_in_a_datalink_votable(store, samples_dir, tmp_path):
    text = (samples_dir / "astroquery__alma-datalink.xml").read_text()
    line = text[: text.index("<TD>2343569408</TD>")].count("\n") + 1
    path = tmp_path / "datalink.xml"
    path.write_text(text.replace("<TD>2343569408</TD>", "<TD>2.3 GB</TD>"))
    stderr = import_fails(store, path)
    assert f"{path}:{line}: not a readable VOTable" in stderr and "content_length" in stderr


def test_empty_file(store, tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_bytes(b"")
    assert f"{path}: empty file" in import_fails(store, path)
    path.write_text("\n  \n")
    assert f"{path}: empty file" in import_fails(store, path)


def test_binary_file(store, tmp_path):
    path = tmp_path / "data.tsv"
    path.write_bytes(bytes(range(256)) * 40)
    assert f"{path}: binary file" in import_fails(store, path)
    path.write_bytes(b"Member ous id\tProject code\n\xff\xfe\xfd garbage" * 10)
    assert "binary file" in import_fails(store, path)


@pytest.mark.samples
def test_truncated_votable(store, samples_dir, tmp_path):
    text = (samples_dir / "astroquery-legacy__ngc4945.xml").read_text()
    path = tmp_path / "cut.xml"
    path.write_text(text[: len(text) // 2])
    stderr = import_fails(store, path)
    assert f"{path}:" in stderr and "not a readable VOTable" in stderr
    assert run(store, "catalog", "list", "--format", "json").stdout.count('"uid"') == 2


def test_unknown_format(store, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("These are my notes about MOUS uid://A001/X1/X1.\nNothing tabular.\n")
    stderr = import_fails(store, path)
    assert f"{path}:1: unknown format" in stderr and "--format" in stderr
    xml = tmp_path / "other.xml"
    xml.write_text("<?xml version='1.0'?><html><body>hello</body></html>")
    assert "unknown format" in import_fails(store, xml)


def test_wrong_field_count_and_missing_file(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text(HEADER + "uid://A001/X1/X9\t2016.1.00001.S\n")
    result = run(store, "catalog", "import", path, tmp_path / "absent.tsv")
    assert result.exit_code == 1
    assert f"{path}:2: 2 fields where the header has 5" in result.stderr
    assert f"{tmp_path / 'absent.tsv'}: cannot read" in result.stderr


def test_a_bad_file_does_not_stop_the_good_files(store, tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text(HEADER + "uid://A001/X2/X1\t2013.1.00001.S\tPASS\t3\tA\n")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"")
    result = run(store, "catalog", "import", bad, good)
    assert result.exit_code == 1 and "1 new" in result.stdout
    assert "uid://A001/X2/X1" in run(store, "catalog", "list").stdout


def test_unknown_format_name_is_a_usage_error(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text(HEADER + EXISTING)
    result = run(store, "catalog", "import", "--format", "excel", path)
    assert result.exit_code == 2 and "excel" in result.stderr


def test_bad_bytes_past_the_sniffed_start(store, tmp_path):
    path = tmp_path / "aq.tsv"
    good = "uid://A001/X3/X1\t2013.1.00001.S\tPASS\t3\tA\n"
    path.write_bytes((HEADER + good * 4000).encode() + b"uid://A001/X3/X2\t\xff\xfe\n")
    assert "not UTF-8 text" in import_fails(store, path)


def test_byte_order_mark_is_accepted(store, tmp_path):
    path = tmp_path / "aq.tsv"
    path.write_text("\ufeff" + HEADER + "uid://A001/X3/X1\t2013.1.00001.S\tPASS\t3\tA\n",
                    encoding="utf-8")
    result = run(store, "catalog", "import", path)
    assert result.exit_code == 0 and "aq-tsv, 1 MOUS" in result.stdout


def test_select_on_an_empty_store_says_what_to_do(tmp_path):
    result = run(f"sqlite:///{tmp_path}/empty.db", "select")
    assert result.exit_code == 1 and "arihpc catalog import" in result.stderr
