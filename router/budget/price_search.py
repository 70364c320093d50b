"""The caps' prices: coordinate descent on the Lagrangian dual, each capped limit's price
the smallest at which the limit holds (found by bisection on its float's bits), the budget's
price solved exactly inside every try; and the dual's value at the prices found, the bound
no assignment beats. The rows come from a source: in memory, or streamed in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from router.budget.caps import CapLimit, reduced_values
from router.budget.summary import BudgetPlan

# The price search stops when a price is known to about 1e-9 of itself (2^22
# ulps); a warm search first steps 2^24 ulps, then 16 times further each time.
PRICE_TOL_BITS = 1 << 22
FIRST_STEP_BITS = 1 << 24
COLD_STEP_BITS = 1 << 52  # a factor of 2
MAX_PRICE = 1e250
MAX_SWEEPS = 30


@dataclass
class Batch:
    """Rows of a source; ``start`` is the position of the first one among all rows, and
    ``weights`` (with group routing: the rows per group) what a ``max_rows`` cap counts."""

    start: int
    quality: np.ndarray
    cost: np.ndarray
    keys: np.ndarray
    weights: np.ndarray | None


@dataclass
class Eval:
    """The plain solve at one set of cap prices."""

    prices: np.ndarray
    lam: float
    plan: BudgetPlan | None
    usage: np.ndarray
    spent: float = 0.0
    quality: float = 0.0
    choice: np.ndarray | None = None  # in memory only


class RowSource(Protocol):
    """The rows the caps solver works on, read once per pass."""

    def batches(self) -> Iterator[Batch]:
        """Every batch, in the same order each time."""
        ...

    def evaluate(self, limits: Sequence[CapLimit], prices: np.ndarray, budget: float, skip: bool) -> Eval:
        """The plain solve with the caps priced at ``prices``."""
        ...

    def choices(self, ev: Eval, limits: Sequence[CapLimit], skip: bool) -> Iterator[tuple[Batch, np.ndarray]]:
        """Each batch's choice under ``ev`` (a fresh array the caller may change)."""
        ...


def _bits(value: float) -> int:
    return int(np.array([value], dtype=np.float64).view(np.int64)[0])


def _from_bits(bits: int) -> float:
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


class PriceSearch:
    """Coordinate descent on the Lagrangian dual over the caps' prices, with
    the budget's price solved exactly inside every evaluation."""

    def __init__(self, source: RowSource, limits: Sequence[CapLimit], budget: float, skip: bool):
        self.source, self.limits, self.budget, self.skip = source, limits, budget, skip
        self.cache: dict[bytes, Eval] = {}
        self.evaluations = 0

    def at(self, prices: np.ndarray) -> Eval:
        key = prices.tobytes()
        if key not in self.cache:
            self.evaluations += 1
            self.cache[key] = self.source.evaluate(self.limits, prices.copy(), self.budget, self.skip)
        return self.cache[key]

    def run(self) -> Eval:
        current = self.at(np.zeros(len(self.limits)))
        for _ in range(MAX_SWEEPS):
            before = current
            for k in range(len(self.limits)):
                current = self.line_search(current, k)
            # Prices may still creep along a flat valley of the dual, but once a
            # sweep leaves the assignment's totals as they were, nothing more is won.
            if current is before or (
                np.array_equal(current.usage, before.usage)
                and current.spent == before.spent
                and current.quality == before.quality
            ):
                break
        return current

    def line_search(self, current: Eval, k: int) -> Eval:
        """The smallest price of limit ``k`` (others fixed) at which it holds: where
        the dual's slope in that price turns non-negative, i.e. its minimum."""
        limit = self.limits[k].limit

        def at(bits: int) -> Eval:
            prices = current.prices.copy()
            prices[k] = _from_bits(bits)
            return self.at(prices)

        def fits(ev: Eval) -> bool:
            return bool(ev.usage[k] <= limit)

        start = _bits(current.prices[k])
        if fits(current):
            if start == 0:
                return current
            hi, hi_ev, step = start, current, FIRST_STEP_BITS
            while True:
                lo = max(hi - step, 0)
                ev = at(lo)
                if not fits(ev):
                    break
                hi, hi_ev, step = lo, ev, step << 4
                if lo == 0:
                    return ev
        else:
            lo, step = start, FIRST_STEP_BITS
            if start == 0:
                lo, step = _bits(1.0), COLD_STEP_BITS
                ev = at(lo)
                if fits(ev):
                    lo, hi, hi_ev = 0, lo, ev
            if lo:
                top = _bits(MAX_PRICE)
                while True:
                    hi = min(lo + step, top)
                    hi_ev = at(hi)
                    if fits(hi_ev):
                        break
                    if hi == top:
                        # Pricing cannot meet this cap (rows with nowhere else to go): the repair will.
                        return hi_ev
                    lo, step = hi, step << 4
        while hi - lo > PRICE_TOL_BITS and hi_ev.usage[k] != limit:
            mid = (lo + hi) // 2
            ev = at(mid)
            if fits(ev):
                hi, hi_ev = mid, ev
            else:
                lo = mid
        return hi_ev


def dual_value(source: RowSource, ev: Eval, limits: Sequence[CapLimit], budget: float, allow_skip: bool) -> float:
    """The Lagrangian dual at the final prices: an upper bound on the optimum."""
    total = 0.0
    for b in source.batches():
        usable, value = reduced_values(b.quality, b.cost, b.weights, limits, ev.prices, ev.lam)
        best = value.max(axis=1) if value.shape[1] else np.full(value.shape[0], -np.inf)
        if allow_skip:
            best = np.maximum(best, 0.0)
        total += float(best[np.isfinite(best)].sum())
    if ev.lam:
        total += ev.lam * budget
    return total + float(sum(p * lim.limit for p, lim in zip(ev.prices, limits, strict=True) if p))
