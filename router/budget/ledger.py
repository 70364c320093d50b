"""The hard budget while answering: a row enters an engine only when its worst case fits.

A row's worst case is its exact prompt tokens (counted by the engine's tokenizer after the chat
template) plus `max_tokens` of answer, priced by `router.cost.token_usd`; its actual cost can only
be lower. :class:`SpendLedger` holds what was spent and what is reserved for the rows in flight,
and admits a row only when ``spent + reserved + worst <= budget``. Every admitted batch is settled
with its actual cost, which frees its reservation. So, whatever the answers do (every one to
`max_tokens`, every one a single token, lengths that change half way), the actual spend never
exceeds the budget: it is at most ``spent + reserved`` at every moment, and that never exceeds it.

Plain numpy and Python, no Ray: the job holds one ledger in an actor (`router.job.ledger`) that
every engine asks before it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Relative slack below the budget: sums of float costs taken in a different order (the report's,
# from the written rows) differ in the last bits; this keeps them under the budget too.
ROUNDING = 1e-9


@dataclass
class SpendLedger:
    """Spend and reservations against one budget, USD."""

    budget: float
    spent: float = 0.0
    """Actual cost of every settled batch."""
    reserved: float = 0.0
    """Worst cases of the rows in flight."""
    tickets: dict[int, tuple[float, str | None]] = field(default_factory=dict)
    """Each admitted batch's reservation and who holds it, by ticket."""
    refused: int = 0
    """Rows refused (their worst case could never fit again)."""
    limit: float = float("inf")
    """A lower ceiling for now (a wave's share of the budget): rows are admitted while the spend and
    reservations stay under both."""
    _next: int = 0

    @property
    def cap(self) -> float:
        return min(self.budget, self.limit) * (1.0 - ROUNDING)

    @property
    def left(self) -> float:
        """What a new row may still reserve."""
        return self.cap - self.spent - self.reserved

    def admit(self, worst: np.ndarray, holder: str | None = None) -> tuple[int, np.ndarray]:
        """Admit, in order, each row whose worst case fits in what is left (a row that does not fit
        is passed over, a smaller one after it may still fit). Returns the ticket to settle with and
        the admitted rows' mask (all False: none fits now; ticket -1). `holder`: who will answer
        them (an engine), for `release`."""
        worst = np.asarray(worst, np.float64)
        if np.any(~np.isfinite(worst)) or np.any(worst < 0):
            raise ValueError("worst-case costs must be finite and >= 0")
        ok = np.zeros(worst.size, bool)
        left = self.left
        if worst.size and worst.sum() <= left:  # the common case, far from the end of the budget
            ok[:] = True
        else:
            for i, w in enumerate(worst.tolist()):
                if w <= left:
                    ok[i] = True
                    left -= w
        if not ok.any():
            return -1, ok
        ticket = self._next
        self._next += 1
        self.tickets[ticket] = (float(worst[ok].sum()), holder)
        self.reserved += self.tickets[ticket][0]
        return ticket, ok

    def settle(self, ticket: int, actual: float) -> None:
        """The admitted batch `ticket` is answered (or failed: `actual` 0, nothing was spent that
        will be written): its reservation is freed and its actual cost spent."""
        if not np.isfinite(actual) or actual < 0:
            raise ValueError(f"actual cost must be finite and >= 0, got {actual!r}")
        held, _ = self.tickets.pop(ticket, (0.0, None))  # a released ticket: its actual cost still counts
        self.reserved = max(0.0, self.reserved - held) if self.tickets else 0.0
        self.spent += actual

    def release(self, holder: str) -> int:
        """Free every reservation `holder` holds, spending nothing: an engine that died and was
        started again (its calls died with it and will be retried, nothing of them was written).
        Returns how many calls it held."""
        mine = [t for t, (_, h) in self.tickets.items() if h == holder]
        for t in mine:
            self.settle(t, 0.0)
        return len(mine)

    @property
    def in_flight(self) -> bool:
        return bool(self.tickets)
