"""Riding out a store outage: a PostgreSQL restart or a dropped connection must not end
``arihpc run``, nor leave MOUS claimed by nobody.

The orchestrator's round makes its store writes in one transaction. When the store goes away
in the middle, that transaction is rolled back, so the round's changes to the orchestrator's
own state are undone as well (``RoundState``) and the round is tried again once the store
answers. The workers go on meanwhile; their outcomes wait in dask. A commit whose answer was
lost may have been stored after all: once the store is back, the claims and attempts that
this orchestrator does not hold are given back (``CampaignStore.release_strays``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

import sqlalchemy as sa

from arihpc import config
from arihpc.errors import StoreError
from arihpc.store.schema import unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_WAIT_S, LONGEST_WAIT_S = 0.5, 10.0


def outage_message(error: sa.exc.DBAPIError) -> str:
    """The driver's own words, on one line."""
    return " ".join(str(error.orig or error).split())[:300]


def ride_out(work: Callable[[], T], what: str, after_outage: Callable[[], None] = lambda: None,
             limit_key: str = "store-wait-s") -> T:
    """``work()``, tried again (waits doubling up to 10 s) while the store is unavailable, for
    at most ``limit_key`` (a config key) seconds; then StoreError. ``after_outage`` runs once
    the store answers again, before ``work`` is retried."""
    limit = float(config.get(limit_key))
    began, wait, outage = time.monotonic(), FIRST_WAIT_S, False
    while True:
        try:
            if outage:
                after_outage()
            return work()
        except (sa.exc.DBAPIError, StoreError) as raised:
            # opening a store wraps the driver's error in a StoreError
            error = raised if isinstance(raised, sa.exc.DBAPIError) else raised.__cause__
            if not unavailable(error):
                raise
            down = time.monotonic() - began
            if down > limit:
                raise StoreError(
                    f"the store did not answer for {down:.0f} s ({what}; {limit_key} is "
                    f"{limit:g}): {outage_message(error)}. The next `arihpc run` of this site "
                    f"gives its claimed MOUS back and resumes them") from error
            log.warning("store unavailable (%s): %s; trying again in %.1f s", what,
                        outage_message(error), wait)
            outage = True
            time.sleep(wait)
            wait = min(LONGEST_WAIT_S, wait * 2)


@dataclass
class RoundState:
    """What one round of the orchestrator may change in its own state: kept before the round,
    put back when the round's transaction did not commit."""

    items: list
    fields: list[dict]
    outbox: list
    outcomes: list
    finishing: list
    tally: object
    claimed: int

    @classmethod
    def of(cls, orchestrator) -> "RoundState":
        o = orchestrator
        return cls(list(o.items), [dict(vars(item)) for item in o.items], list(o.outbox),
                   list(o.outcomes), list(o.finishing), replace(o.tally), o.claimed)

    def restore(self, orchestrator) -> None:
        o = orchestrator
        for item, fields in zip(self.items, self.fields):
            vars(item).update(fields)
        o.items[:], o.outbox[:] = self.items, self.outbox
        o.outcomes[:], o.finishing[:] = self.outcomes, self.finishing
        vars(o.tally).update(vars(self.tally))
        o.claimed = self.claimed
