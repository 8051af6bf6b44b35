"""The calibrated-MS store (arihpc.products.ms_store, stage keep-ms, arihpc ms list|fetch):
tar + sha256 + retention date, fetch checks the checksum, a full disk (a real 64 kB tmpfs)
is class disk-space and leaves no partial tar, nothing is kept when the key is unset."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from arihpc.cli.main import main
from arihpc.errors import ProfileError
from arihpc.monitor import views
from arihpc.products import ms_store
from arihpc.runner.failures import classify
from arihpc.runner.plans import MousTask, casa_plan
from arihpc.sites.profile import load_profile

UID = "uid://A001/X2a/X7"
DISK = "uid___A001_X2a_X7"


def _fake_ms(workdir: Path, size: int = 300_000) -> Path:
    """A folder shaped like a restored MS, and restore/summary.json naming it."""
    ms = workdir / "restore" / f"{DISK}.ms"
    (ms / "SPECTRAL_WINDOW").mkdir(parents=True)
    (ms / "table.dat").write_bytes(os.urandom(size))
    (ms / "SPECTRAL_WINDOW" / "table.dat").write_bytes(b"spw")
    (workdir / "restore" / "summary.json").write_text(
        json.dumps({"ms": [{"path": f"restore/{ms.name}"}]}))
    return ms


def _keep_ms(workdir: Path, template: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arihpc.products.stages", "keep-ms",
                           "--workdir", str(workdir), "--uid", UID, "--ms-store", template,
                           "--retention-years", "3"],
                          capture_output=True, text=True, timeout=120)


def _profile(tmp_path: Path, template: str | None) -> Path:
    path = tmp_path / "site.yaml"
    storage = {"work-dir": str(tmp_path / "work")}
    if template:
        storage["ms-store"] = template
    path.write_text(yaml.safe_dump({"batch-system": "local", "storage": storage,
                                    "casa": {"imaging": "6.7.0.31",
                                             "installations": {"6.7.0.31": "pypi"}},
                                    "node-classes": {"n": {"cores": 1, "memory": "2GB"}}}))
    return path


def test_keep_writes_tar_sha256_and_retention_then_fetch_restores_it(tmp_path):
    ms = _fake_ms(tmp_path / "work")
    template = str(tmp_path / "store" / "{uid}")
    done = _keep_ms(tmp_path / "work", template)
    assert done.returncode == 0, done.stderr
    tar, checksum, record_path = ms_store.paths_of(tmp_path / "store" / DISK, UID)
    record = json.loads(record_path.read_text())
    assert record == json.loads((tmp_path / "work" / "keep-ms" / "kept.json").read_text())
    assert record["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
    assert checksum.read_text() == f"{record['sha256']}  {tar.name}\n"
    written = dt.date.fromisoformat(record["written"])
    assert dt.date.fromisoformat(record["retain_until"]) - written == dt.timedelta(days=1096)
    assert [p.name for p in (tmp_path / "store" / DISK).iterdir() if p.name.startswith(".")] == []
    got = ms_store.fetch(template, UID, tmp_path / "back")
    assert got["verified_sha256"] == record["sha256"]
    assert (tmp_path / "back" / ms.name / "table.dat").read_bytes() == \
        (ms / "table.dat").read_bytes()
    with pytest.raises(ms_store.MsStoreError, match="exists already"):
        ms_store.fetch(template, UID, tmp_path / "back")


def test_a_damaged_tar_is_refused_and_nothing_is_unpacked(tmp_path):
    _fake_ms(tmp_path / "work")
    template = str(tmp_path / "store" / "{uid}")
    assert _keep_ms(tmp_path / "work", template).returncode == 0
    tar = ms_store.paths_of(tmp_path / "store" / DISK, UID)[0]
    with open(tar, "r+b") as f:
        f.seek(1000)
        f.write(b"damage")
    with pytest.raises(ms_store.MsStoreError, match="does not match the recorded"):
        ms_store.fetch(template, UID, tmp_path / "back")
    assert not (tmp_path / "back").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 kB filesystem (tmpfs), so writing a larger tar fails with ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", str(mount)], timeout=30, check=False)


def test_a_full_disk_is_class_disk_space_and_leaves_no_partial_tar(tmp_path, small_disk):
    _fake_ms(tmp_path / "work", size=500_000)
    done = _keep_ms(tmp_path / "work", str(small_disk / "{uid}"))
    assert done.returncode == 1
    found = classify(done.stderr.splitlines(), done.returncode)
    assert found.name == "disk-space", done.stderr
    assert "No space left on device" in found.line
    assert list((small_disk / DISK).iterdir()) == []        # no .part, no tar, no record
    assert ms_store.kept(str(small_disk / "{uid}")) == []


def test_the_plan_keeps_the_ms_right_after_restore_only_when_the_key_is_set(tmp_path):
    options = {"source": "http://127.0.0.1:1/{uid}", "casa": {"6.7.0.31": "pypi"}}
    plain = [s.name for s in casa_plan(MousTask(UID, tmp_path, "casa", options=options))]
    assert "keep-ms" not in plain
    kept = casa_plan(MousTask(UID, tmp_path, "casa", options={
        **options, "ms-store": "/store/{uid}", "ms-retention-years": 5}))
    assert [s.name for s in kept] == plain[:2] + ["keep-ms"] + plain[2:]
    argv = kept[2].argv
    assert argv[argv.index("--ms-store") + 1] == "/store/{uid}"
    assert argv[argv.index("--retention-years") + 1] == "5"


def test_a_profile_ms_store_needs_uid_in_its_template(tmp_path):
    assert load_profile(str(_profile(tmp_path, None))).storage.ms_store is None
    assert load_profile(str(_profile(tmp_path, "/s/{uid}"))).storage.ms_retention_years == 3
    with pytest.raises(ProfileError, match="storage.ms-store"):
        load_profile(str(_profile(tmp_path, "/s/all")))


def test_ms_list_and_fetch_commands_and_the_status_view(tmp_path):
    _fake_ms(tmp_path / "work")
    template = str(tmp_path / "store" / "{uid}")
    assert _keep_ms(tmp_path / "work", template).returncode == 0
    site = str(_profile(tmp_path, template))
    runner = CliRunner()
    listed = runner.invoke(main, ["ms", "list", "--site", site, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["uid"] for r in rows] == [UID] and rows[0]["expired"] is False
    fetched = runner.invoke(main, ["ms", "fetch", UID, "--site", site,
                                   "--dest", str(tmp_path / "back")])
    assert fetched.exit_code == 0, fetched.output
    assert f"sha256 {rows[0]['sha256']} verified" in fetched.output
    assert (tmp_path / "back" / f"{DISK}.ms" / "table.dat").is_file()
    view = views.ms_store_view({"s": load_profile(site), "other": None})
    assert view["s"]["kept"] == 1 and view["s"]["bytes"] == rows[0]["bytes"]
    (tmp_path / "x").mkdir()
    none = runner.invoke(main, ["ms", "list", "--site", str(_profile(tmp_path / "x", None))])
    assert none.exit_code == 1 and "no storage.ms-store" in none.output
