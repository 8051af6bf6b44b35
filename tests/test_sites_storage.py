"""Work directories: Lustre striping for large MOUS. There is no Lustre here, so `lfs` is a
stand-in script that records how it was called (the one mock: a real Lustre cannot run here)."""

import dataclasses
import os

import pytest

from arihpc.errors import InvalidUid
from arihpc.sites.profile import load_profile
from arihpc.sites.storage import prepare_work_dir, work_dir

UID = "uid://A001/X1288/Xba6"


@pytest.fixture
def eso(tmp_path):
    site = load_profile("eso")
    return dataclasses.replace(site, storage=dataclasses.replace(
        site.storage, work_dir=str(tmp_path / "work")))


@pytest.fixture
def fake_lfs(tmp_path, monkeypatch):
    calls = tmp_path / "lfs-calls"
    script = tmp_path / "bin" / "lfs"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_large_mous_on_lustre_gets_the_configured_stripe(eso, fake_lfs):
    path = prepare_work_dir(eso, UID, size_gb=250)
    assert path == work_dir(eso, UID) and path.name == "uid___A001_X1288_Xba6" and path.is_dir()
    assert fake_lfs.read_text().split() == ["setstripe", "-c", "8", str(path)]


def test_small_mous_and_existing_folders_are_left_alone(eso, fake_lfs):
    prepare_work_dir(eso, UID, size_gb=12)
    prepare_work_dir(eso, "uid://A001/X1/X2", size_gb=None)
    assert not fake_lfs.exists()
    prepare_work_dir(eso, "uid://A001/X1/X3", size_gb=500)
    prepare_work_dir(eso, "uid://A001/X1/X3", size_gb=500)        # second time: already there
    assert len(fake_lfs.read_text().splitlines()) == 1


def test_no_lfs_command_means_no_stripe_and_a_warning(eso, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert prepare_work_dir(eso, UID, size_gb=500).is_dir()
    assert "no lfs command" in caplog.text


def test_nfs_site_never_stripes(fake_lfs, tmp_path):
    mup = load_profile("mup")
    mup = dataclasses.replace(mup, storage=dataclasses.replace(
        mup.storage, work_dir=str(tmp_path / "w")))
    prepare_work_dir(mup, UID, size_gb=900)
    assert not fake_lfs.exists()


def test_a_bad_uid_never_names_a_folder(eso):
    with pytest.raises(InvalidUid):
        prepare_work_dir(eso, "../../etc", size_gb=1)
    assert not os.path.exists(eso.storage.work_dir)           # nothing was created
