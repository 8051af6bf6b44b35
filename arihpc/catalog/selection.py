"""The ARI-L decision tree: which MOUS the campaign images, in which tier, or every reason not.

Every check runs on every MOUS (no short cut), so a MOUS excluded for its cycle still shows
that it is also total power. Reason codes are stable: scripts and the store rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

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


Outcome = Optional[tuple[str, object]]      # None (ok), ("tier", N), ("flag"|"exclude", code)


@dataclass(frozen=True)
class Check:
    """One node of the tree: what it asks, what it looks at, and how it judges what it saw."""

    question: Callable[[Rules], str]
    seen: Callable[[MousRecord, Rules], object]
    judge: Callable[[object, Rules], Outcome]
    show: Callable[[object, MousRecord], str] = lambda value, record: _describe(value)


@dataclass(frozen=True)
class Verdict:
    uid: str
    selected: bool
    tier: int | None
    reasons: tuple[str, ...]
    flags: tuple[str, ...]


def _judge_qa2(qa2, rules: Rules) -> Outcome:
    if qa2 is None:
        return ("exclude", "qa2-unknown")
    tier = rules.qa2_tiers.get(qa2)
    return ("exclude", "qa2-fail") if tier is None else ("tier", tier)


def _judge_antennas(count, rules: Rules) -> Outcome:
    if count is None:
        return ("flag" if rules.unknown_antennas == "keep" else "exclude", "antennas-unknown")
    return None if count >= rules.min_antennas else ("exclude", "antennas")


def _exclusion(code: str, question: str, seen: Callable[[MousRecord, Rules], object]) -> Check:
    """A yes/no exclusion: yes excludes with ``code``; unknown cannot exclude."""
    def judge(value, rules: Rules) -> Outcome:
        return ("exclude", code) if value and code in rules.exclude else None
    return Check(lambda rules: question, seen, judge)


def _solar(r: MousRecord, rules: Rules) -> bool | None:
    if r.targets is None:
        return None
    return any(t.lower() in rules.solar_targets for t in r.targets)


CHECKS = (
    Check(lambda rules: f"cycle in {{{', '.join(map(str, sorted(rules.cycles)))}}}?",
          lambda r, rules: cycle_of(r.project, rules.cycle_table),
          lambda cycle, rules: None if cycle in rules.cycles else ("exclude", "cycle"),
          lambda cycle, r: f"{_describe(cycle)} (project {r.project or 'unknown'})"),
    Check(lambda rules: "QA2 status -> tier ("
          + ", ".join(f"{k} {v}" for k, v in rules.qa2_tiers.items()) + ")",
          lambda r, rules: r.qa2, _judge_qa2,
          lambda qa2, r: qa2 or "unknown (no export said PASS, SEMIPASS or FAIL)"),
    Check(lambda rules: f"at least {rules.min_antennas} distinct antennas?",
          lambda r, rules: r.antennas, _judge_antennas),
    _exclusion("solar", "solar target?", _solar),
    _exclusion("full-pol", "full polarisation?", lambda r, rules: r.full_pol),
    _exclusion("total-power", "total power?", lambda r, rules: r.total_power),
    _exclusion("vlbi", "VLBI project (.V)?", lambda r, rules: r.vlbi),
    _exclusion("already-imaged", "already imaged by the pipeline?",
               lambda r, rules: r.pipeline_imaged),
)


def decide(record: MousRecord, rules: Rules) -> Verdict:
    """Run every check of the tree on one MOUS."""
    reasons, flags, tier = [], [], None
    for check in CHECKS:
        outcome = check.judge(check.seen(record, rules), rules)
        if outcome is None:
            continue
        kind, value = outcome
        if kind == "tier":
            tier = value
        else:
            (reasons if kind == "exclude" else flags).append(value)
    return Verdict(record.uid, not reasons, None if reasons else tier, tuple(reasons),
                   tuple(flags))


def select(records: Iterable[MousRecord], rules: Rules | None = None) -> list[Verdict]:
    """Decide every MOUS with the configured rules."""
    rules = rules or Rules.from_config()
    return [decide(r, rules) for r in records]


def _describe(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _outcome_text(outcome: Outcome, value) -> str:
    if outcome is None:
        return "ok (unknown cannot exclude)" if value is None else "ok"
    return f"{outcome[0]} {outcome[1]}"


def explain(record: MousRecord, rules: Rules) -> list[str]:
    """The path of one MOUS through the tree, as lines of text: question, seen, outcome."""
    rows = []
    for check in CHECKS:
        value = check.seen(record, rules)
        rows.append((check.question(rules), check.show(value, record),
                     _outcome_text(check.judge(value, rules), value)))
    width = [max(len(row[i]) for row in rows) for i in (0, 1)]
    lines = [f"  {q:<{width[0]}}  {s:<{width[1]}}  {o}" for q, s, o in rows]
    verdict = decide(record, rules)
    if verdict.selected:
        end = f"=> selected, tier {verdict.tier}"
    else:
        end = "=> excluded: " + ", ".join(verdict.reasons)
    if verdict.flags:
        end += " (flagged: " + ", ".join(verdict.flags) + ")"
    return lines + [end]
