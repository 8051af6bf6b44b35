"""Catalog import from the real ALMA archive exports in ../shared/alma-samples, read in place."""

import xml.etree.ElementTree as ET

import pytest

from arihpc.catalog.formats import FORMATS, detect_format, read_catalog
from arihpc.errors import CatalogError

pytestmark = pytest.mark.samples

# file -> (format, distinct MOUS in it)
SAMPLES = {
    "study7__survey_BH.tsv": ("aq-tsv", 12),
    "study7__NGC3504.tsv": ("aq-tsv", 5),
    "astroquery-legacy__ngc4945.xml": ("legacy-votable", 17),
    "astroquery__alma-onerow.txt": ("obscore-ascii", 1),
    "astroquery__alma-empty.txt": ("obscore-ascii", 0),
    "study7__admit_aq.log": ("obscore-kv", 1),
    "astroquery__alma-datalink.xml": ("datalink", 1),
    "astroquery__alma-datalink-recurse-this.xml": ("datalink", 1),
    "astroquery__alma-datalink-recurse-aux.xml": ("datalink", 1),
}


def merged(samples_dir):
    records = {}
    for name in SAMPLES:
        for uid, record in read_catalog(samples_dir / name).records.items():
            records[uid] = records[uid].merge(record) if uid in records else record
    return records


@pytest.mark.parametrize("name", SAMPLES)
def test_each_sample_is_detected_and_read_without_errors(samples_dir, name):
    fmt, count = SAMPLES[name]
    assert detect_format(samples_dir / name) == fmt
    read = read_catalog(samples_dir / name)
    assert (read.format, len(read.records), read.errors) == (fmt, count, [])


def test_rows_per_source_merge_into_one_record_per_mous(samples_dir):
    # survey_BH has 12 rows, one per MOUS; NGC3504 shares two MOUS with it.
    records = merged(samples_dir)
    assert len(records) == 12 + 5 - 2 + 17 + 1 + 1 + 1 == 35
    assert {"uid://A001/X1288/Xba6", "uid://A001/X1288/Xba8"} <= set(records)


def test_semipass_mous_from_the_archive_query_tsv(samples_dir):
    record = merged(samples_dir)["uid://A001/X1288/Xbba"]
    assert record.qa2 == "SEMIPASS"
    assert record.project == "2017.1.00964.S" and record.cycle == 5
    assert record.targets == frozenset({"NGC4402"}) and record.bands == frozenset({6})
    assert record.arrays == frozenset({"12m"}) and record.total_power is False
    assert record.full_pol is False
    assert record.antennas is None and record.size_bytes is None       # the TSV has neither


def test_total_power_rows_of_the_ngc4945_legacy_export(samples_dir):
    records = read_catalog(samples_dir / "astroquery-legacy__ngc4945.xml").records
    tp = {uid for uid, r in records.items() if r.total_power}
    assert tp == {"uid://A001/X196/X34", "uid://A001/X196/X30", "uid://A001/X2d6/X2d4"}
    assert records["uid://A001/X196/X30"].arrays == frozenset({"TP"})
    assert records["uid://A001/X196/X30"].qa2 == "PASS"                # qa2_passed Y
    assert records["uid://A002/X327408/X248"].cycle == 0               # 2011.0 project
    assert records["uid://A001/X1262/Xa1"].cycle == 4                  # 2016.2 supplemental call
    assert records["uid://A001/X122/X54"].arrays == frozenset({"7m"})


def test_distinct_antenna_names_not_pad_tokens(samples_dir):
    record = read_catalog(samples_dir / "astroquery__alma-onerow.txt").records[
        "uid://A001/X1295/X35"]
    # 52 pad:antenna tokens; DA54 and DV18 each sit on two pads.
    assert record.antennas == 50 and len(record.antenna_names) == 50
    assert {"DA54", "DV18"} <= record.antenna_names
    assert record.qa2 == "PASS" and record.bands == frozenset({3}) and record.full_pol is False
    assert record.arrays is None and record.total_power is None         # ObsCore does not say


