"""After the price search: the repair, which moves rows off any model still over its cap
(least reduced value lost first, ties by key; where no single move fits, a pair), and the
fill, which spends what is left on better models in the same order. ``solve_caps`` runs
the search, the repair and the fill over a source of rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.budget.caps import CapLimit, InfeasibleCaps, cap_usage, reduced_values
from router.budget.passes import summarize
from router.budget.price_search import Batch, Eval, PriceSearch, RowSource
from router.budget.summary import BudgetSummary, InfeasibleBudget

FILL_ROUNDS = 16
# Rows tried on each side of a two-move repair.
CHAIN_TRIES = 32


@dataclass
class Moves:
    """Rows moved off their Lagrangian choice by the repair and the fill, by
    position in the batches' order (applied on top of each pass's assignment)."""

    positions: list[np.ndarray]
    keys: list[np.ndarray]
    to: list[np.ndarray]

    def apply(self, batch: Batch, choice: np.ndarray) -> np.ndarray:
        n = choice.size
        for positions, to in zip(self.positions, self.to, strict=True):
            local = positions - batch.start
            inside = (local >= 0) & (local < n)
            choice[local[inside]] = to[inside]
        return choice

    def final(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, keys, to), the last move of each row, ordered by position."""
        if not self.positions:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        positions = np.concatenate(self.positions)
        keys = np.concatenate(self.keys)
        to = np.concatenate(self.to)
        order = np.argsort(positions, kind="stable")
        positions, keys, to = positions[order], keys[order], to[order]
        last = np.r_[positions[1:] != positions[:-1], True]
        return positions[last], keys[last], to[last]


@dataclass
class Candidates:
    positions: np.ndarray
    keys: np.ndarray
    to: np.ndarray
    loss: np.ndarray
    gain: np.ndarray
    deltas: np.ndarray  # [candidates, 1 + limits]: cost, then each limit's use


def best_moves(
    b: Batch,
    choice: np.ndarray,
    limits: Sequence[CapLimit],
    prices: np.ndarray,
    lam: float,
    room: np.ndarray,
    slack: float,
    allow_skip: bool,
    off: CapLimit | None,
    loose: bool = False,
) -> Candidates:
    """Each row's best single move that fits the current slack of the budget
    and of every cap (``loose``: whether or not it fits): off the model of
    ``off`` (repair), else to a model of strictly higher quality (fill). Best
    means highest reduced value, ties to the lower cost, then the lower column;
    skipping is the last column."""
    n, m = b.quality.shape
    usable, value = reduced_values(b.quality, b.cost, b.weights, limits, prices, lam)
    weights = np.ones(n) if b.weights is None else b.weights
    rows = np.arange(n)
    on = choice >= 0
    here = np.where(on, choice, 0)
    cur_cost = np.where(on, b.cost[rows, here], 0.0).astype(np.float64)
    cur_quality = np.where(on, b.quality[rows, here], 0.0).astype(np.float64)
    cur_value = np.where(on, value[rows, here], 0.0)
    if off is not None:
        mine = choice == off.col
        if off.on_cost:
            mine &= cur_cost > 0
        allowed = usable & mine[:, None]
        allowed[:, off.col] = False
    else:
        # Rows a model can take but none does are skipped: any better model may take them.
        allowed = usable & (b.quality > cur_quality[:, None]) & (on | allow_skip)[:, None]
        allowed[rows[on], choice[on]] = False
    with np.errstate(invalid="ignore"):
        allowed &= ((b.cost - cur_cost[:, None]) <= slack) | loose
        for lim, left in zip(limits, room if not loose else np.full(len(limits), np.inf), strict=True):
            need = b.cost[:, lim.col] if lim.on_cost else weights
            allowed[:, lim.col] &= need <= left
    cand_value = np.where(allowed, value, -np.inf)
    best = cand_value.max(axis=1) if m else np.full(n, -np.inf)
    hit = allowed & (cand_value == best[:, None])
    to = np.where(hit, b.cost, np.inf).argmin(axis=1) if m else np.zeros(n, np.intp)
    has = hit.any(axis=1) if m else np.zeros(n, bool)
    if off is not None and allow_skip:
        # Skipping costs nothing and uses no cap; it wins unless a model is worth more.
        skip = mine & (~has | (best < 0))
        to = np.where(skip, -1, to)
        best = np.where(skip, 0.0, best)
        has |= skip
    picked = np.flatnonzero(has)
    to = to[picked].astype(np.int64)
    dest = np.maximum(to, 0)
    new_cost = np.where(to >= 0, b.cost[picked, dest], 0.0).astype(np.float64)
    new_quality = np.where(to >= 0, b.quality[picked, dest], 0.0).astype(np.float64)
    deltas = np.zeros((picked.size, 1 + len(limits)))
    deltas[:, 0] = new_cost - cur_cost[picked]
    was = choice[picked]
    for k, lim in enumerate(limits):
        use_col = b.cost[picked, lim.col].astype(np.float64) if lim.on_cost else weights[picked]
        deltas[:, 1 + k] = np.where(to == lim.col, use_col, 0.0) - np.where(was == lim.col, use_col, 0.0)
    return Candidates(
        positions=picked + b.start,
        keys=b.keys[picked],
        to=to,
        loss=cur_value[picked] - best[picked],
        gain=new_quality - cur_quality[picked],
        deltas=deltas,
    )


