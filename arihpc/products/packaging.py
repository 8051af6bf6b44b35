"""The ARI-L folder of one MOUS, its tar, and its copy beside the ALMA delivery tree.

An ALMA delivery is ``<project>/science_goal.uid___.../group.uid___.../member.uid___.../`` with
``calibration log product qa raw script``. ARI-L adds ``member.uid___.../ari_l/`` beside them:
``product/`` (FITS), ``qa/`` (ARIQA table, previews), ``log/``, ``README.txt`` and
``MANIFEST.sha256`` (``sha256sum`` format, every other file, sorted by path). The tar holds the
same folder under ``<project>/<science_goal>/<group>/<member>/ari_l/``, so unpacking it at the
root of a delivery drops ari_l/ beside the MOUS's own folders.

Every folder and tar is built under a temporary name and renamed into place: a run cut at any
moment leaves the old result or the new one, never half of one. Nothing else in a delivery tree
is ever created, changed or deleted (``tree_checksums`` is the check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from arihpc.errors import ArihpcError, InvalidUid
from arihpc.mous import check_project, disk_name, find_project, parse_uid

# Part of this module's API, kept in modules of their own (pure text; checksums).
from arihpc.products.readme import product_kind as product_kind
from arihpc.products.readme import readme_text as readme_text
from arihpc.runner.manifest import (
    MANIFEST,
    compare,
    digest,
    list_files,
    parse_manifest,
    write_manifest,
)
from arihpc.runner.manifest import tree_checksums as tree_checksums
from arihpc.runner.manifest import verify_manifest as verify_manifest
from arihpc.runner.workdir import fsync_path

log = logging.getLogger(__name__)

ARI_L = "ari_l"
README = "README.txt"
SUBFOLDERS = ("product", "qa", "log")
# Placeholders for the levels of the delivery tree a MOUS found outside one cannot tell.
UNKNOWN = "unknown"
UNKNOWN_SCIENCE_GOAL = f"science_goal.{UNKNOWN}"
UNKNOWN_GROUP = f"group.{UNKNOWN}"
_TEMP = re.compile(r"\.ari_l\.(part|old)-\d+-[0-9a-f]+")   # our own temp folders, only these


class PackagingError(ArihpcError):
    """The ARI-L folder or tar cannot be made or placed; the message names the path."""


@dataclasses.dataclass(frozen=True)
class DeliveryLayout:
    """Folder names of one MOUS in the ALMA delivery tree (``unknown`` placeholders outside)."""

    project: str
    science_goal: str
    group: str
    member: str

    def __post_init__(self) -> None:
        for name in self.parts:     # each names a folder: one plain path component
            if not name or name in (".", "..") or "/" in name or "\0" in name:
                raise PackagingError(f"{name!r} cannot name a delivery tree folder")

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.project, self.science_goal, self.group, self.member)

    @property
    def ari_l(self) -> PurePosixPath:
        """``<project>/<science_goal>/<group>/<member>/ari_l``, the tar's member prefix."""
        return PurePosixPath(*self.parts, ARI_L)


def _level_uid(name: str, prefix: str) -> str | None:
    """The uid of a delivery folder named ``<prefix>.uid___...``, or None."""
    if not name.startswith(f"{prefix}."):
        return None
    try:
        return parse_uid(name[len(prefix) + 1:])
    except InvalidUid:
        return None


def layout_of(member_folder: Path | None, uid: str, project: str | None = None) -> DeliveryLayout:
    """The delivery layout of MOUS ``uid``: from the folder's parents when they have the ALMA
    shape (member, group, science_goal, project code), else the member name from the uid and
    ``unknown`` placeholders (the project from ``project`` when given)."""
    member = f"member.{disk_name(uid)}"
    if project is not None:
        try:
            project = check_project(project)
        except ValueError as exc:
            raise PackagingError(f"MOUS {uid}: {exc}") from None
    if member_folder is not None:
        folder = Path(os.path.abspath(member_folder))
        names = [folder.name, folder.parent.name, folder.parent.parent.name,
                 folder.parent.parent.parent.name]
        found = _level_uid(names[0], "member")
        if found is not None and found != parse_uid(uid):
            raise PackagingError(f"{folder}: the member folder of {found}, not of {uid}")
        if found and _level_uid(names[1], "group") and _level_uid(names[2], "science_goal") \
                and find_project(names[3]):
            if project and find_project(names[3]) != project:
                log.warning("%s: project folder %s, the catalog says %s; using the folder",
                            folder, names[3], project)
            return DeliveryLayout(names[3], names[2], names[1], names[0])
        log.info("%s: not an ALMA delivery tree member folder; placeholders for the rest", folder)
    return DeliveryLayout(project or UNKNOWN, UNKNOWN_SCIENCE_GOAL, UNKNOWN_GROUP, member)


