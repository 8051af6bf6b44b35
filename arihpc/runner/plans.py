"""Stage plans of the payloads: real CASA; the emulator and a no-op for tests and benchmarks.

A stage is one external command that writes its outputs under one folder of the MOUS's
work directory (the package stage also places ari_l/ in the MOUS's delivery folder). Only the
no-op payload's stage is a Python call instead: it measures arihpc's own machinery.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from arihpc import config
from arihpc.mous import disk_name
from arihpc.runner.casa_version import choose_installation, detect_casa_version

GB = 1e9
FETCH_STAGE = "fetch"           # every plan starts with it; it may run ahead of compute
PRODUCT_STAGES = ("qa", "preview", "moments", "package")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MousTask:
    """One MOUS to run: where, with which payload, how big, with how much memory."""

    uid: str
    workdir: Path
    payload: str = "emulator"
    size_gb: float | None = None
    memory_gb: float | None = None          # the memory guard's limit for each stage
    attempt: int = 1
    options: dict = field(default_factory=dict)
    last_stage: str | None = None           # stop after this stage (a fetch ahead of compute)
    settings: dict = field(default_factory=dict)    # the campaign's config (config.overrides)
    project: str | None = None              # its ALMA project code, when the catalog gave it


@dataclass(frozen=True)
class StageSpec:
    name: str
    argv: list[str]
    output_folder: str
    predicted_s: float
    memory_limit: int | None
    # A stage run as a call in the runner's own thread, given its output folder: no process
    # to start, guard or kill, so only for a stage that returns at once (the no-op payload).
    call: Callable[[Path], None] | None = None


def _memory_limit(task: MousTask) -> int | None:
    return int(task.memory_gb * GB) if task.memory_gb else None


def _predicted(stage: str, task: MousTask) -> float:
    per_gb = config.get("runner.predict-s-per-gb").get(stage, 0)
    return max(float(config.get("runner.predict-min-s")), per_gb * (task.size_gb or 0))


def fetch_stage(task: MousTask) -> StageSpec:
    """The real fetch stage, from the archive URL or mirror template in ``options['source']``."""
    argv = [sys.executable, "-m", "arihpc.runner.fetch", "--source", task.options["source"],
            "--uid", disk_name(task.uid), "--dest", str(task.workdir / "fetch")]
    return StageSpec(FETCH_STAGE, argv, "fetch", _predicted("fetch", task), _memory_limit(task))


EMULATOR_STAGES = ("fetch", "restore", "image", "export")


def _share(uid: str, salt: str) -> float:
    """A number in [0, 1) that depends only on ``uid`` and ``salt``: the same in every process
    and run, so a campaign's drawn failures are known beforehand."""
    return zlib.crc32(f"{salt}:{uid}".encode()) / 2**32


def emulator_stages(uid: str, options: dict) -> tuple[str, ...]:
    """The emulator's stages of ``uid``: all four, or with ``stage-range: [LOW, HIGH]`` the
    first LOW..HIGH of them, drawn from the uid."""
    low, high = options.get("stage-range", (len(EMULATOR_STAGES),) * 2)
    return EMULATOR_STAGES[:int(low) + int(_share(uid, "stages") * (int(high) - int(low) + 1))]


def drawn_failure(uid: str, options: dict) -> tuple[str, str] | None:
    """(class, stage) of the first attempt of ``uid`` that fails on purpose under
    ``fail-share: {class: share}`` (with ``fail-seed``), or None. Never the fetch stage: it may
    be the real one."""
    seed = options.get("fail-seed", 0)
    draw, edge = _share(uid, f"fail{seed}"), 0.0
    stages = emulator_stages(uid, options)[1:]
    for name, share in sorted((options.get("fail-share") or {}).items()):
        edge += float(share)
        if draw < edge and stages:
            return name, stages[int(_share(uid, f"stage{seed}") * len(stages))]
    return None


def _planned_failures(task: MousTask, stage: str) -> list[str]:
    options, found = task.options, []
    for planned in options.get("fail-plan", []):
        if planned["stage"] == stage and int(planned.get("attempt", 1)) == task.attempt \
                and planned.get("uid", task.uid) == task.uid:
            found.append(planned["class"])
    drawn = drawn_failure(task.uid, options) if task.attempt == 1 else None
    if drawn and drawn[1] == stage:
        found.append(drawn[0])
    return found


def emulator_plan(task: MousTask) -> list[StageSpec]:
    """The emulated stages; ``options``: cpu-s-per-gb, memory-mb-per-gb, output-mb-per-gb,
    trace (a file each stage run appends its CPU use to), stage-range (``emulator_stages``),
    fail-plan, a list of {class, stage, attempt, uid (optional)} that makes that stage fail that
    way, fail-share and fail-seed (``drawn_failure``), and fault-dir (a folder where a file
    ``<uid___...>.<class>`` makes the next stage of that MOUS fail that way, once). With
    ``source`` (an archive template) the fetch stage is the real one."""
    options = task.options
    cpu = float(options.get("cpu-s-per-gb", 0.1))
    plan = [fetch_stage(task)] if options.get("source") else []
    for name in emulator_stages(task.uid, options)[len(plan):]:
        argv = [sys.executable, "-m", "arihpc.payloads.emulator", "--stage", name,
                "--workdir", str(task.workdir), "--size-gb", str(task.size_gb or 1),
                "--cpu-s-per-gb", str(cpu),
                "--memory-mb-per-gb", str(options.get("memory-mb-per-gb", 5)),
                "--output-mb-per-gb", str(options.get("output-mb-per-gb", 0.1))]
        for failure in _planned_failures(task, name)[-1:]:   # the last one wins
            argv += ["--fail", failure]
        argv += ["--trace", str(options["trace"])] if options.get("trace") else []
        argv += ["--fault-dir", str(options["fault-dir"])] if options.get("fault-dir") else []
        predicted = float(options.get("predicted-s", cpu * (task.size_gb or 1) + 1))
        plan.append(StageSpec(name, argv, name, predicted, _memory_limit(task)))
    return plan


