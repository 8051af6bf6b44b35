"""Shared fixtures and the component markers registered in setup.cfg ``[tool:pytest]``.

A test marked ``postgres``, ``pg_restart``, ``samples``, ``slurm``, ``pbs``, ``casa`` or
``browser`` runs only where that real component is available. Elsewhere it is skipped with
the reason and how to get the component; under CI (``CI=true``), where every component must
be present, it fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = (REPO_ROOT / ".." / "shared" / "alma-samples").resolve()
POSTGRES_URL_VAR = "ARIHPC_TEST_POSTGRES_URL"


def _probe_postgres() -> str | None:
    if os.environ.get(POSTGRES_URL_VAR):
        return None
    return (f"{POSTGRES_URL_VAR} is not set: run scripts/test.sh, which installs and starts "
            "PostgreSQL")


def _probe_pg_restart() -> str | None:
    if _probe_postgres() is None and all(os.environ.get(f"ARIHPC_TEST_PG_{name}")
                                         for name in ("CTL", "DATA", "USER")):
        return None
    return ("ARIHPC_TEST_PG_CTL/_DATA/_USER are not set: run scripts/test.sh, whose PostgreSQL "
            "the tests may restart")


def _probe_samples() -> str | None:
    if SAMPLES_DIR.is_dir():
        return None
    return f"{SAMPLES_DIR} not found: ../shared/alma-samples beside the project (CI always has it)"


def _probe_slurm() -> str | None:
    if not (shutil.which("sbatch") and shutil.which("squeue") and shutil.which("scontrol")):
        return ("sbatch/squeue not on PATH: apt-get install slurm-wlm, then "
                "scripts/local-slurm.sh start")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        ping = None
    if ping is None or ping.returncode != 0 or "UP" not in ping.stdout:
        return "slurmctld does not answer scontrol ping: run scripts/local-slurm.sh start"
    return None


def _probe_pbs() -> str | None:
    if not (shutil.which("qsub") and shutil.which("qstat")):
        return ("qsub/qstat not on PATH: apt-get install slurm-wlm-torque, then "
                "scripts/local-slurm.sh start")
    return _probe_slurm()  # SLURM's PBS wrappers submit to SLURM


def _probe_casa() -> str | None:
    if importlib.util.find_spec("casatasks") is not None:
        return None
    return "casatasks is not installed: pip install -e '.[casa]' (CASA 6.7.0.31 needs Python 3.11)"


def _probe_browser() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    if missing:
        return f"{' and '.join(missing)} not on PATH: apt-get install chromium chromium-driver"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -e '.[test]'"
    return None


# Marker name -> probe returning None when the component is available, else why not and how
# to get it.
COMPONENTS: dict[str, Callable[[], str | None]] = {
    "postgres": _probe_postgres,
    "pg_restart": _probe_pg_restart,
    "samples": _probe_samples,
    "slurm": _probe_slurm,
    "pbs": _probe_pbs,
    "casa": _probe_casa,
    "browser": _probe_browser,
}

_PROBED = pytest.StashKey[dict[str, str | None]]()


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def component_missing(config: pytest.Config, marker: str) -> str | None:
    """Why the component behind ``marker`` is unavailable, or None; probed once per session."""
    probed = config.stash.setdefault(_PROBED, {})
    if marker not in probed:
        probed[marker] = COMPONENTS[marker]()
    return probed[marker]


def require_component(config: pytest.Config, marker: str) -> None:
    """Skip the current test if the component is missing, or fail it under CI."""
    reason = component_missing(config, marker)
    if reason is None:
        return
    if _under_ci():
        pytest.fail(f"{marker} required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the component markers before the test's fixtures are set up."""
    for marker in COMPONENTS:
        if item.get_closest_marker(marker) is not None:
            require_component(item.config, marker)


@pytest.fixture(scope="session")
def samples_dir(request: pytest.FixtureRequest) -> Path:
    """The real ALMA archive exports in ../shared/alma-samples (mark tests using it ``samples``)."""
    require_component(request.config, "samples")
    return SAMPLES_DIR


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    require_component(request.config, "postgres")
    import sqlalchemy

    server = sqlalchemy.make_url(os.environ[POSTGRES_URL_VAR])
    name = f"arihpc_t_{uuid.uuid4().hex[:16]}"
    # pre-ping: a test may have restarted the server (tests/test_store_outage.py)
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of an SQLite database file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'arihpc.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """A campaign-store URL: the test runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")
