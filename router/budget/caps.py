"""Caps on single models (:class:`ModelCap`: at most so many rows, or so much spend), the
limits they make, and what the limits' prices do to each cell's value. The caps solver
charges each capped limit a price on its model's cells and searches those prices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.checks import format_amount


@dataclass(frozen=True)
class ModelCap:
    """Limits on what one model may take; leave a field None for no limit on it."""

    max_rows: int | None = None
    """At most this many rows (with group routing still rows, not groups), e.g.
    what a rate-limited API or a model on one GPU can serve in the job's window."""
    max_cost: float | None = None
    """At most this much spend on the model, in the cost matrix's unit, e.g. a
    provider's prepaid allowance within the overall budget."""

    def __post_init__(self) -> None:
        if self.max_rows is None and self.max_cost is None:
            raise ValueError("ModelCap needs max_rows or max_cost (or both); leave the model out of caps to not cap it")
        rows = self.max_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0):
            raise ValueError(f"ModelCap.max_rows must be a non-negative integer (or None); got {rows!r}")
        if self.max_cost is not None:
            try:
                spend = float(self.max_cost)
            except (TypeError, ValueError):
                spend = math.nan
            if math.isnan(spend) or spend < 0:
                raise ValueError(f"ModelCap.max_cost must be a non-negative number (or None); got {self.max_cost!r}")


Caps = Mapping[int, ModelCap] | Sequence[ModelCap | None] | None


@dataclass(frozen=True)
class CapLimit:
    """One capped limit: model ``col`` takes at most ``limit`` rows (or spends at most ``limit``)."""

    col: int
    on_cost: bool
    limit: float

    def describe(self) -> str:
        return f"model {self.col}'s cap of {format_amount(self.limit)} {'spend' if self.on_cost else 'rows'}"


class InfeasibleCaps(ValueError):
    """No assignment was found that serves every row within the caps and the budget."""

    def __init__(self, limit: CapLimit, usage: float) -> None:
        self.limit = limit
        self.usage = float(usage)
        super().__init__(
            f"{limit.describe()} cannot be met while serving every row within the budget (it still has "
            f"{format_amount(self.usage)} after moving every row that could go elsewhere); raise that cap or "
            f"the budget, or allow skipping rows"
        )

    def __reduce__(self) -> tuple[Any, tuple[CapLimit, float]]:
        return (type(self), (self.limit, self.usage))


def cap_limits(caps: Caps, n_models: int) -> tuple[CapLimit, ...]:
    """The capped limits of ``caps`` over ``n_models`` models, by model then rows before spend."""
    if caps is None:
        return ()
    if isinstance(caps, Mapping):
        items = list(caps.items())
    elif isinstance(caps, Sequence) and not isinstance(caps, (str, bytes)):
        if len(caps) != n_models:
            raise ValueError(f"caps as a sequence needs one ModelCap or None per model ({n_models}); got {len(caps)}")
        items = list(enumerate(caps))
    else:
        raise TypeError(
            f"caps must map model columns to ModelCap, or list one ModelCap or None per model; got {caps!r}"
        )
    limits = []
    for col, cap in items:
        if cap is None:
            continue
        if not isinstance(cap, ModelCap):
            raise TypeError(f"caps[{col!r}] must be a ModelCap(max_rows=..., max_cost=...); got {cap!r}")
        if isinstance(col, bool) or not isinstance(col, (int, np.integer)) or not 0 <= col < n_models:
            raise ValueError(f"caps key {col!r} is not a model column (0..{n_models - 1})")
        if cap.max_rows is not None:
            limits.append(CapLimit(int(col), False, float(cap.max_rows)))
        if cap.max_cost is not None and float(cap.max_cost) != math.inf:
            limits.append(CapLimit(int(col), True, float(cap.max_cost)))
    return tuple(sorted(limits, key=lambda lim: (lim.col, lim.on_cost)))


def priced_quality(
    quality: np.ndarray, cost: np.ndarray, weights: np.ndarray | None, limits: Sequence[CapLimit], prices: np.ndarray
) -> np.ndarray:
    """Quality less each capped limit's price times the row's use of it."""
    if not np.any(prices):
        # Unpriced caps leave the plain problem, walked exactly as without caps.
        return quality
    priced = np.array(quality, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for lim, price in zip(limits, prices, strict=True):
            if not price:
                continue
            if lim.on_cost:
                priced[:, lim.col] -= price * cost[:, lim.col].astype(np.float64)
            elif weights is None:
                priced[:, lim.col] -= price
            else:
                priced[:, lim.col] -= price * weights
    return priced


def cap_usage(
    cost: np.ndarray, weights: np.ndarray | None, choice: np.ndarray, limits: Sequence[CapLimit]
) -> np.ndarray:
    """How much of each limit ``choice`` uses: rows (or their weights), or spend."""
    out = np.zeros(len(limits))
    for k, lim in enumerate(limits):
        on = choice == lim.col
        if lim.on_cost:
            out[k] = cost[on, lim.col].sum(dtype=np.float64)
        else:
            out[k] = np.count_nonzero(on) if weights is None else weights[on].sum(dtype=np.float64)
    return out


def reduced_values(
    quality: np.ndarray,
    cost: np.ndarray,
    weights: np.ndarray | None,
    limits: Sequence[CapLimit],
    prices: np.ndarray,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: usable, and Q - lam*C - the caps' prices (-inf where unusable)."""
    with np.errstate(invalid="ignore", over="ignore"):
        usable = np.isfinite(quality) & np.isfinite(cost)
        value = priced_quality(quality, cost, weights, limits, prices).astype(np.float64, copy=True)
        if lam:
            value -= lam * cost
        value[~usable] = -np.inf
    return usable, value
