"""Site profiles: the shipped ones load; each bad profile fails with file, key, problem, fix."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from arihpc.cli.main import main
from arihpc.errors import ProfileError
from arihpc.sites.profile import available_profiles, load_profile

SHIPPED = ("eso", "itarc", "mup", "local", "ci-slurm", "ci-torque", "ci-pbspro")


def test_shipped_profiles_load_with_the_real_site_facts():
    assert set(SHIPPED) <= set(available_profiles())
    mup = load_profile("mup")
    assert (mup.batch_system, mup.walltime, mup.walltime_s) == ("pbspro", "96:00:00", 345600)
    assert [(c.count, c.memory_gb) for c in mup.node_classes] == [(16, 64)]
    assert mup.storage.kind == "nfs"
    itarc = load_profile("itarc")
    assert itarc.batch_system == "torque" and itarc.storage.kind == "lustre"
    assert sorted((c.count, c.memory_gb) for c in itarc.node_classes) == [(11, 8), (11, 32)]
    assert itarc.node_class("opteron8").max_size_gb is not None       # small MOUS only
    eso = load_profile("eso")
    assert eso.batch_system == "slurm" and eso.min_size_gb == 100
    assert sum(c.count for c in eso.node_classes) == 27
    assert {c.memory_gb for c in eso.node_classes} == {64, 128, 256}
    assert load_profile("ci-torque").node_class("small").job_memory_gb < \
        load_profile("ci-torque").node_class("large").job_memory_gb


def test_defaults_come_from_arihpc_yaml():
    site = load_profile("ci-slurm")
    assert site.x11 is True and site.screen == "1280x1024x24"
    assert site.node_class().slots == 1 and site.node_class().job_cores == 1


def test_profile_by_path(tmp_path):
    path = tmp_path / "mysite.yaml"
    path.write_text(Path(load_profile("mup").path).read_text())
    assert load_profile(str(path)).name == "mysite"


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


GOOD = yaml.safe_load(open(load_profile("ci-slurm").path))


def variant(tmp_path, change):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    change(data)
    return write(tmp_path, yaml.safe_dump(data))


BAD = {
    "unknown key": (lambda d: d.update({"walltme": "01:00:00"}),
                    "key 'walltme': unknown key; fix: did you mean 'walltime'?"),
    "unknown nested key": (lambda d: d["node-classes"]["small"].update({"memroy": "1GB"}),
                           "key 'node-classes.small.memroy': unknown key; fix: did you mean "
                           "'memory'?"),
    "walltime 96h": (lambda d: d.update({"walltime": "96h"}),
                     "key 'walltime': '96h' is not a walltime; fix: write 96:00:00"),
    "memory lots": (lambda d: d["node-classes"]["small"].update({"memory": "lots"}),
                    "key 'node-classes.small.memory': 'lots' is not an amount of memory; "
                    "fix: write e.g. 64GB"),
    "more cores than the node": (lambda d: d["node-classes"]["small"].update({"job-cores": 4}),
                                 "key 'node-classes.small.job-cores': asks 4 cores but the node "
                                 "has 1; fix: ask at most 1"),
    "missing CASA version": (lambda d: d["casa"].update({"imaging": "6.5.4"}),
                             "key 'casa.imaging': CASA version 6.5.4 is not among the "
                             "installations (6.7.0.31); fix: add its command"),
    "no CASA at all": (lambda d: d.pop("casa"), "key 'casa': missing"),
    "bad batch system": (lambda d: d.update({"batch-system": "lsf"}),
                         "key 'batch-system': 'lsf' is not one of slurm, torque, pbspro, local"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_profile_message(tmp_path, case):
    change, message = BAD[case]
    path = variant(tmp_path, change)
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("case", ["walltime 96h", "memory lots", "missing CASA version"])
def test_bad_profile_exit_status_2_before_anything_is_submitted(tmp_path, case):
    change, message = BAD[case]
    path = variant(tmp_path, change)
    for command in (["sites", "check", str(path)], ["sites", "script", str(path)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and result.stdout == ""


def test_missing_file_and_unknown_name(tmp_path):
    result = CliRunner().invoke(main, ["sites", "check", str(tmp_path / "gone.yaml")])
    assert result.exit_code == 2 and "gone.yaml: no such profile file" in result.stderr
    result = CliRunner().invoke(main, ["sites", "check", "mpu"])
    assert result.exit_code == 2 and "did you mean 'mup'?" in result.stderr


def test_yaml_that_does_not_parse(tmp_path):
    path = write(tmp_path, "batch-system: slurm\nnode-classes:\n  small: {cores: 1, memory: 1GB\n")
    result = CliRunner().invoke(main, ["sites", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: YAML does not parse at line" in result.stderr


def test_check_prints_the_resolved_profile():
    result = CliRunner().invoke(main, ["sites", "check", "itarc"])
    assert result.exit_code == 0
    resolved = yaml.safe_load(result.stdout)
    assert resolved["batch_system"] == "torque" and resolved["walltime_s"] == 168 * 3600
    assert [c["name"] for c in resolved["node_classes"]] == ["xeon32", "opteron8"]


def test_list_shows_every_site():
    result = CliRunner().invoke(main, ["sites", "list", "--format", "json"])
    rows = {r["site"]: r for r in yaml.safe_load(result.stdout)}
    assert set(SHIPPED) <= set(rows) and all(rows[s]["problem"] is None for s in SHIPPED)