def delivery_folder(task: MousTask) -> Path | None:
    """The MOUS's member folder in the ALMA delivery tree, from ``options['delivery']``: a
    path template with ``{uid}`` (uid___A001_X1_X2) and ``{project}``, where ``*`` may stand
    for the science goal and group folders. None when not given or not found."""
    template = task.options.get("delivery")
    if not template:
        return None
    pattern = str(template).format(uid=disk_name(task.uid), project=task.project or "*")
    found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    found = [Path(f) for f in found if Path(f).is_dir()]
    if len(found) != 1:
        log.warning("%s: %s delivery folder(s) match %s", task.uid, len(found) or "no", pattern)
        return None
    return found[0]


def casa_command(task: MousTask) -> list[str]:
    """How to start arihpc's CASA stage script with the right CASA.

    ``options``: ``casa`` (the site's installations, version -> command; ``pypi`` is CASA 6
    from PyPI in this Python), ``imaging`` (the version that images), and ``delivery`` (the
    MOUS's archived delivery folder, whose README / scriptForPI / logs name the CASA version
    that calibrated it). A version the site lacks raises CasaVersionError (class casa-version).
    """
    installations = task.options.get("casa") or {"6.7.0.31": "pypi"}
    version = task.options.get("imaging") or next(iter(installations))
    delivery = delivery_folder(task)
    found = detect_casa_version(delivery) if delivery else None
    if found:
        version = found[0]
    command = choose_installation(version, installations)
    if command == "pypi":
        return [sys.executable, "-m", "arihpc.payloads.casa_stages"]
    # A CASA installation runs the same script through its own Python.
    script = Path(__file__).parents[1] / "payloads" / "casa_stages.py"
    return [command, "--nogui", "--nologger", "--agg", "-c", str(script)]


def product_stages(task: MousTask) -> list[StageSpec]:
    """qa, preview, moments, package (arihpc.products.stages): ARI-L products from the exported
    FITS."""
    delivery, plan = delivery_folder(task), []
    for name in PRODUCT_STAGES:
        argv = [sys.executable, "-m", "arihpc.products.stages", name,
                "--workdir", str(task.workdir), "--uid", task.uid]
        argv += ["--delivery", str(delivery)] if delivery else []
        argv += ["--project", task.project] if task.project else []
        plan.append(StageSpec(name, argv, name, _predicted(name, task), _memory_limit(task)))
    return plan


def stage_parser(prog: str, description: str, stages: Iterable[str]) -> argparse.ArgumentParser:
    """The command line of a stage command that runs one of several stages:
    ``STAGE --workdir DIR --uid UID``, as the plans here write it; the command adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("stage", choices=sorted(stages))
    parser.add_argument("--workdir", type=Path, required=True, help="the MOUS work directory")
    parser.add_argument("--uid", required=True, help="MOUS uid (either ALMA form)")
    return parser


def casa_plan(task: MousTask) -> list[StageSpec]:
    """fetch (from the archive URL or mirror template in ``options['source']``), then real
    CASA: restore, image, export (arihpc.payloads.casa_stages), then the ARI-L products."""
    if not task.options.get("source"):
        raise ValueError("the casa payload needs options['source'], the archive template")
    plan = [fetch_stage(task)]
    casa, delivery = casa_command(task), delivery_folder(task)
    # The image stage reads the effective bandwidth by cycle, from an .aot for cycle 2.
    known = {"--project": task.project, "--delivery": str(delivery) if delivery else None}
    for name in ("restore", "image", "export"):
        argv = [*casa, name, "--workdir", str(task.workdir), "--uid", task.uid]
        argv += [a for k, v in known.items() if v for a in (k, v)] if name == "image" else []
        plan.append(StageSpec(name, argv, name, _predicted(name, task), _memory_limit(task)))
    if task.options.get("ms-store"):
        plan.insert(2, keep_ms_stage(task))          # right after restore
    return plan + product_stages(task)


def keep_ms_stage(task: MousTask) -> StageSpec:
    """keep-ms: the calibrated MS into the site's MS store (``options['ms-store']``)."""
    argv = [sys.executable, "-m", "arihpc.products.stages", "keep-ms",
            "--workdir", str(task.workdir), "--uid", task.uid,
            "--ms-store", str(task.options["ms-store"]),
            "--retention-years", str(task.options.get("ms-retention-years", 3))]
    return StageSpec("keep-ms", argv, "keep-ms", _predicted("keep-ms", task), _memory_limit(task))


def _nothing(_output_folder: Path) -> None:
    """The no-op stage's work."""


def noop_plan(task: MousTask) -> list[StageSpec]:
    """One stage that does nothing, in the runner's thread: the machinery around a MOUS
    (claim, attempt, lock, checkpoint, store updates) with no work in it, as a raw dask
    no-op has none. For benchmarks and tests of arihpc's own overhead only
    (scripts/bench_overhead.py), like the emulator."""
    return [StageSpec("noop", [], "noop", 1.0, _memory_limit(task), call=_nothing)]


def noop_command_plan(task: MousTask) -> list[StageSpec]:
    """One stage running ``true`` through the process runner and its guard: the no-op
    payload plus what every real stage costs to start."""
    return [StageSpec("noop", ["true"], "noop", 1.0, _memory_limit(task))]


PAYLOADS: dict[str, Callable[[MousTask], list[StageSpec]]] = {
    "emulator": emulator_plan,
    "casa": casa_plan,
    "noop": noop_plan,
    "noop-command": noop_command_plan,
}