def gather(parts: list[Candidates]) -> Candidates:
    order_parts = [p for p in parts if p.positions.size] or parts[:1]
    if not order_parts:
        none = np.zeros(0)
        return Candidates(none.astype(np.int64), none, none.astype(np.int64), none, none, np.zeros((0, 1)))
    cands = Candidates(
        positions=np.concatenate([p.positions for p in order_parts]),
        keys=np.concatenate([p.keys for p in order_parts]),
        to=np.concatenate([p.to for p in order_parts]),
        loss=np.concatenate([p.loss for p in order_parts]),
        gain=np.concatenate([p.gain for p in order_parts]),
        deltas=np.concatenate([p.deltas for p in order_parts]),
    )
    # Cheapest in reduced value first (rows tied at the prices come first), then by key.
    order = np.lexsort((cands.positions, cands.keys, cands.loss))
    return Candidates(*(getattr(cands, name)[order] for name in ("positions", "keys", "to", "loss", "gain", "deltas")))


def fitting_prefix(deltas: np.ndarray, room: np.ndarray, checked: np.ndarray) -> int:
    """The longest prefix of moves whose running use of every checked resource stays within its room."""
    if not deltas.shape[0]:
        return 0
    running = np.cumsum(deltas[:, checked], axis=0)
    bad = (running > room[checked]).any(axis=1)
    return int(np.argmax(bad)) if bad.any() else deltas.shape[0]


