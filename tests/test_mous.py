"""MOUS uid handling, project codes and cycles, and the merge rules of archive records."""

import pytest

from arihpc.errors import InvalidUid
from arihpc.mous import (
    MousRecord,
    cycle_of,
    disk_name,
    find_uid,
    from_columns,
    is_vlbi,
    parse_uid,
    to_columns,
)


@pytest.mark.parametrize("given", ["uid://A001/X147/X5b", "uid___A001_X147_X5b",
                                   "uid://A001/X147/X5B"])
def test_both_alma_forms_give_one_canonical_and_one_disk_form(given):
    assert parse_uid(given) == "uid://A001/X147/X5b"
    assert disk_name(given) == "uid___A001_X147_X5b"


@pytest.mark.parametrize("bad", [
    "", "uid://", "uid://A001//X5b", "uid://A001/X147/", "uid___A001__X5b",     # empty parts
    "uid://A001/X147/X5b/", "uid://A001/X147/../X5b", "../uid___A001_X147_X5b",  # paths
    "uid://A001/X147/X5b;rm -rf /", "uid___A001_X147_X5b$(id)", "uid://A001/X147/X5b\n",
    "uid://A001/X147/X5g", "uid://B001/X147/X5b", "A001/X147/X5b", " uid://A001/X147/X5b",
    "uid://A001/X147/X" + "1" * 17,
])
def test_anything_else_is_rejected(bad):
    with pytest.raises(InvalidUid, match="not an ALMA MOUS uid"):
        parse_uid(bad)
    with pytest.raises(InvalidUid):
        disk_name(bad)


def test_uid_inside_a_tar_name():
    assert find_uid("2017.1.01185.S_uid___A001_X12a3_Xe9_001_of_001.tar") == "uid://A001/X12a3/Xe9"
    assert find_uid("README.txt") is None


@pytest.mark.parametrize("project, cycle", [
    ("2011.0.00121.S", 0), ("2012.1.00912.S", 1), ("2013.1.01151.S", 2), ("2015.1.00476.S", 3),
    ("2016.1.00150.S", 4), ("2016.2.00098.S", 4), ("2017.1.00964.S", 5), ("2018.1.01115.S", 6),
    ("2019.1.00458.S", 7), ("2021.1.00547.S", 8), ("2023.1.00001.S", 10),
    ("2014.1.00001.S", None), ("2020.1.00001.S", None), ("not-a-code", None), (None, None),
])
def test_cycle_from_project_code(project, cycle):
    assert cycle_of(project) == cycle


def test_vlbi_from_suffix():
    assert is_vlbi("2016.1.01154.V") is True
    assert is_vlbi("2016.1.01154.S") is False
    assert is_vlbi(None) is None


UID = "uid://A001/X1/X2"


def test_merge_fills_unknowns_and_never_blanks_known_values():
    tsv = MousRecord(UID, project="2015.1.00001.S", qa2="SEMIPASS", bands=frozenset({6}))
    obscore = MousRecord(UID, antenna_names=frozenset({"DA41", "DV01"}), antennas=2,
                         bands=frozenset({3}), full_pol=False)
    datalink = MousRecord(UID, size_bytes=10, size_source="datalink")
    merged = tsv.merge(obscore).merge(datalink)
    assert merged.qa2 == "SEMIPASS" and merged.project == "2015.1.00001.S"
    assert merged.antennas == 2 and merged.size_bytes == 10
    assert merged.bands == frozenset({3, 6})                # union of bands
    assert merged.merge(MousRecord(UID)) == merged           # all-unknown changes nothing


def test_merge_any_row_flags_and_antenna_union():
    a = MousRecord(UID, full_pol=False, total_power=False, antenna_names=frozenset({"DA41"}))
    b = MousRecord(UID, full_pol=True, total_power=False, antenna_names=frozenset({"DA41", "DA42"}))
    merged = a.merge(b)
    assert merged.full_pol is True and merged.total_power is False
    assert merged.antennas == 2
    assert b.merge(a).full_pol is True                       # order does not matter for "any"


def test_an_exact_datalink_size_is_never_replaced_by_an_obscore_estimate():
    exact = MousRecord(UID, size_bytes=9984396288, size_source="datalink")
    estimate = MousRecord(UID, size_bytes=5, size_source="obscore")
    assert exact.merge(estimate).size_bytes == 9984396288
    assert estimate.merge(exact).size_bytes == 9984396288
    newer_exact = MousRecord(UID, size_bytes=7, size_source="datalink")
    assert exact.merge(newer_exact).size_bytes == 7


def test_merge_refuses_another_mous():
    with pytest.raises(ValueError):
        MousRecord(UID).merge(MousRecord("uid://A001/X1/X3"))


def test_flat_columns_round_trip_and_keep_unknown_apart_from_empty():
    record = MousRecord(UID, project="2013.1.00099.S", qa2="PASS", bands=frozenset({6, 7}),
                        targets=frozenset({"NGC 4945", "Sun"}), arrays=frozenset(),
                        full_pol=False, size_bytes=3)
    columns = to_columns(record)
    assert columns["targets"] == "NGC 4945;Sun" and columns["bands"] == "6 7"
    assert from_columns(columns) == record
    assert from_columns(columns).arrays == frozenset() and from_columns(columns).antennas is None
