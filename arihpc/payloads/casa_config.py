"""The offline CASA 6 set-up of one payload process, made before casatools is imported.

CASA 6 (casaconfig 1.x) reads, when casatools is first imported, a site config file named by
the ``CASASITECONFIG`` environment variable (an absolute path) and then the user's
``~/.casa/config.py``. The payload writes its own site config into the MOUS work directory::

    WORKDIR/casa/casasiteconfig.py   measurespath = casadata's data, auto-updates off, log file
    WORKDIR/casa/home/               the payload's HOME: no user config.py read, caches go here

and points ``CASASITECONFIG``, ``HOME`` and ``TMPDIR`` of this process (and of nothing else) at
them. With both auto-updates off casaconfig never touches the network. The measures data
are those shipped by the ``casadata`` package; ``ARIHPC_CASA_MEASURESPATH`` names another
folder of CASA runtime data instead (a site's own, kept up to date by its admins).

CASA then logs ``SEVERE ... Leap second table TAI_UTC seems out-of-date`` (casadata's
leap-second table ends before today): harmless, the failure rules ignore it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from arihpc.errors import ArihpcError

MEASURES_VAR = "ARIHPC_CASA_MEASURESPATH"
CONFIG_NAME = "casasiteconfig.py"
_IERS = Path("geodetic") / "IERSeop2000"     # casatools refuses to start without it


class CasaSetupError(ArihpcError):
    """CASA cannot be set up to run offline (no casadata, no measures, casatools loaded)."""


@dataclass(frozen=True)
class CasaPaths:
    """Where one stage's CASA reads its config and writes its caches, temp files and log."""

    config: Path
    home: Path
    tmp: Path
    logfile: Path
    measures: Path


def measures_path() -> Path:
    """The CASA runtime data to use: ``$ARIHPC_CASA_MEASURESPATH``, else casadata's."""
    chosen = os.environ.get(MEASURES_VAR)
    if chosen:
        path, where = Path(chosen).resolve(), f"{MEASURES_VAR}={chosen}"
    else:
        try:
            import casadata  # a plain package: only its path is computed on import
        except ImportError:
            raise CasaSetupError("casadata is not installed: pip install -e '.[casa]'") from None
        path, where = Path(casadata.datapath), "the casadata package"
    if not (path / _IERS).is_dir():
        raise CasaSetupError(f"{path} (from {where}) has no {_IERS} table: not CASA runtime data")
    return path


def site_config(measures: Path, home: Path, logfile: Path) -> str:
    """The text of the site config: offline measures, no auto-update, no GUI, one log file."""
    return "\n".join([
        "# Written by arihpc.payloads.casa_config for one payload stage: CASA offline.",
        f"measurespath = {str(measures)!r}",
        f"datapath = [{str(measures)!r}]",
        "measures_auto_update = False",
        "data_auto_update = False",
        f"cachedir = {str(home / '.casa')!r}",
        f"startupfile = {str(home / '.casa' / 'startup.py')!r}",
        f"logfile = {str(logfile)!r}",
        "nologger = True",
        "nogui = True",
        "agg = True",
        "log2term = False",
        "",
    ])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare(workdir: Path, stage: str) -> CasaPaths:
    """Write the config into ``workdir/casa`` and make a fresh temp folder for ``stage``.

    The temp folder is under ``$ARIHPC_SCRATCH`` (node-local scratch set by the job
    prologue) when that is set, else under ``workdir/casa/tmp``.
    """
    root = workdir.resolve() / "casa"
    home = root / "home"
    (home / ".casa").mkdir(parents=True, exist_ok=True)
    logdir = workdir.resolve() / "log"
    logdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("ARIHPC_SCRATCH") or root / "tmp")
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"casa-{stage}-", dir=scratch))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    logfile = logdir / f"casa-{stage}-{stamp}-{os.getpid()}.log"
    measures = measures_path()
    config = root / CONFIG_NAME
    _write_atomic(config, site_config(measures, home, logfile))
    return CasaPaths(config, home, tmp, logfile, measures)


def environment(paths: CasaPaths) -> dict[str, str]:
    """The variables that make a CASA process use ``paths`` (and never the user's home)."""
    return {"CASASITECONFIG": str(paths.config), "HOME": str(paths.home),
            "TMPDIR": str(paths.tmp), "MPLBACKEND": "Agg"}


def activate(workdir: Path, stage: str) -> CasaPaths:
    """Set this process up for CASA: config, environment, cwd = the stage's temp folder.

    Must run before casatools is imported: casaconfig reads its config only then.
    """
    if "casatools" in sys.modules or "casaconfig" in sys.modules:
        raise CasaSetupError("casatools was imported before the offline CASA config was set")
    paths = prepare(workdir, stage)
    os.environ.update(environment(paths))
    tempfile.tempdir = None         # Python's own temp files follow the new TMPDIR
    os.chdir(paths.tmp)             # anything CASA drops in its cwd is removed with the folder
    return paths