class Repair:
    """The repair and the fill on top of the prices found: the rows moved so far, and the
    spend and each limit's use with them. Each round of candidates is one pass over the rows."""

    def __init__(
        self, source: RowSource, limits: tuple[CapLimit, ...], budget: float, allow_skip: bool, ev: Eval, skip: bool
    ):
        self.source, self.limits, self.budget, self.allow_skip = source, limits, budget, allow_skip
        self.ev, self.skip = ev, skip
        self.moves = Moves([], [], [])
        self.spent, self.usage = spent_and_usage(source, ev, self.moves, limits, skip)
        self.caps = np.array([lim.limit for lim in limits])
        self.passes = 0

    def candidates(self, off: CapLimit | None, loose: bool = False) -> Candidates:
        self.passes += 1
        ev, limits = self.ev, self.limits
        room, slack = self.caps - self.usage, self.budget - self.spent
        skip_ok = self.allow_skip
        parts = [
            best_moves(b, self.moves.apply(b, choice), limits, ev.prices, ev.lam, room, slack, skip_ok, off, loose)
            for b, choice in self.source.choices(ev, limits, self.skip)
        ]
        return gather(parts)

    def take(self, cands: Candidates, chosen: slice | np.ndarray) -> None:
        self.moves.positions.append(cands.positions[chosen])
        self.moves.keys.append(cands.keys[chosen])
        self.moves.to.append(cands.to[chosen])
        total = cands.deltas[chosen].sum(axis=0)
        self.spent += float(total[0])
        self.usage = self.usage + total[1:]

    def two_moves(self, k: int) -> tuple[Candidates, int, Candidates, int] | None:
        """A row off the over-cap model of limit ``k`` to where it cannot go yet, and
        a row off that destination to make room: the first pair, in the order of
        their reduced values lost, that fits the budget and the other caps."""
        limits = self.limits
        first = self.candidates(limits[k], loose=True)
        seconds: dict[int, Candidates] = {}
        for i in range(min(first.to.size, CHAIN_TRIES)):
            dest = int(first.to[i])
            if dest < 0:
                continue
            if dest not in seconds:
                seconds[dest] = self.candidates(CapLimit(dest, False, 0.0))
            second = seconds[dest]
            for j in range(min(second.to.size, CHAIN_TRIES)):
                if second.positions[j] == first.positions[i] or second.to[j] == limits[k].col:
                    continue
                after = np.r_[self.spent, self.usage] + first.deltas[i] + second.deltas[j]
                others = np.r_[True, np.arange(len(limits)) != k]
                if (after[others] <= np.r_[self.budget, self.caps][others]).all():
                    return first, i, second, j
        return None

    def repair(self) -> None:
        """Move rows off over-cap models, the cheapest in reduced value first."""
        caps = self.caps
        while True:
            over = np.flatnonzero(self.usage > caps)
            if not over.size:
                break
            k = int(over[0])
            cands = self.candidates(self.limits[k])
            room = np.r_[self.budget - self.spent, caps - self.usage]
            checked = np.r_[True, (caps - self.usage) >= 0]
            fit = fitting_prefix(cands.deltas, room, checked)
            left = self.usage[k] + np.cumsum(cands.deltas[:fit, 1 + k])
            enough = np.flatnonzero(left <= caps[k])
            if enough.size:
                self.take(cands, slice(0, int(enough[0]) + 1))
                continue
            # The cheapest moves run out of room before the cap holds: one move that
            # alone makes it hold (a larger group, a costlier row) is better than them.
            alone = np.flatnonzero(self.usage[k] + cands.deltas[:, 1 + k] <= caps[k])
            if alone.size:
                self.take(cands, alone[:1])
            elif fit:
                self.take(cands, slice(0, fit))
            elif (pair := self.two_moves(k)) is not None:
                first, i, second, j = pair
                self.take(second, np.array([j]))
                self.take(first, np.array([i]))
            else:
                raise InfeasibleCaps(self.limits[k], self.usage[k])

    def fill(self) -> None:
        """Spend what the prices and the repair left unused on better models.
        Caps that never bound leave the plain solution, which already is within a row."""
        binding = bool(np.any(self.ev.prices) or self.moves.positions)
        for _ in range(FILL_ROUNDS if binding else 0):
            cands = self.candidates(None)
            room = np.r_[self.budget - self.spent, self.caps - self.usage]
            fit = fitting_prefix(cands.deltas, room, np.ones(room.size, bool))
            if not fit:
                break
            self.take(cands, slice(0, fit))


def spent_and_usage(
    source: RowSource, ev: Eval, moves: Moves, limits: Sequence[CapLimit], skip: bool
) -> tuple[float, np.ndarray]:
    """The spend and each limit's use of the choices under ``ev`` with ``moves`` applied."""
    spent, usage = 0.0, np.zeros(len(limits))
    for b, choice in source.choices(ev, limits, skip):
        choice = moves.apply(b, choice)
        served = np.flatnonzero(choice >= 0)
        spent += float(b.cost[served, choice[served]].sum(dtype=np.float64))
        usage += cap_usage(b.cost, b.weights, choice, limits)
    return spent, usage


def solve_caps(
    source: RowSource, limits: tuple[CapLimit, ...], budget: float, allow_skip: bool
) -> tuple[Eval, Moves, bool, dict[str, float]]:
    """The price search, then the repair and the fill: the prices, the rows moved off
    their choice at those prices, whether rows may be skipped, and how much work it took."""
    summary = BudgetSummary.empty()
    for b in source.batches():
        summary = summary.merge(summarize(b.quality, b.cost))
    if budget < summary.min_cost and not allow_skip:
        raise InfeasibleBudget(budget, summary.min_cost)
    skip = budget < summary.min_cost
    search = PriceSearch(source, limits, budget, skip)
    ev = search.run()
    repair = Repair(source, limits, budget, allow_skip, ev, skip)
    repair.repair()
    repair.fill()
    return ev, repair.moves, skip, {"evaluations": search.evaluations, "candidate_passes": repair.passes}
