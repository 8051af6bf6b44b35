"""The calibrated MS of each MOUS, kept as a by-product (ARI-L plan, section A.2).

After the restore stage, the measurement sets are written as one tar into the site's MS store
(``storage.ms-store``, a folder template with ``{uid}``, outside the delivery tree)::

    <folder>/<uid>.calibrated.ms.tar         the measurement sets
    <folder>/<uid>.calibrated.ms.tar.sha256  its checksum, in sha256sum's format
    <folder>/<uid>.calibrated.ms.json        uid, bytes, sha256, written, retain_until, ms

The tar is written as a ``.part`` file, hashed while it is written, synced and renamed; any
failure removes the part, so the store never holds a partial tar. A full disk is reported as
"No space left on device" (failure class ``disk-space``). ``arihpc ms list|fetch`` read it.
"""

from __future__ import annotations

import datetime as dt
import errno
import glob
import hashlib
import json
import logging
import os
import tarfile
from pathlib import Path

from arihpc.errors import ArihpcError
from arihpc.mous import disk_name, parse_uid
from arihpc.runner.manifest import sha256_of
from arihpc.runner.workdir import write_json_atomic

log = logging.getLogger(__name__)
TAR_SUFFIX = ".calibrated.ms.tar"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class MsStoreError(ArihpcError):
    """The MS store cannot be written or read: the message says which file and why."""


def folder_of(template: str, uid: str) -> Path:
    """The MS store folder of one MOUS (the uid is validated before it names a path)."""
    return Path(template.format(uid=disk_name(uid)))


def paths_of(folder: Path, uid: str) -> tuple[Path, Path, Path]:
    """(tar, .sha256, .json) of one MOUS in its folder."""
    tar = folder / f"{disk_name(uid)}{TAR_SUFFIX}"
    return tar, tar.with_name(tar.name + ".sha256"), folder / f"{disk_name(uid)}.calibrated.ms.json"


class _HashingWriter:
    """A file that hashes what is written to it (a 1 TB MS is not read twice)."""

    def __init__(self, file):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)


def retain_until(written: dt.date, years: float) -> dt.date:
    return written + dt.timedelta(days=round(365.25 * years))


def keep(measurement_sets: list[Path], folder: Path, uid: str, years: float) -> dict:
    """Write the tar, its checksum and its record into ``folder``; the record."""
    if not measurement_sets:
        raise MsStoreError("no measurement set to keep: run the restore stage first")
    tar, checksum, record_path = paths_of(folder, uid)
    part = tar.with_name(f".{tar.name}.part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writer = _write_tar(measurement_sets, part)
        record = _record(uid, tar, writer, measurement_sets, years)
        # The checksum and the record first, the tar last: a tar in the store always has both.
        _write_text_atomic(checksum, f"{record['sha256']}  {tar.name}\n")
        write_json_atomic(record_path, record)
        os.replace(part, tar)
    except OSError as exc:
        for path in (part, tar, checksum, record_path):
            path.unlink(missing_ok=True)       # no partial tar, no record of a missing one
        if exc.errno in FULL_DISK:
            raise MsStoreError(f"No space left on device while writing {part} "
                               f"({exc.strerror}); nothing was left in {folder}") from None
        raise MsStoreError(f"{part}: cannot write the MS tar: {exc}") from None
    log.info("kept %s (%d bytes, sha256 %s) until %s", tar, record["bytes"], record["sha256"],
             record["retain_until"])
    return record


def _record(uid: str, tar: Path, writer: _HashingWriter, measurement_sets: list[Path],
            years: float) -> dict:
    today = dt.datetime.now(dt.timezone.utc).date()
    return {"uid": parse_uid(uid), "tar": str(tar), "bytes": writer.size,
            "sha256": writer.sha256.hexdigest(), "written": today.isoformat(),
            "retain_until": retain_until(today, years).isoformat(),
            "ms": [m.name for m in measurement_sets]}


def _write_tar(measurement_sets: list[Path], part: Path) -> _HashingWriter:
    with open(part, "wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w|") as archive:
            for ms in measurement_sets:
                archive.add(ms, arcname=ms.name)
        raw.flush()
        os.fsync(raw.fileno())
    return writer


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)


def kept(template: str) -> list[dict]:
    """The record of every MOUS in the store, by uid; a record that cannot be read is
    logged and left out."""
    pattern = template.replace("{uid}", "*")
    found = []
    for path in sorted(glob.glob(str(Path(pattern) / "*.calibrated.ms.json"))):
        try:
            record = json.loads(Path(path).read_text())
            record["expired"] = dt.date.fromisoformat(record["retain_until"]) < dt.date.today()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: not an MS store record (%s)", path, exc)
            continue
        found.append(record)
    return sorted(found, key=lambda r: r["uid"])


def fetch(template: str, uid: str, dest: Path) -> dict:
    """Check one MOUS's tar against its recorded sha256 and unpack it into ``dest``; the
    record. Nothing is unpacked when the checksum differs."""
    tar, checksum, record_path = paths_of(folder_of(template, uid), uid)
    if not record_path.is_file() or not tar.is_file():
        raise MsStoreError(f"{parse_uid(uid)}: no calibrated MS kept in {tar.parent}")
    record = json.loads(record_path.read_text())
    listed = checksum.read_text().split()[0] if checksum.is_file() else None
    actual = sha256_of(tar)
    if actual != record["sha256"] or (listed and listed != actual):
        raise MsStoreError(f"{tar}: sha256 {actual} does not match the recorded "
                           f"{record['sha256']}: the tar is damaged; nothing was unpacked")
    for name in record["ms"]:
        if (dest / name).exists():
            raise MsStoreError(f"{dest / name} exists already: fetch into another --dest")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as archive:
        archive.extractall(dest, filter="data")
    return {**record, "verified_sha256": actual, "dest": str(dest)}
