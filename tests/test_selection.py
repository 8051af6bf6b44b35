"""Every branch of the ARI-L decision tree, and its configuration."""

import dataclasses
import re

import pytest

from arihpc import config
from arihpc.catalog.selection import REASONS, Rules, decide, explain, select
from arihpc.errors import ConfigError
from arihpc.mous import MousRecord

# A MOUS that passes every check: cycle 4, PASS, 43 antennas, 12m, dual polarisation.
GOOD = MousRecord("uid://A001/X87a/X706", project="2016.1.00650.S", qa2="PASS",
                  antenna_names=frozenset(f"DA{i}" for i in range(41, 84)), antennas=43,
                  arrays=frozenset({"12m"}), bands=frozenset({6}), full_pol=False,
                  total_power=False, targets=frozenset({"NGC3504"}), pipeline_imaged=False)


def verdict(**changes):
    return decide(dataclasses.replace(GOOD, **changes), Rules.from_config())


def explained(**changes):
    return explain(dataclasses.replace(GOOD, **changes), Rules.from_config())


def test_good_mous_is_selected_in_tier_1_with_no_reason():
    v = verdict()
    assert (v.selected, v.tier, v.reasons, v.flags) == (True, 1, (), ())
    assert explained()[-1] == "=> selected, tier 1"


def test_semipass_is_tier_2_and_fail_is_never_selected():
    assert (verdict(qa2="SEMIPASS").selected, verdict(qa2="SEMIPASS").tier) == (True, 2)
    fail = verdict(qa2="FAIL")
    assert (fail.selected, fail.tier, fail.reasons) == (False, None, ("qa2-fail",))


@pytest.mark.parametrize("changes, reason", [
    ({"project": "2017.1.00964.S"}, "cycle"),             # cycle 5
    ({"project": "2012.1.00912.S"}, "cycle"),             # cycle 1
    ({"project": None}, "cycle"),                          # unknown cycle
    ({"qa2": None}, "qa2-unknown"),
    ({"antennas": 36, "antenna_names": None}, "antennas"),
    ({"targets": frozenset({"Sun"})}, "solar"),
    ({"targets": frozenset({"NGC1", "sun"})}, "solar"),
    ({"full_pol": True}, "full-pol"),
    ({"total_power": True}, "total-power"),
    ({"project": "2016.1.01154.V"}, "vlbi"),
    ({"pipeline_imaged": True}, "already-imaged"),
])
def test_each_exclusion_gives_its_reason(changes, reason):
    v = verdict(**changes)
    assert v.selected is False and v.tier is None
    assert v.reasons == (reason,)
    assert explained(**changes)[-1] == f"=> excluded: {reason}"


def test_thirty_seven_antennas_is_enough():
    assert verdict(antennas=37, antenna_names=None).selected


def test_every_applicable_reason_is_given_not_just_the_first():
    v = verdict(project="2017.1.00001.V", qa2="FAIL", antennas=4, antenna_names=None,
                targets=frozenset({"Sun"}), full_pol=True, total_power=True,
                pipeline_imaged=True)
    assert set(v.reasons) == set(REASONS) - {"qa2-unknown", "antennas-unknown"}


def test_unknown_antennas_are_kept_and_flagged_by_default():
    v = verdict(antennas=None, antenna_names=None)
    assert v.selected and v.flags == ("antennas-unknown",)
    assert explained(antennas=None, antenna_names=None)[-1] == \
        "=> selected, tier 1 (flagged: antennas-unknown)"


def test_unknown_facts_cannot_exclude():
    unknown = {"targets": None, "full_pol": None, "total_power": None, "pipeline_imaged": None}
    assert verdict(**unknown).selected
    lines = explained(**unknown)
    assert sum(bool(re.search(r" unknown +ok \(unknown cannot exclude\)$", line))
               for line in lines) == 4


def write_campaign(tmp_path, text):
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    return path


def test_thresholds_come_from_a_campaign_config_file(tmp_path):
    path = write_campaign(tmp_path, """
arihpc:
  selection:
    min-antennas: 50
    cycles: [5]
    unknown-antennas: exclude
    qa2-tiers: {PASS: 1}
    exclude: [solar]
""")
    with config.campaign_config(path):
        rules = Rules.from_config()
        assert decide(GOOD, rules).reasons == ("cycle", "antennas")
        unknown = dataclasses.replace(GOOD, project="2017.1.00964.S", antennas=None,
                                      antenna_names=None)
        assert decide(unknown, rules).reasons == ("antennas-unknown",)
        semipass = dataclasses.replace(GOOD, project="2017.1.00964.S", qa2="SEMIPASS")
        assert "qa2-fail" in decide(semipass, rules).reasons       # SEMIPASS has no tier now
        tp = dataclasses.replace(GOOD, project="2017.1.00964.S", total_power=True)
        assert "total-power" not in decide(tp, rules).reasons        # rule not in force
    assert decide(GOOD, Rules.from_config()).selected                # defaults are back


@pytest.mark.parametrize("text, message", [
    ("arihpc:\n  selection:\n    min-antenas: 40\n", "arihpc.selection.min-antenas"),
    ("arihpc:\n  selection:\n    unknown-antennas: maybe\n", "unknown-antennas"),
    ("arihpc:\n  selection:\n    exclude: [sun]\n", "sun"),
    ("selection: {}\n", "one top-level key"),
    ("arihpc: [\n", "not valid YAML"),
])
def test_bad_campaign_config_is_a_clear_error(tmp_path, text, message):
    path = write_campaign(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        with config.campaign_config(path):
            Rules.from_config()


def test_select_decides_every_record():
    records = [GOOD, dataclasses.replace(GOOD, uid="uid://A001/X1/X1", qa2="FAIL")]
    assert [v.selected for v in select(records)] == [True, False]
