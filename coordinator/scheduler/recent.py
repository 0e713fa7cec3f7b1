"""Job transitions of the last hour, counted in memory per second as they commit: GetStats' windows.

Counted from the store, each GetStats scanned the last hour's events (three or more a job): ~1 s of the store's
one reader for a million jobs an hour, every client read waiting behind it. Here a transition costs a counter's
increment, and a window is a sum over at most SPAN_S seconds. A start counts the hour before it once, from the
store, in the background (`seed`); until then `seeded` is False and the caller asks the store as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..domain.model import Event

SPAN_S = 3600  # the longest window asked for
KINDS = ("submitted", "completed", "failed", "canceled", "expired")
_FINISHED = {4: 1, 5: 2, 6: 3, 7: 4}  # to_state -> index in KINDS (COMPLETED, FAILED, CANCELED, EXPIRED)


class RecentTransitions:
    def __init__(self) -> None:
        self._seconds: dict[int, list[int]] = {}  # second (UTC, since the epoch) -> counts by KINDS
        self._oldest = 0  # no second before this is kept
        self.seeded = False

    def count(self, event: Event) -> None:
        kind = 0 if event.from_state is None else _FINISHED.get(int(event.to_state))
        if kind is not None:
            self._add(event.occurred_us // 1_000_000, kind, 1)

    def seed(self, rows: Iterable[tuple[int, int, bool, int]]) -> None:
        """Counts read from the store, for the seconds before this process counted: (second, to_state, is
        submission, count)."""
        for second, to_state, is_submission, n in rows:
            self._add(second, 0 if is_submission else _FINISHED[to_state], n)
        self.seeded = True

    def since(self, since_us: int) -> dict[str, int]:
        """Transitions of the seconds from since_us on (the second it falls in whole), by kind."""
        first = since_us // 1_000_000
        totals = [0] * len(KINDS)
        for second, counts in self._seconds.items():
            if second >= first:
                for i, n in enumerate(counts):
                    totals[i] += n
        return dict(zip(KINDS, totals, strict=True))

    def _add(self, second: int, kind: int, n: int) -> None:
        counts = self._seconds.get(second)
        if counts is None:
            if second < self._oldest:
                return  # older than the longest window
            counts = self._seconds[second] = [0] * len(KINDS)
            if second - SPAN_S > self._oldest:  # a new second: the ones out of every window go
                self._oldest = second - SPAN_S
                for old in [s for s in self._seconds if s < self._oldest]:
                    del self._seconds[old]
        counts[kind] += n
