"""What a MOUS's work directory holds for the pages (its weblog, FITS products, continuum
preview, ARIQA table), and how a page links to them.

The work directory is ``<work-dir>/<uid on disk>`` under its site's profile; a MOUS whose site
has no profile on this machine, or whose files are not here, has no links. The report links
with ``file://`` URIs and embeds each gallery thumbnail (it opens with no network); the live
dashboard serves the same files under ``/mous/<uid on disk>/`` (arihpc.monitor.server).
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from PIL import Image

from arihpc.errors import InvalidUid
from arihpc.monitor import filecache
from arihpc.mous import disk_name, parse_uid
from arihpc.sites.profile import SiteProfile

log = logging.getLogger(__name__)

WEBLOG = Path("weblog", "index.html")            # arihpc.products.weblog
EXPORT, PREVIEW = "export", "preview"             # the FITS products; their previews
SERVED = (EXPORT, PREVIEW, "weblog", "qa", "moments")   # what the dashboard serves


def work_dir(profiles: Mapping[str, SiteProfile | None], site: str | None,
             uid: str) -> Path | None:
    """The MOUS's work directory under its site's profile, or None (no site or profile)."""
    found = work_dir_name(profiles, site, uid)
    return Path(found) if found is not None else None


def work_dir_name(profiles: Mapping[str, SiteProfile | None], site: str | None,
                  uid: str) -> str | None:
    """``work_dir`` as a string (os.path: for every MOUS of a campaign, pathlib is slow)."""
    profile = profiles.get(site) if site else None
    return os.path.join(profile.storage.work_dir, disk_name(uid)) if profile is not None \
        else None


def present(profiles: Mapping[str, SiteProfile | None],
            placed: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """The work directory (a string) of each (uid, site) whose directory is on this machine:
    each site's work-dir is listed once, not asked about every MOUS (a campaign of 100,000
    has its files for a few here)."""
    listed: dict[str, dict[str, str]] = {}          # work-dir -> uid -> its directory
    found = {}
    for uid, site in placed:
        profile = profiles.get(site) if site else None
        if profile is None:
            continue
        root = os.path.abspath(profile.storage.work_dir)
        if root not in listed:
            listed[root] = _work_dirs(root)
        if uid in listed[root]:
            found[uid] = listed[root][uid]
    return found


def _work_dirs(root: str) -> dict[str, str]:
    """The MOUS directories in a work-dir by uid (canonical, as the store keeps them)."""
    found = {}
    for name in _names(root):
        try:
            found[parse_uid(name)] = os.path.join(root, name)
        except InvalidUid:
            continue                        # batch-logs, a campaign's own files
    return found


@dataclass(frozen=True)
class MousFiles:
    """A MOUS's files on this machine (None: not here)."""

    uid: str
    workdir: Path
    weblog: Path | None
    products: Path | None       # export/, when it holds a FITS product
    preview: Path | None        # the continuum image's preview PNG


def _names(folder: Path | str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _continuum_preview(folder: Path) -> Path | None:
    """The preview of the continuum image (kind cont, or mfs) among a MOUS's previews."""
    pngs = [name for name in _names(folder) if name.endswith(".png")]
    # ALMA product names: member.<uid>.<source>_<intent>.spw<N>.<cube|mfs|cont>.I.pbcor
    for kind in (".cont.", ".mfs."):
        found = [name for name in pngs if kind in name]
        if found:
            return folder / found[0]
    return None


def files_of(uid: str, workdir: Path | str | None) -> MousFiles | None:
    """What the work directory holds, or None when there is none here (a few system calls:
    the report asks this of every MOUS)."""
    names = set(_names(workdir)) if workdir is not None else set()
    if not names:
        return None
    workdir = Path(workdir)
    weblog = workdir / WEBLOG
    has_fits = EXPORT in names and any(n.endswith(".fits") for n in _names(workdir / EXPORT))
    return MousFiles(uid, workdir, weblog if "weblog" in names and weblog.is_file() else None,
                     workdir / EXPORT if has_fits else None,
                     _continuum_preview(workdir / PREVIEW) if PREVIEW in names else None)


THUMBNAIL_WIDTH = 200           # pixels
THUMBNAIL_KIND = "thumbnail"     # its entries in the monitor's cache file


def _small(png: Path, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A preview PNG scaled to ``width`` pixels (its aspect kept), as PNG bytes."""
    with Image.open(png) as image:
        image.load()
        height = max(1, round(image.height * width / image.width))
        small = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR,
                                            reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="PNG", compress_level=1)
    return out.getvalue()


@functools.lru_cache(maxsize=2048)
def _thumbnail(png: str, key: filecache.Key) -> bytes | None:
    cached = filecache.read(THUMBNAIL_KIND, {png: key}).get(png)
    if cached is not None:
        return cached
    try:
        small = _small(Path(png))
    except (OSError, ValueError) as exc:
        log.warning("no thumbnail of %s: %s", png, exc)
        return None
    filecache.write(THUMBNAIL_KIND, {png: (key, small)})
    return small


def thumbnail(png: Path) -> bytes | None:
    """The gallery's small copy of a preview PNG (cached in this process and in the
    monitor's cache file while the PNG is unchanged); None when it cannot be read. Pillow
    alone (matplotlib's own dependency): importing arihpc.products.previews would bring
    matplotlib and WCSAxes, about 1 s."""
    try:
        stat = png.stat()
    except OSError as exc:
        log.warning("no thumbnail of %s: %s", png, exc)
        return None
    return _thumbnail(str(png), (stat.st_mtime_ns, stat.st_size))


def _uri(path: Path) -> str:
    # absolute() is enough for a file:// link and, unlike resolve(), asks the filesystem
    # nothing: a report links into a thousand work directories
    return path.absolute().as_uri()


class ReportLinks:
    """Links of a report file: file:// URIs into the work directories; thumbnails inline."""

    def weblog(self, files: MousFiles) -> str | None:
        return _uri(files.weblog) if files.weblog else None

    def products(self, files: MousFiles) -> str | None:
        return _uri(files.products) + "/" if files.products else None

    def preview(self, files: MousFiles) -> str | None:
        return _uri(files.preview) if files.preview else None

    def thumbnail(self, files: MousFiles) -> str | None:
        small = thumbnail(files.preview) if files.preview else None
        return "data:image/png;base64," + base64.b64encode(small).decode() if small else None


class LiveLinks:
    """Links of a dashboard page: its own /mous/ routes."""

    def weblog(self, files: MousFiles) -> str | None:
        return f"/mous/{disk_name(files.uid)}/file/{WEBLOG.as_posix()}" if files.weblog \
            else None

    def products(self, files: MousFiles) -> str | None:
        return f"/mous/{disk_name(files.uid)}/products" if files.products else None

    def preview(self, files: MousFiles) -> str | None:
        return (f"/mous/{disk_name(files.uid)}/file/{PREVIEW}/{files.preview.name}"
                if files.preview else None)

    def thumbnail(self, files: MousFiles) -> str | None:
        return f"/mous/{disk_name(files.uid)}/thumbnail" if files.preview else None


def served_file(workdir: Path, relative: str) -> Path | None:
    """A file the dashboard may serve from a work directory: inside one of ``SERVED`` (no
    way out of it through ``..`` or a link), and there; else None."""
    parts = Path(relative).parts
    if not parts or parts[0] not in SERVED or ".." in parts:
        return None
    root = (workdir / parts[0]).resolve()
    path = (workdir / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path
