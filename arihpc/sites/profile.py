"""Site profiles: one YAML file describes a site once (batch system, nodes, limits, storage, CASA).

Defaults live under ``arihpc.site`` in arihpc/arihpc.yaml (read through dask.config); a profile
is found by name in ``site-configs/``, in ``~/.config/arihpc/sites/``, or given as a path.
Every problem is a ProfileError naming the file, the key, what is wrong and the fix.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dask.utils import parse_bytes

from arihpc import config
from arihpc.errors import ProfileError

BATCH_SYSTEMS = ("slurm", "torque", "pbspro", "local")
STORAGE_KINDS = ("lustre", "nfs", "local")
PAYLOADS = ("casa", "emulator")
GB = 1e9

# Where profiles are looked up by name, in order.
PROFILE_DIRS = (Path(__file__).resolve().parents[2] / "site-configs",
                Path.home() / ".config" / "arihpc" / "sites")


@dataclass(frozen=True)
class NodeClass:
    """One kind of node at a site, and what one batch job on it asks for."""

    name: str
    cores: int
    memory_gb: float
    count: int
    job_cores: int
    job_memory_gb: float
    slots: int
    max_size_gb: float | None


@dataclass(frozen=True)
class Storage:
    kind: str
    work_dir: str
    scratch: str
    staging_gb: float
    io_slots: int
    stripe_count: int
    stripe_min_gb: float
    ms_store: str | None = None        # folder template with {uid}: each MOUS's calibrated MS
    ms_retention_years: float = 3


@dataclass(frozen=True)
class SiteProfile:
    """A validated site profile."""

    name: str
    path: str
    description: str
    batch_system: str
    queue: str | None
    account: str | None
    walltime: str
    walltime_s: int
    drain_margin_s: int
    max_jobs: int
    queue_poll_s: int
    x11: bool
    screen: str
    python: str | None
    prologue: tuple[str, ...]
    job_extra: tuple[str, ...]
    min_size_gb: float
    max_size_gb: float | None
    storage: Storage
    node_classes: tuple[NodeClass, ...]
    casa: dict[str, str]
    casa_imaging: str
    payload: str = "casa"
    archive: str | None = None
    delivery: str | None = None         # template of the MOUS's delivery-tree member folders

    @property
    def mous_slots(self) -> int:
        """MOUS computing at once at most: every job of the site with its slots."""
        return self.max_jobs * max(c.slots for c in self.node_classes)

    def node_class(self, name: str | None = None) -> NodeClass:
        """The named node class (default: the first one)."""
        if name is None:
            return self.node_classes[0]
        for node_class in self.node_classes:
            if node_class.name == name:
                return node_class
        known = ", ".join(c.name for c in self.node_classes)
        raise ProfileError(self.path, "node-classes", f"no node class {name!r}",
                           f"choose one of {known}")


# --- value parsers: (reader, key, value) -> parsed value, or ProfileError ---

class _Reader:
    """Reads one profile file, turning every problem into a located ProfileError."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str | None, message: str, fix: str | None = None) -> ProfileError:
        return ProfileError(str(self.path), key, message, fix)

    def mapping(self, key: str, value: Any, known: dict) -> dict:
        """Defaults overlaid with a mapping whose keys must all be known (closest suggested)."""
        if not isinstance(value, dict):
            raise self.fail(key or None, f"expected a mapping, got {type(value).__name__}",
                            "see site-configs/local.yaml for the layout")
        out = dict(known)
        for name, item in value.items():
            name = str(name)
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else \
                    f"known keys: {', '.join(sorted(known))}"
                raise self.fail(f"{key}.{name}" if key else name, "unknown key", fix)
            out[name] = item
        return out


def _walltime_seconds(reader: _Reader, key: str, value: Any) -> int:
    text = str(value).strip()
    match = re.fullmatch(r"(\d+):([0-5]\d):([0-5]\d)", text)
    if match:
        hours, minutes, seconds = map(int, match.groups())
        return hours * 3600 + minutes * 60 + seconds
    hours = re.fullmatch(r"(\d+)\s*h(ours?)?", text)
    fix = f"write {int(hours.group(1))}:00:00" if hours else "write it as HH:MM:SS, e.g. 96:00:00"
    raise reader.fail(key, f"{text!r} is not a walltime", fix)


