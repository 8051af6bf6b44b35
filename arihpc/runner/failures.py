"""Failure classes from a stage's log, exit status and signal, with rules from arihpc.yaml.

The classes: walltime, oom, download, disk-space, casa-version, unsupported-mode, importasdm,
tclean, segfault, lock, low-score, unknown. Harmless lines (CASA's leap-second SEVERE) never count.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Iterable

from arihpc import config

CLASSES = ("walltime", "oom", "download", "disk-space", "casa-version", "unsupported-mode",
           "importasdm", "tclean", "segfault", "lock", "low-score", "unknown")


@dataclass(frozen=True)
class Rule:
    name: str
    patterns: tuple[re.Pattern, ...]
    signals: frozenset[int]


@dataclass(frozen=True)
class Classification:
    """The class of a failure and the log line (or exit status) that decided it."""

    name: str | None        # None: the log shows no failure
    line: str | None


def rules() -> tuple[tuple[re.Pattern, ...], tuple[Rule, ...]]:
    """(ignore patterns, class rules) from arihpc.failures in the configuration."""
    ignore = tuple(re.compile(p) for p in config.get("failures.ignore"))
    found = []
    for item in config.get("failures.classes"):
        found.append(Rule(item["class"], tuple(re.compile(p) for p in item.get("log", [])),
                          frozenset(int(getattr(signal, s)) for s in item.get("signals", []))))
    return ignore, tuple(found)


def classify(lines: Iterable[str], returncode: int | None = None) -> Classification:
    """The failure class of a log, or None. A stage that exited non-zero with no matching
    line is ``unknown``; one killed by a signal is classed by that signal when a rule has it."""
    ignore, class_rules = rules()
    kept = [ln.rstrip("\n") for ln in lines if not any(p.search(ln) for p in ignore)]
    for rule in class_rules:
        for line in kept:
            if any(p.search(line) for p in rule.patterns):
                return Classification(rule.name, line.strip())
    signum = _signal_of(returncode)
    for rule in class_rules:
        if signum is not None and signum in rule.signals:
            return Classification(rule.name, f"killed by {signal.Signals(signum).name}")
    if returncode not in (None, 0):
        return Classification("unknown", _last_words(kept) or f"exit status {returncode}")
    return Classification(None, None)


def _signal_of(returncode: int | None) -> int | None:
    """Signal number from a Popen return code (-N) or a shell-style status (128 + N)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    return returncode - 128 if 128 < returncode < 160 else None


def _last_words(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


def retry_policy(name: str) -> dict:
    """The retry policy of a class (arihpc.failures.retry)."""
    policies = config.get("failures.retry")
    return dict(policies.get(name) or policies.get(name.replace("-", "_")) or {"retries": 0})
