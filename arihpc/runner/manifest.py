"""sha256 checksums: the ``sha256sum``-format MANIFEST of an ari_l folder, and the checksums of
a whole folder tree (the "delivery tree unchanged" check). arihpc.products.packaging re-exports
``verify_manifest`` and ``tree_checksums``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from arihpc.errors import ArihpcError

MANIFEST = "MANIFEST.sha256"
_CHUNK = 1 << 20


class ChecksumError(ArihpcError):
    """A file below a tree being checksummed cannot be read; the message names it."""


def digest(stream: BinaryIO) -> str:
    """Hex sha256 of a binary stream, read in chunks."""
    state = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        state.update(chunk)
    return state.hexdigest()


def sha256_of(path: Path) -> str:
    """Hex sha256 of one file, read in chunks."""
    with open(path, "rb") as f:
        return digest(f)


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file below ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def write_manifest(folder: Path) -> None:
    """MANIFEST.sha256 of every other file below ``folder``, sorted by path."""
    lines = [f"{sha256_of(folder / rel)}  {rel}\n" for rel in list_files(folder) if rel != MANIFEST]
    (folder / MANIFEST).write_text("".join(lines), encoding="utf-8")


def parse_manifest(text: str, where: str) -> tuple[dict[str, str], list[str]]:
    """Path -> checksum from ``sha256sum`` lines; and the problems (bad or unsafe lines)."""
    entries, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        rel = PurePosixPath(match.group(2)) if match else None
        if rel is None or rel.is_absolute() or ".." in rel.parts:
            problems.append(f"{where}:{number}: not a safe sha256sum line: {line[:120]!r}")
        else:
            entries[rel.as_posix()] = match.group(1)
    return entries, problems


def compare(entries: dict[str, str], actual: dict[str, str | None], where: str) -> list[str]:
    """Problems between the manifest's checksums and those found (None: not a regular file)."""
    problems = [f"{where}: missing file {rel}" for rel in sorted(set(entries) - set(actual))]
    problems += [f"{where}: extra file {rel} (not in {MANIFEST})"
                 for rel in sorted(set(actual) - set(entries))]
    for rel in sorted(set(entries) & set(actual)):
        if actual[rel] is None:
            problems.append(f"{where}: {rel} is not a regular file")
        elif actual[rel] != entries[rel]:
            problems.append(f"{where}: checksum mismatch for {rel}")
    return problems


def verify_manifest(folder: Path) -> list[str]:
    """The problems of an ari_l folder against its MANIFEST.sha256; empty when all is well."""
    folder = Path(folder)
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{folder / MANIFEST}: cannot read: {exc.strerror or exc}"]
    entries, problems = parse_manifest(text, str(folder / MANIFEST))
    actual: dict[str, str | None] = {}
    for rel in list_files(folder):
        path = folder / rel
        try:
            actual[rel] = sha256_of(path) if path.is_file() and not path.is_symlink() else None
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
    actual.pop(MANIFEST, None)
    return problems + compare(entries, actual, str(folder))


def tree_checksums(folder: Path, exclude: Sequence[str] = ("ari_l",)) -> dict[str, str]:
    """sha256 of every file below ``folder`` by relative path, skipping folders named in
    ``exclude``; a symlink is recorded by its target, not followed."""
    folder, sums = Path(folder), {}
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in exclude]
        for name in names + [d for d in dirs if Path(top, d).is_symlink()]:
            path = Path(top, name)
            try:
                sums[path.relative_to(folder).as_posix()] = (
                    f"symlink:{os.readlink(path)}" if path.is_symlink() else sha256_of(path))
            except OSError as exc:
                raise ChecksumError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return dict(sorted(sums.items()))
