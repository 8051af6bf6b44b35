"""Priority order of the selected MOUS.

Default (``arihpc.ordering.keys``): tier first (every PASS before any SEMIPASS), then the
latest cycle first, then increasing raw size with unknown sizes last in their group; the uid
breaks every remaining tie, so the order is total and the same on every run.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from arihpc import config
from arihpc.catalog.selection import Verdict
from arihpc.errors import ConfigError
from arihpc.mous import MousRecord, cycle_of, cycle_table

_LAST = float("inf")

# key name -> sort key of (record, tier, cycle); unknown values sort after known ones.
KEYS: dict[str, Callable[[MousRecord, int | None, int | None], tuple]] = {
    "tier": lambda r, tier, cycle: (_LAST if tier is None else tier,),
    "cycle-desc": lambda r, tier, cycle: (_LAST if cycle is None else -cycle,),
    "cycle-asc": lambda r, tier, cycle: (_LAST if cycle is None else cycle,),
    "size-asc": lambda r, tier, cycle: (_LAST if r.size_bytes is None else r.size_bytes,),
    "size-desc": lambda r, tier, cycle: (_LAST if r.size_bytes is None else -r.size_bytes,),
    "uid": lambda r, tier, cycle: (r.uid,),
}


def order_keys(keys: Sequence[str] | None = None) -> list[str]:
    """The configured key names, checked, with the uid tiebreak appended."""
    keys = list(config.get("ordering.keys") if keys is None else keys)
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise ConfigError(f"arihpc.ordering.keys: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(KEYS)}")
    return keys if keys and keys[-1] == "uid" else keys + ["uid"]


def prioritise(items: Iterable[tuple[MousRecord, int | None]],
               keys: Sequence[str] | None = None) -> list[MousRecord]:
    """Records (with their tier) in priority order, highest priority first."""
    names = order_keys(keys)
    table = cycle_table()
    functions = [KEYS[name] for name in names]

    def sort_key(item: tuple[MousRecord, int | None]) -> tuple:
        record, tier = item
        cycle = cycle_of(record.project, table)
        return sum((f(record, tier, cycle) for f in functions), ())

    return [record for record, _ in sorted(items, key=sort_key)]


def priorities(verdicts: Iterable[Verdict], records: Mapping[str, MousRecord],
               keys: Sequence[str] | None = None) -> dict[str, int]:
    """uid -> priority (1 runs first) of every selected MOUS."""
    chosen = [(records[v.uid], v.tier) for v in verdicts if v.selected]
    return {record.uid: rank for rank, record in enumerate(prioritise(chosen, keys), 1)}