# ---- the folder ---------------------------------------------------------------------------

def _temp_sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{ARI_L}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _clear_leftovers(parent: Path) -> None:
    """Remove our temp folders left by a cut run (the MOUS lock makes us the only writer)."""
    for path in parent.glob(f".{ARI_L}.*"):
        if _TEMP.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            log.info("removing %s, left by a cut run", path)
            shutil.rmtree(path)


def _replaceable(target: Path) -> bool:
    """Whether ``target`` exists; raises when it does and is not an ari_l of ours."""
    if not (target.exists() or target.is_symlink()):
        return False
    if target.is_symlink() or not target.is_dir() or not (target / MANIFEST).is_file():
        raise PackagingError(f"{target}: exists and is not an arihpc ari_l folder (no "
                             f"{MANIFEST}); not replacing it")
    return True


def _swap_in(fresh: Path, target: Path) -> None:
    """Rename ``fresh`` to ``target``, replacing an ari_l of ours; refuse anything else."""
    old = None
    if _replaceable(target):
        old = _temp_sibling(target, "old")
        os.rename(target, old)
    try:
        os.rename(fresh, target)
    except OSError:
        if old is not None:
            os.rename(old, target)      # put the previous ari_l back
        raise
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder``: its content is on disk before the rename."""
    for top, _dirs, names in os.walk(folder):
        for name in names:
            fsync_path(Path(top, name))
        fsync_path(Path(top))


@contextlib.contextmanager
def _filled_beside(target: Path, action: str) -> Iterator[Path]:
    """A temp sibling of ``target`` for the block to fill; once filled, flushed and renamed to
    ``target`` (an ari_l of ours is replaced). It never stays behind, and an OSError is a
    PackagingError saying what could not be done."""
    work = _temp_sibling(target, "part")
    try:
        yield work
        _fsync_tree(work)
        _swap_in(work, target)
    except OSError as exc:
        raise PackagingError(f"{target}: cannot {action}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_into(sources: Iterable[Path], dest: Path) -> None:
    dest.mkdir()
    for source in map(Path, sources):
        if not source.is_file():
            raise PackagingError(f"{source}: not a file, cannot package it")
        if (dest / source.name).exists():
            raise PackagingError(f"{source}: a second file named {source.name} for "
                                 f"{dest.name}/")
        shutil.copyfile(source, dest / source.name)


def build_ari_l(root: Path, layout: DeliveryLayout, products: Iterable[Path],
                qa_files: Iterable[Path], logs: Iterable[Path], readme: str) -> Path:
    """Write ``root/<project>/<science_goal>/<group>/<member>/ari_l/`` with the files copied in,
    README.txt and MANIFEST.sha256; built under a temp name, then renamed. Returns the folder."""
    target = Path(root).joinpath(*layout.parts, ARI_L)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target.parent)
    with _filled_beside(target, "build") as work:
        work.mkdir()
        for name, sources in zip(SUBFOLDERS, (products, qa_files, logs)):
            _copy_into(sources, work / name)
        (work / README).write_text(readme, encoding="utf-8")
        write_manifest(work)
    log.info("built %s (%d files)", target, len(list_files(target)))
    return target


def publish(ari_l: Path, member_folder: Path) -> Path:
    """Copy ``ari_l`` to ``member_folder/ari_l`` (temp sibling, verify, rename). An older ari_l
    of ours is replaced; any other raises. Nothing else in the delivery tree is touched."""
    ari_l, member_folder = Path(ari_l), Path(member_folder)
    target = member_folder / ARI_L
    if not member_folder.is_dir():
        raise PackagingError(f"{member_folder}: no such delivery member folder")
    _replaceable(target)            # refuse a foreign ari_l before copying anything
    _clear_leftovers(member_folder)
    with _filled_beside(target, "publish") as work:
        shutil.copytree(ari_l, work, copy_function=shutil.copyfile)
        problems = verify_manifest(work)
        if problems:
            raise PackagingError(f"{ari_l}: the copy does not match its manifest: "
                                 + "; ".join(problems[:5]))
    log.info("published %s", target)
    return target


# ---- the tar ------------------------------------------------------------------------------

def _layout_from_folder(ari_l: Path) -> PurePosixPath:
    """The tar prefix ``<project>/<sg>/<group>/<member>/ari_l`` of a built ari_l folder."""
    parts = Path(os.path.abspath(ari_l)).parts
    if parts[-1] != ARI_L or len(parts) < 6 or not (Path(ari_l) / MANIFEST).is_file():
        raise PackagingError(f"{ari_l}: not an ari_l folder made by build_ari_l "
                             f"(<project>/<science_goal>/<group>/<member>/ari_l with {MANIFEST})")
    return PurePosixPath(*parts[-5:])


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No local user names or ids in a tar meant for the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(ari_l: Path, tar_path: Path) -> Path:
    """One uncompressed tar of ``ari_l`` under ``<project>/<sg>/<group>/<member>/ari_l/``,
    written to a temp name then renamed. Returns ``tar_path``."""
    ari_l, tar_path = Path(ari_l), Path(tar_path)
    prefix = _layout_from_folder(ari_l)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in tar_path.parent.glob(f".{tar_path.name}.*.part"):
        stale.unlink()              # left by a cut run (the MOUS lock: we are the only writer)
    tmp = tar_path.with_name(f".{tar_path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(ari_l, arcname=str(prefix), recursive=False, filter=_normalise)
                for path in sorted(ari_l.rglob("*")):
                    arcname = prefix / path.relative_to(ari_l).as_posix()
                    tar.add(path, arcname=str(arcname), recursive=False, filter=_normalise)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, tar_path)
        fsync_path(tar_path.parent)
    except OSError as exc:
        raise PackagingError(f"{tar_path}: cannot write: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%d bytes)", tar_path, tar_path.stat().st_size)
    return tar_path


def _tar_sums(tar: tarfile.TarFile, where: str) -> tuple[dict, str | None, list[str]]:
    """Checksums of the tar's files below its one ``.../ari_l/`` prefix, the manifest text,
    and the problems (other members, a second prefix, duplicates, links)."""
    sums: dict[str, str | None] = {}
    manifest, prefix, problems = None, None, []
    for member in tar:
        name = PurePosixPath(member.name)
        if name.name == ARI_L and member.isdir() and prefix is None:
            prefix = name
            if len(name.parts) != 5 or name.is_absolute():
                problems.append(f"{where}: {member.name} is not "
                                f"<project>/<science_goal>/<group>/<member>/{ARI_L}")
            continue
        if prefix is None or prefix not in name.parents:
            problems.append(f"{where}: member {member.name} is outside <...>/{ARI_L}/")
            continue
        rel = name.relative_to(prefix).as_posix()
        if member.isdir():
            continue
        if rel in sums or (rel == MANIFEST and manifest is not None):
            problems.append(f"{where}: member {member.name} appears twice")
        if not member.isfile():
            sums[rel] = None
            continue
        data = tar.extractfile(member)
        if rel == MANIFEST:
            manifest = data.read().decode("utf-8", errors="replace")
            continue
        sums[rel] = digest(data)
    return sums, manifest, problems


def verify_tar(tar_path: Path) -> list[str]:
    """The problems of a tar against the MANIFEST.sha256 it holds, read as a stream (nothing is
    extracted to disk); empty when all is well."""
    where = str(tar_path)
    try:
        with tarfile.open(tar_path, mode="r|") as tar:
            sums, manifest, problems = _tar_sums(tar, where)
    except (OSError, tarfile.TarError) as exc:
        return [f"{where}: cannot read the tar: {exc}"]
    if manifest is None:
        return problems + [f"{where}: no {ARI_L}/{MANIFEST} in the tar"]
    entries, bad = parse_manifest(manifest, f"{where}:{MANIFEST}")
    return problems + bad + compare(entries, sums, where)

