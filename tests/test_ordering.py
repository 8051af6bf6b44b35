"""Priority order: every PASS before any SEMIPASS, latest cycle first, then size ascending."""

import random

import pytest

from arihpc import config
from arihpc.catalog.ordering import order_keys, priorities, prioritise
from arihpc.catalog.selection import Rules, decide
from arihpc.errors import ConfigError
from arihpc.mous import MousRecord

PROJECT = {2: "2013.1.00001.S", 3: "2015.1.00001.S", 4: "2016.1.00001.S"}


def make(serial: int, qa2: str, cycle: int, size: int | None) -> MousRecord:
    return MousRecord(f"uid://A001/X10/X{serial:x}", project=PROJECT[cycle], qa2=qa2,
                      antennas=40, size_bytes=size)


def campaign() -> list[MousRecord]:
    rng = random.Random(7)
    records = []
    for serial in range(1, 121):
        size = None if serial % 9 == 0 else rng.choice([10, 10, 200, 3000, 5 * 10**12])
        records.append(make(serial, rng.choice(["PASS", "SEMIPASS"]), rng.choice([2, 3, 4]),
                            size))
    return records


def ranked(records, keys=None):
    rules = Rules.from_config()
    verdicts = [decide(r, rules) for r in records]
    return prioritise([(r, v.tier) for r, v in zip(records, verdicts)], keys)


def test_pass_before_semipass_then_latest_cycle_then_size_ascending():
    order = ranked(campaign())
    qa2 = [r.qa2 for r in order]
    assert qa2 == sorted(qa2, key=lambda q: q != "PASS")              # every PASS first
    for tier in ("PASS", "SEMIPASS"):
        group = [r for r in order if r.qa2 == tier]
        cycles = [r.cycle for r in group]
        assert cycles == sorted(cycles, reverse=True)                  # 4, then 3, then 2
        for cycle in (4, 3, 2):
            sizes = [r.size_bytes for r in group if r.cycle == cycle]
            known = [s for s in sizes if s is not None]
            assert known == sorted(known)                              # size ascending
            assert sizes == known + [None] * (len(sizes) - len(known))  # unknown size last


def test_ties_break_on_uid_and_the_order_is_stable_under_any_input_order():
    records = campaign()
    expected = ranked(records)
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        assert ranked(shuffled) == expected
    same = [make(s, "PASS", 4, 10) for s in (0x30, 0x1f, 0x2a)]
    assert [r.uid for r in ranked(same)] == sorted(r.uid for r in same)


def test_key_order_is_configurable(tmp_path):
    records = [make(1, "PASS", 2, 5), make(2, "PASS", 4, 50), make(3, "SEMIPASS", 3, 1)]
    assert [r.uid[-1] for r in ranked(records)] == ["2", "1", "3"]
    assert [r.uid[-1] for r in ranked(records, ["size-asc"])] == ["3", "1", "2"]
    path = tmp_path / "c.yaml"
    path.write_text("arihpc:\n  ordering:\n    keys: [cycle-asc, tier]\n")
    with config.campaign_config(path):
        assert [r.uid[-1] for r in ranked(records)] == ["1", "3", "2"]


def test_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match="size-ascending"):
        order_keys(["tier", "size-ascending"])
    assert order_keys(["tier"]) == ["tier", "uid"]


def test_priorities_number_only_the_selected():
    records = {r.uid: r for r in [make(1, "PASS", 4, 5), make(2, "FAIL", 4, 1),
                                  make(3, "SEMIPASS", 4, 1)]}
    rules = Rules.from_config()
    verdicts = [decide(r, rules) for r in records.values()]
    assert priorities(verdicts, records) == {"uid://A001/X10/X1": 1, "uid://A001/X10/X3": 2}