def test_datalink_raw_size_is_the_sum_of_the_asdm_tars(samples_dir):
    path = samples_dir / "astroquery__alma-datalink.xml"
    # Independent sum straight from the XML: content_length of every #progenitor row.
    ns = {"v": "http://www.ivoa.net/xml/VOTable/v1.3"}
    total = 0
    for tr in ET.parse(path).getroot().iterfind(".//v:TR", ns):
        cells = [td.text for td in tr.iterfind("v:TD", ns)]
        if cells[4] == "#progenitor":
            assert cells[1].endswith(".asdm.sdm.tar")
            total += int(cells[7])
    record = read_catalog(path).records["uid://A001/X12a3/Xe9"]
    assert record.size_bytes == total == 9_984_396_288
    assert record.size_source == "datalink"
    assert record.project == "2017.1.01185.S"


def test_datalink_product_listing_tells_manual_from_pipeline_imaging(samples_dir):
    this = read_catalog(samples_dir / "astroquery__alma-datalink-recurse-this.xml")
    record = this.records["uid://A001/X12a3/Xe9"]
    assert record.pipeline_imaged is False          # only *.manual.image.pbcor.fits products
    assert record.size_bytes is None                # product tars are not raw data
    aux = read_catalog(samples_dir / "astroquery__alma-datalink-recurse-aux.xml")
    assert aux.records["uid://A001/X12a3/Xe9"].pipeline_imaged is None


def test_obscore_key_value_dump(samples_dir):
    record = read_catalog(samples_dir / "study7__admit_aq.log").records["uid://A001/X133f/X196"]
    assert (record.project, record.qa2, record.antennas) == ("2018.1.01115.S", "PASS", 12)
    assert record.targets == frozenset({"Ref_001_SMC_SWBar"})


def test_obscore_votable_without_mous_ids_is_refused_by_name(samples_dir):
    path = samples_dir / "astroquery__alma-shapes.xml"
    assert detect_format(path) == "obscore-votable"
    with pytest.raises(CatalogError) as caught:
        read_catalog(path)
    assert caught.value.field == "member_ous_uid" and "required column" in str(caught.value)


@pytest.mark.parametrize("name", ["study7__aq.cols", "study7__head_cube.txt",
                                  "study7__member.uid___A001_X1288_Xba6.README.txt"])
def test_non_catalog_documents_are_an_unknown_format(samples_dir, name):
    with pytest.raises(CatalogError, match="unknown format"):
        read_catalog(samples_dir / name)


def test_format_override_reads_a_file_as_told(samples_dir):
    read = read_catalog(samples_dir / "study7__NGC3504.tsv", "aq-tsv")
    assert len(read.records) == 5
    with pytest.raises(CatalogError, match="required column"):
        read_catalog(samples_dir / "study7__NGC3504.tsv", "arihpc-csv")
    assert set(FORMATS) >= {"aq-tsv", "legacy-votable", "obscore-votable", "obscore-ascii",
                            "datalink", "arihpc-csv"}


def test_pipeline_named_products_mark_the_mous_already_imaged(samples_dir, tmp_path):
    # The same listing as if the pipeline had made the images (its names carry no ".manual.").
    text = (samples_dir / "astroquery__alma-datalink-recurse-this.xml").read_text()
    path = tmp_path / "pipeline.xml"
    path.write_text(text.replace(".I.manual.image.pbcor.fits", ".I.pbcor.fits"))
    assert read_catalog(path).records["uid://A001/X12a3/Xe9"].pipeline_imaged is True


def test_an_asdm_tar_without_size_leaves_the_raw_size_unknown(samples_dir, tmp_path, caplog):
    text = (samples_dir / "astroquery__alma-datalink.xml").read_text()
    path = tmp_path / "datalink.xml"
    path.write_text(text.replace("<TD>2616798208</TD>", "<TD />"))
    read = read_catalog(path)
    assert read.records["uid://A001/X12a3/Xe9"].size_bytes is None and read.errors == []
    assert "raw size left unknown" in caplog.text


def test_obscore_votable_reads_like_the_ascii_table(samples_dir, tmp_path):
    import csv

    from astropy.table import Table

    rows = list(csv.reader((samples_dir / "astroquery__alma-onerow.txt").open(),
                           delimiter=" ", skipinitialspace=True))
    path = tmp_path / "obscore.xml"
    Table(rows=rows[1:], names=rows[0]).write(path, format="votable")
    assert detect_format(path) == "obscore-votable"
    as_votable = read_catalog(path).records
    assert as_votable == read_catalog(samples_dir / "astroquery__alma-onerow.txt").records
    assert as_votable["uid://A001/X1295/X35"].antennas == 50