def _memory_gb(reader: _Reader, key: str, value: Any) -> float:
    try:
        size = parse_bytes(value if isinstance(value, str) else f"{value}GB")
    except (ValueError, TypeError):
        raise reader.fail(key, f"{value!r} is not an amount of memory",
                          "write e.g. 64GB or 512MB") from None
    if size <= 0:
        raise reader.fail(key, f"{value!r} is not an amount of memory", "must be more than 0")
    return size / GB


def _number(reader: _Reader, key: str, value: Any, minimum: float = 0,
            integer: bool = False, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and value != int(value)) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise reader.fail(key, f"{value!r} is not {kind} >= {minimum:g}")
    return int(value) if integer else float(value)


def _choice(reader: _Reader, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise reader.fail(key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _text_list(reader: _Reader, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise reader.fail(key, "expected a list of text lines")
    return tuple(value)


def _flag(reader: _Reader, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise reader.fail(key, f"{value!r} is not true or false")
    return value


# --- the parts of a profile ---

def _node_class(reader: _Reader, name: str, value: Any, defaults: dict) -> NodeClass:
    key = f"node-classes.{name}"
    fields = reader.mapping(key, value, {"cores": None, "memory": None, **defaults})
    for required in ("cores", "memory"):
        if fields[required] is None:
            raise reader.fail(f"{key}.{required}", "missing", "give the node's " + required)
    cores = _number(reader, f"{key}.cores", fields["cores"], 1, integer=True)
    memory = _memory_gb(reader, f"{key}.memory", fields["memory"])
    job_cores = cores if fields["job-cores"] is None else \
        _number(reader, f"{key}.job-cores", fields["job-cores"], 1, integer=True)
    if job_cores > cores:
        raise reader.fail(f"{key}.job-cores", f"asks {job_cores} cores but the node has {cores}",
                          f"ask at most {cores}")
    job_memory = memory if fields["job-memory"] is None else \
        _memory_gb(reader, f"{key}.job-memory", fields["job-memory"])
    if job_memory > memory:
        raise reader.fail(f"{key}.job-memory", f"asks {job_memory:g} GB but the node has "
                          f"{memory:g} GB", f"ask at most {memory:g}GB")
    return NodeClass(
        name=name, cores=cores, memory_gb=memory, job_cores=job_cores, job_memory_gb=job_memory,
        count=_number(reader, f"{key}.count", fields["count"], 1, integer=True),
        slots=_number(reader, f"{key}.slots", fields["slots"], 1, integer=True),
        max_size_gb=_number(reader, f"{key}.max-size-gb", fields["max-size-gb"], optional=True))


def _storage(reader: _Reader, value: Any, defaults: dict) -> Storage:
    fields = reader.mapping("storage", value, defaults)
    return Storage(
        kind=_choice(reader, "storage.kind", fields["kind"], STORAGE_KINDS),
        work_dir=str(fields["work-dir"]), scratch=str(fields["scratch"]),
        staging_gb=_number(reader, "storage.staging-gb", fields["staging-gb"]),
        io_slots=_number(reader, "storage.io-slots", fields["io-slots"], 0, integer=True),
        stripe_count=_number(reader, "storage.stripe-count", fields["stripe-count"], 1,
                             integer=True),
        stripe_min_gb=_number(reader, "storage.stripe-min-gb", fields["stripe-min-gb"]),
        ms_store=_ms_store(reader, fields["ms-store"]),
        ms_retention_years=_number(reader, "storage.ms-retention-years",
                                   fields["ms-retention-years"]))


def _ms_store(reader: _Reader, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "{uid}" not in value:
        raise reader.fail("storage.ms-store", f"{value!r} is not a path template with {{uid}}",
                          "e.g. /archive/ari-l-ms/{uid}")
    return value


def _casa(reader: _Reader, value: Any) -> tuple[dict[str, str], str]:
    fields = reader.mapping("casa", value, {"imaging": None, "installations": {}})
    installs = fields["installations"]
    if not isinstance(installs, dict) or not installs:
        raise reader.fail("casa.installations", "no CASA installation listed",
                          "add version: command pairs, e.g. '6.5.4': /opt/casa-6.5.4/bin/casa")
    casa = {}
    for version, command in installs.items():
        version = str(version)
        if not re.fullmatch(r"\d+\.\d+(\.\d+){0,2}", version):
            raise reader.fail(f"casa.installations.{version}", "is not a CASA version",
                              "write it like '4.7.2' (quoted)")
        if not isinstance(command, str) or not command.strip():
            raise reader.fail(f"casa.installations.{version}", "has no command",
                              "give the path of that version's casa executable")
        casa[version] = command
    imaging = str(fields["imaging"]) if fields["imaging"] is not None else None
    if imaging not in casa:
        raise reader.fail("casa.imaging", f"CASA version {imaging} is not among the "
                          f"installations ({', '.join(casa)})",
                          "add its command under casa.installations or image with an "
                          "installed version")
    return casa, imaging


def parse_profile(name: str, path: Path, data: Any) -> SiteProfile:
    """Validate a profile's parsed YAML on top of the defaults in arihpc.yaml."""
    reader = _Reader(path)
    defaults = {k: v for k, v in config.get("site").items() if k not in ("node-class",)}
    if data is None:
        raise reader.fail(None, "empty profile", "see site-configs/local.yaml for an example")
    extra = {"description": "", "node-classes": None, "casa": None}
    return _build(reader, name, reader.mapping("", data, {**defaults, **extra}))


def _build(reader: _Reader, name: str, fields: dict) -> SiteProfile:
    classes = fields["node-classes"]
    if not isinstance(classes, dict) or not classes:
        raise reader.fail("node-classes", "no node class described",
                          "add e.g. node-classes: {main: {cores: 16, memory: 64GB, count: 4}}")
    node_defaults = dict(config.get("site.node-class"))
    if fields["casa"] is None:
        raise reader.fail("casa", "missing", "list the CASA installations and the imaging version")
    casa, imaging = _casa(reader, fields["casa"])
    routing = reader.mapping("routing", fields["routing"], dict(config.get("site.routing")))
    walltime_s = _walltime_seconds(reader, "walltime", fields["walltime"])
    drain_s = _walltime_seconds(reader, "drain-margin", fields["drain-margin"])
    if drain_s >= walltime_s:
        raise reader.fail("drain-margin", "is as long as the walltime",
                          "make it a small part of the walltime, e.g. 00:10:00")
    return SiteProfile(
        name=name, path=str(reader.path), description=str(fields["description"]),
        batch_system=_choice(reader, "batch-system", fields["batch-system"], BATCH_SYSTEMS),
        queue=fields["queue"], account=fields["account"],
        walltime=_hms(walltime_s), walltime_s=walltime_s, drain_margin_s=drain_s,
        max_jobs=_number(reader, "max-jobs", fields["max-jobs"], 1, integer=True),
        queue_poll_s=_walltime_seconds(reader, "queue-poll", fields["queue-poll"]),
        x11=_flag(reader, "x11", fields["x11"]), screen=str(fields["screen"]),
        python=fields["python"],
        prologue=_text_list(reader, "prologue", fields["prologue"]),
        job_extra=_text_list(reader, "job-extra", fields["job-extra"]),
        min_size_gb=_number(reader, "routing.min-size-gb", routing["min-size-gb"]),
        max_size_gb=_number(reader, "routing.max-size-gb", routing["max-size-gb"],
                            optional=True),
        storage=_storage(reader, fields["storage"], dict(config.get("site.storage"))),
        node_classes=tuple(_node_class(reader, str(n), v, node_defaults)
                           for n, v in classes.items()),
        casa=casa, casa_imaging=imaging,
        payload=_choice(reader, "payload", fields["payload"], PAYLOADS),
        archive=fields["archive"], delivery=fields["delivery"])


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def find_profile(name_or_path: str) -> Path:
    """The file of a profile given by name (site-configs/, ~/.config/arihpc/sites/) or path."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml") or given.parent != Path("."):
        if given.is_file():
            return given
        raise ProfileError(str(given), None, "no such profile file",
                           "check the path, or give a site name (arihpc sites list)")
    for folder in PROFILE_DIRS:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    names = sorted(available_profiles())
    close = difflib.get_close_matches(name_or_path, names, n=1)
    raise ProfileError(name_or_path, None, "no site profile of that name in "
                       + " or ".join(str(d) for d in PROFILE_DIRS),
                       f"did you mean '{close[0]}'?" if close else
                       f"known sites: {', '.join(names) or 'none'}")


def available_profiles() -> dict[str, Path]:
    """Site name -> profile file, for every profile found by name (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in PROFILE_DIRS:
        if folder.is_dir():
            for path in sorted(folder.glob("*.y*ml")):
                found.setdefault(path.stem, path)
    return found


def load_profile(name_or_path: str) -> SiteProfile:
    """Find, read and validate a site profile."""
    path = find_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError(str(path), None, f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(str(path), None, f"YAML does not parse{where}: "
                           f"{getattr(e, 'problem', None) or e}",
                           "check the indentation and quoting there") from e
    return parse_profile(path.stem, path, data)

