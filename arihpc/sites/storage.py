"""MOUS work directories on a site's storage; on Lustre, large ones get a wide stripe."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from arihpc.mous import disk_name
from arihpc.sites.command import run_command
from arihpc.sites.profile import SiteProfile

log = logging.getLogger(__name__)


def work_dir(profile: SiteProfile, uid: str) -> Path:
    """The work directory of one MOUS (the uid is validated before it names a path)."""
    return Path(profile.storage.work_dir) / disk_name(uid)


def prepare_work_dir(profile: SiteProfile, uid: str, size_gb: float | None) -> Path:
    """Create a MOUS's work directory; stripe it on Lustre when the MOUS is large.

    Striping is set only when the folder is new (Lustre applies it to files created later)
    and only where the ``lfs`` command exists.
    """
    path = work_dir(profile, uid)
    fresh = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    storage = profile.storage
    large = size_gb is not None and size_gb >= storage.stripe_min_gb
    if fresh and storage.kind == "lustre" and large:
        lfs = shutil.which("lfs")
        if lfs is None:
            log.warning("%s: Lustre site but no lfs command: %s keeps the default stripe",
                        profile.name, path)
        else:
            run_command([lfs, "setstripe", "-c", str(storage.stripe_count), str(path)])
    return path
