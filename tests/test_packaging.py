"""The ARI-L folder, its tar and its copy beside a fake ALMA delivery tree.

The delivery tree has the real shape (project / science_goal / group / member / {calibration,
log, product, qa, raw, script}); every one of its files must be byte-identical after build,
tar and publish, and nothing but ``member.../ari_l`` may appear in it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from arihpc.errors import ArihpcError
from arihpc.products.packaging import (
    MANIFEST,
    DeliveryLayout,
    PackagingError,
    build_ari_l,
    layout_of,
    publish,
    readme_text,
    tree_checksums,
    verify_manifest,
    verify_tar,
    write_tar,
)

UID = "uid://A001/X12a3/Xe9"
PROJECT = "2017.1.01185.S"
SG, GROUP, MEMBER = ("science_goal.uid___A001_X12a3_Xe7", "group.uid___A001_X12a3_Xe8",
                     "member.uid___A001_X12a3_Xe9")
STEM = "member.uid___A001_X12a3_Xe9.J1234-5678_sci"
VERDICTS = [
    {"product": f"{STEM}.spw25.cube.I.pbcor.fits", "verdict": "accept",
     "reason": "rms 0.95 x and dynamic range 1.02 x QA2's"},
    {"product": f"{STEM}.spw25_27.cont.I.pbcor.fits", "verdict": "reject",
     "reason": "rms 45% worse than QA2"},
    {"product": f"{STEM}.spw27.cube.I.pbcor.fits", "verdict": "no-counterpart",
     "reason": "no QA2 image of spw27"},
]
PROVENANCE = {"arihpc": "0.1.0", "casa": "6.7.0-31", "site": "ESO", "date": "2026-11-22",
              "imaging": {"weighting": "briggs", "robust": 0.5, "niter": 100}}


@pytest.fixture
def delivery(tmp_path: Path) -> Path:
    """A delivery tree with the ALMA shape; returns its member folder."""
    member = tmp_path / "delivery" / PROJECT / SG / GROUP / MEMBER
    files = {"product/member.uid___A001_X12a3_Xe9.J1234-5678_sci.spw25.cube.I.pbcor.fits":
             b"SIMPLE  = T" + bytes(3000), "script/scriptForPI.py": b"# PI script\n",
             "qa/uid___A001_X12a3_Xe9__qa2_part1.png": bytes(range(256)),
             "log/uid___A001_X12a3_Xe9.casa.log": b"INFO tclean\n",
             "calibration/uid___A001_X12a3_Xe9.calibration.tgz": os.urandom(2048),
             "raw/README": b"raw data come from the archive\n"}
    for rel, data in files.items():
        (member / rel).parent.mkdir(parents=True, exist_ok=True)
        (member / rel).write_bytes(data)
    (member.parent.parent / "README").write_text("science goal readme\n")
    os.symlink("scriptForPI.py", member / "script" / "link.py")
    return member


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, list[Path]]:
    """What a run made: FITS products, the ARIQA table and previews, logs."""
    work = tmp_path / "work"
    made: dict[str, list[Path]] = {"products": [], "qa": [], "logs": []}
    for row in VERDICTS:
        path = work / "export" / row["product"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"SIMPLE  = T" + os.urandom(1000))
        made["products"].append(path)
        png = work / "preview" / row["product"].replace(".fits", ".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(b"\x89PNG" + os.urandom(200))
        made["qa"].append(png)
    (work / "qa").mkdir()
    (work / "qa" / "ariqa.csv").write_text("product,verdict,reason\n")
    made["qa"].append(work / "qa" / "ariqa.csv")
    (work / "log").mkdir()
    (work / "log" / "casa-image.log").write_text("INFO tclean done\n")
    made["logs"].append(work / "log" / "casa-image.log")
    return made


def _build(root: Path, layout: DeliveryLayout, outputs: dict[str, list[Path]]) -> Path:
    readme = readme_text(UID, outputs["products"], VERDICTS, PROVENANCE)
    return build_ari_l(root, layout, outputs["products"], outputs["qa"], outputs["logs"], readme)


def test_layout_from_the_delivery_tree(delivery: Path) -> None:
    layout = layout_of(delivery, UID, project=PROJECT)
    assert layout == DeliveryLayout(PROJECT, SG, GROUP, MEMBER)
    assert str(layout.ari_l) == f"{PROJECT}/{SG}/{GROUP}/{MEMBER}/ari_l"


def test_layout_falls_back_for_a_flat_folder(tmp_path: Path) -> None:
    flat = tmp_path / "uid___A001_X12a3_Xe9"
    flat.mkdir()
    assert layout_of(flat, UID) == DeliveryLayout("unknown", "science_goal.unknown",
                                                  "group.unknown", MEMBER)
    assert layout_of(None, UID, project=PROJECT).project == PROJECT
    with pytest.raises(PackagingError, match="not an ALMA project code"):
        layout_of(None, UID, project="../../etc")
    with pytest.raises(ArihpcError):
        layout_of(None, "uid___A001_X12a3_Xe9/../..")


def test_layout_refuses_another_mous_member_folder(delivery: Path) -> None:
    with pytest.raises(PackagingError, match=MEMBER):
        layout_of(delivery, "uid://A001/X12a3/Xea")


def test_build_tar_publish_leave_the_delivery_tree_unchanged(
        delivery: Path, outputs: dict[str, list[Path]], tmp_path: Path) -> None:
    top = tmp_path / "delivery"
    before, listing = tree_checksums(top, exclude=()), sorted(os.listdir(delivery))
    layout = layout_of(delivery, UID, project=PROJECT)
    ari_l = _build(tmp_path / "work" / "package", layout, outputs)
    tar = write_tar(ari_l, tmp_path / "work" / "uid___A001_X12a3_Xe9.ari_l.tar")
    published = publish(ari_l, delivery)
    published = publish(ari_l, delivery)            # a rerun replaces our own ari_l
    assert published == delivery / "ari_l"
    assert tree_checksums(top) == before
    assert sorted(os.listdir(delivery)) == sorted(listing + ["ari_l"])
    assert verify_manifest(ari_l) == [] and verify_manifest(published) == []
    assert verify_tar(tar) == []
    assert [p.name for p in tar.parent.iterdir() if p.name.startswith(".")] == []
    with tarfile.open(tar) as archive:
        names = archive.getnames()
        assert all(m.uid == 0 and m.uname == "" for m in archive.getmembers())
    prefix = f"{PROJECT}/{SG}/{GROUP}/{MEMBER}/ari_l"
    assert names[0] == prefix and all(n.startswith(prefix) for n in names)
    assert f"{prefix}/{MANIFEST}" in names and f"{prefix}/qa/ariqa.csv" in names


def test_manifest_is_sha256sum_format(delivery: Path, outputs: dict[str, list[Path]],
                                      tmp_path: Path) -> None:
    ari_l = _build(tmp_path / "package", layout_of(delivery, UID), outputs)
    lines = (ari_l / MANIFEST).read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths) and MANIFEST not in paths
    assert set(paths) == {p.relative_to(ari_l).as_posix() for p in ari_l.rglob("*")
                          if p.is_file() and p.name != MANIFEST}
    for line in lines:
        digest, rel = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line).groups()
        assert hashlib.sha256((ari_l / rel).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in ari_l.iterdir()) == [MANIFEST, "README.txt", "log",
                                                        "product", "qa"]


def test_changed_missing_and_extra_files_are_reported(
        delivery: Path, outputs: dict[str, list[Path]], tmp_path: Path) -> None:
    ari_l = _build(tmp_path / "package", layout_of(delivery, UID), outputs)
    (ari_l / "qa" / "ariqa.csv").write_text("product,verdict,reason\nforged,accept,\n")
    (ari_l / "log" / "casa-image.log").unlink()
    (ari_l / "product" / "stray.fits").write_bytes(b"x")
    problems = "\n".join(verify_manifest(ari_l))
    assert "checksum mismatch for qa/ariqa.csv" in problems
    assert "missing file log/casa-image.log" in problems
    assert "extra file product/stray.fits" in problems
    with pytest.raises(PackagingError, match="does not match its manifest"):
        publish(ari_l, delivery)
    assert not (delivery / "ari_l").exists()
    assert [p for p in delivery.iterdir() if p.name.startswith(".")] == []


def test_tampered_tar_is_reported(delivery: Path, outputs: dict[str, list[Path]],
                                  tmp_path: Path) -> None:
    ari_l = _build(tmp_path / "package", layout_of(delivery, UID, PROJECT), outputs)
    tar = write_tar(ari_l, tmp_path / "ari_l.tar")
    data = bytearray(tar.read_bytes())
    at = data.index(b"INFO tclean done")               # the log's content, not a header
    data[at] ^= 0x20
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(data))
    assert verify_tar(tampered) == [f"{tampered}: checksum mismatch for log/casa-image.log"]

    extra = tmp_path / "extra.tar"
    shutil.copyfile(tar, extra)
    with tarfile.open(extra, "a") as archive:
        archive.add(outputs["logs"][0], arcname=f"{layout_of(delivery, UID).ari_l}/log/new.log")
    assert any("extra file log/new.log" in p for p in verify_tar(extra))

    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:5000])
    assert verify_tar(cut) != []


def test_foreign_ari_l_is_refused(delivery: Path, outputs: dict[str, list[Path]],
                                  tmp_path: Path) -> None:
    (delivery / "ari_l").mkdir()
    (delivery / "ari_l" / "notes.txt").write_text("someone else's\n")
    before = tree_checksums(delivery, exclude=())
    ari_l = _build(tmp_path / "package", layout_of(delivery, UID), outputs)
    with pytest.raises(PackagingError, match=f"{delivery / 'ari_l'}.*not an arihpc ari_l"):
        publish(ari_l, delivery)
    assert tree_checksums(delivery, exclude=()) == before


def test_a_failed_build_leaves_the_previous_ari_l(
        delivery: Path, outputs: dict[str, list[Path]], tmp_path: Path) -> None:
    layout = layout_of(delivery, UID, PROJECT)
    cut = tmp_path / "package" / Path(*layout.parts) / ".ari_l.part-999999-0badcafe"
    (cut / "product").mkdir(parents=True)       # what a build cut by SIGKILL leaves
    ari_l = _build(tmp_path / "package", layout, outputs)
    assert not cut.exists()
    first = tree_checksums(ari_l, exclude=())
    missing = tmp_path / "work" / "export" / "gone.fits"
    with pytest.raises(PackagingError, match="gone.fits"):
        build_ari_l(tmp_path / "package", layout, [*outputs["products"], missing], [], [], "x")
    assert tree_checksums(ari_l, exclude=()) == first
    assert [p.name for p in ari_l.parent.iterdir()] == ["ari_l"]    # no temp folder left


def test_readme_tells_what_how_verdicts_and_caveats(outputs: dict[str, list[Path]]) -> None:
    text = readme_text(UID, outputs["products"], VERDICTS, PROVENANCE)
    flat = " ".join(text.split())           # wrapping may break a phrase across lines
    assert UID in text
    for row in VERDICTS:
        assert row["product"] in text
    assert "cube, full spectral resolution" in text and "continuum over" in text
    assert "accept: rms 0.95 x and dynamic range 1.02 x QA2's" in text
    assert "REJECT: rms 45% worse than QA2" in text
    assert "no QA2 counterpart (not compared): no QA2 image of spw27" in text
    assert "6.7.0-31" in text and "ESO" in text and "robust = 0.5" in text
    assert "NOT science-ready" in flat and "Check the QA before using any product" in flat
