"""The ARI-L decision tree: which MOUS the campaign images, in which tier, or every reason not.

Every check runs on every MOUS (no short cut), so a MOUS excluded for its cycle still shows
that it is also total power. Reason codes are stable: scripts and the store rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from arihpc import config
from arihpc.errors import ConfigError
from arihpc.mous import MousRecord, cycle_of, cycle_table

REASONS = ("cycle", "qa2-fail", "qa2-unknown", "antennas", "antennas-unknown", "solar",
           "full-pol", "total-power", "vlbi", "already-imaged")
EXCLUSIONS = ("solar", "full-pol", "total-power", "vlbi", "already-imaged")
ANTENNA_POLICIES = ("keep", "exclude")


@dataclass(frozen=True)
class Rules:
    """The thresholds of the tree, from ``arihpc.selection`` in arihpc.yaml or a campaign file."""

    cycles: frozenset[int]
    qa2_tiers: dict[str, int]
    min_antennas: int
    unknown_antennas: str
    solar_targets: frozenset[str]
    exclude: frozenset[str]
    cycle_table: dict[str, int]

    @classmethod
    def from_config(cls) -> "Rules":
        get = config.get
        rules = cls(
            cycles=frozenset(int(c) for c in get("selection.cycles")),
            qa2_tiers={str(k).upper(): int(v) for k, v in get("selection.qa2-tiers").items()},
            min_antennas=int(get("selection.min-antennas")),
            unknown_antennas=str(get("selection.unknown-antennas")),
            solar_targets=frozenset(t.lower() for t in get("selection.solar-targets")),
            exclude=frozenset(get("selection.exclude")),
            cycle_table=cycle_table(),
        )
        if rules.unknown_antennas not in ANTENNA_POLICIES:
            raise ConfigError(f"arihpc.selection.unknown-antennas is {rules.unknown_antennas!r}; "
                              f"expected one of {', '.join(ANTENNA_POLICIES)}")
        if not rules.exclude <= set(EXCLUSIONS):
            raise ConfigError(f"arihpc.selection.exclude: unknown code(s) "
                              f"{', '.join(sorted(rules.exclude - set(EXCLUSIONS)))}; "
                              f"known: {', '.join(EXCLUSIONS)}")
        return rules


@dataclass(frozen=True)
class Step:
    """One node of the tree as it applied to one MOUS: what was asked, seen, and decided."""

    question: str
    seen: str
    outcome: str        # "ok", "tier N", "flag CODE" or "exclude CODE"


@dataclass(frozen=True)
class Verdict:
    uid: str
    selected: bool
    tier: int | None
    reasons: tuple[str, ...]
    flags: tuple[str, ...]
    steps: tuple[Step, ...]


def _known(value, text: Callable[[object], str] = str) -> str:
    return "unknown" if value is None else text(value)


def _cycle(r: MousRecord, rules: Rules) -> Step:
    cycle = cycle_of(r.project, rules.cycle_table)
    wanted = ", ".join(str(c) for c in sorted(rules.cycles))
    seen = f"cycle {_known(cycle)} (project {_known(r.project)})"
    return Step(f"cycle in {{{wanted}}}?", seen, "ok" if cycle in rules.cycles else "exclude cycle")


def _qa2(r: MousRecord, rules: Rules) -> Step:
    question = "QA2 status -> tier (" + ", ".join(f"{k} {v}" for k, v in rules.qa2_tiers.items()) + ")"
    if r.qa2 is None:
        return Step(question, "unknown (no export said PASS, SEMIPASS or FAIL)",
                    "exclude qa2-unknown")
    if r.qa2 in rules.qa2_tiers:
        return Step(question, r.qa2, f"tier {rules.qa2_tiers[r.qa2]}")
    return Step(question, r.qa2, "exclude qa2-fail")


def _antennas(r: MousRecord, rules: Rules) -> Step:
    question = f"at least {rules.min_antennas} distinct antennas?"
    if r.antennas is None:
        verb = "flag" if rules.unknown_antennas == "keep" else "exclude"
        return Step(question, f"unknown (policy: {rules.unknown_antennas})",
                    f"{verb} antennas-unknown")
    return Step(question, str(r.antennas),
                "ok" if r.antennas >= rules.min_antennas else "exclude antennas")


def _flag_check(code: str, question: str, seen: Callable[[MousRecord, Rules], bool | None]):
    """A yes/no exclusion: yes excludes with ``code``; unknown cannot exclude."""
    def check(r: MousRecord, rules: Rules) -> Step:
        value = seen(r, rules)
        if code not in rules.exclude:
            return Step(question, _known(value, _yes_no), "ok (rule not in force)")
        if value is None:
            return Step(question, "unknown", "ok (unknown cannot exclude)")
        return Step(question, _yes_no(value), f"exclude {code}" if value else "ok")
    return check


def _yes_no(value) -> str:
    return "yes" if value else "no"


def _solar(r: MousRecord, rules: Rules) -> bool | None:
    if r.targets is None:
        return None
    return any(t.lower() in rules.solar_targets for t in r.targets)


CHECKS = (
    _cycle,
    _qa2,
    _antennas,
    _flag_check("solar", "solar target?", _solar),
    _flag_check("full-pol", "full polarisation?", lambda r, _: r.full_pol),
    _flag_check("total-power", "total power?", lambda r, _: r.total_power),
    _flag_check("vlbi", "VLBI project (.V)?", lambda r, _: r.vlbi),
    _flag_check("already-imaged", "already imaged by the pipeline?",
                lambda r, _: r.pipeline_imaged),
)


def decide(record: MousRecord, rules: Rules) -> Verdict:
    """Run every check of the tree on one MOUS."""
    steps = tuple(check(record, rules) for check in CHECKS)
    reasons = tuple(s.outcome.split()[1] for s in steps if s.outcome.startswith("exclude"))
    flags = tuple(s.outcome.split()[1] for s in steps if s.outcome.startswith("flag"))
    tiers = [int(s.outcome.split()[1]) for s in steps if s.outcome.startswith("tier")]
    return Verdict(record.uid, not reasons, tiers[0] if tiers and not reasons else None,
                   reasons, flags, steps)


def select(records: Iterable[MousRecord], rules: Rules | None = None) -> list[Verdict]:
    """Decide every MOUS with the configured rules."""
    rules = rules or Rules.from_config()
    return [decide(r, rules) for r in records]


def explain(verdict: Verdict) -> list[str]:
    """The path through the tree as lines of text."""
    width = max(len(s.question) for s in verdict.steps)
    seen = max(len(s.seen) for s in verdict.steps)
    lines = [f"  {s.question:<{width}}  {s.seen:<{seen}}  {s.outcome}" for s in verdict.steps]
    if verdict.selected:
        end = f"=> selected, tier {verdict.tier}"
    else:
        end = "=> excluded: " + ", ".join(verdict.reasons)
    if verdict.flags:
        end += " (flagged: " + ", ".join(verdict.flags) + ")"
    return lines + [end]
