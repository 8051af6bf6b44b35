"""Packaged defaults (arihpc/arihpc.yaml) and campaign config files, read through dask.config."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import dask.config
import yaml

from arihpc.errors import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("arihpc.yaml")

with open(DEFAULTS_FILE, encoding="utf-8") as _f:
    DEFAULTS: dict = yaml.safe_load(_f)
# Registering defaults at import is how dask-jobqueue does it: user files and dask.config.set win.
dask.config.update_defaults(DEFAULTS)


def get(key: str) -> Any:
    """The value of ``arihpc.<key>`` (dashes and underscores are interchangeable)."""
    return dask.config.get(f"arihpc.{key}")


# Settings whose value is a table given whole: a config file replaces it rather than merging.
TABLES = {"arihpc.cycles", "arihpc.selection.qa2-tiers", "arihpc.planning.failure-rates",
          "arihpc.planning.stage-fractions"}


def _flatten(given: dict, known: dict, prefix: str, unknown: list[str]) -> dict[str, Any]:
    """Dotted setting paths -> values; paths arihpc does not know go to ``unknown``."""
    known_norm = {str(k).replace("_", "-"): v for k, v in known.items()}
    flat: dict[str, Any] = {}
    for key, value in given.items():
        name = str(key).replace("_", "-")
        path = f"{prefix}.{name}" if prefix else name
        if name not in known_norm:
            unknown.append(path)
        elif isinstance(known_norm[name], dict) and path not in TABLES:
            if not isinstance(value, dict):
                unknown.append(f"{path} (expected a mapping)")
            else:
                flat.update(_flatten(value, known_norm[name], path, unknown))
        else:
            flat[path] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read and check a campaign config file; returns dotted settings for ``dask.config.set``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict) or set(data) != {"arihpc"}:
        raise ConfigError(f"{path}: a campaign config file holds one top-level key, 'arihpc'")
    unknown: list[str] = []
    flat = _flatten(data, DEFAULTS, "", unknown)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)} "
                          f"(the settings and their defaults are in {DEFAULTS_FILE})")
    return flat


def overrides() -> dict[str, Any]:
    """The arihpc settings in force that differ from the packaged defaults, dotted: what a
    campaign config file, ``dask.config.set`` or ``DASK_ARIHPC__*`` changed. A batch job's
    worker does not see them; its tasks carry them (``apply``)."""
    current = _flatten({"arihpc": dask.config.get("arihpc")}, DEFAULTS, "", [])
    packaged = _flatten(DEFAULTS, DEFAULTS, "", [])
    return {path: value for path, value in current.items() if packaged.get(path) != value}


_applied: dict[str, Any] = {}


def apply(settings: dict[str, Any]) -> None:
    """Put ``settings`` (from ``overrides``) in force in this process for good, and in the
    commands it starts (through dask's own DASK_INTERNAL_INHERIT_CONFIG, which a Python
    process importing dask reads). For a worker: it serves one campaign."""
    if not settings or settings == _applied:
        return
    dask.config.set(settings)
    nested: dict = {}
    dask.config.set(settings, config=nested)
    inherited = os.environ.get("DASK_INTERNAL_INHERIT_CONFIG")
    if inherited:
        nested = dask.config.merge(dask.config.deserialize(inherited), nested)
    os.environ["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(nested)
    _applied.clear()
    _applied.update(settings)


@contextlib.contextmanager
def campaign_config(path: str | Path | None) -> Iterator[None]:
    """Apply a campaign config file on top of the defaults for the duration of the block."""
    if path is None:
        yield
        return
    with dask.config.set(read_config_file(path)):
        yield
