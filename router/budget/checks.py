"""The solver's checks of what callers pass in (matrices, budget, keys), and how its
messages write amounts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def as_matrices(quality: Any, cost: Any) -> tuple[np.ndarray, np.ndarray]:
    quality = np.asarray(quality)
    cost = np.asarray(cost)
    if quality.ndim != 2 or quality.shape != cost.shape:
        raise ValueError(
            f"quality and cost must be 2-D arrays of the same shape [rows, models]; "
            f"got {quality.shape} and {cost.shape}"
        )
    return quality, cost


def check_budget(budget: float) -> float:
    budget = float(budget)
    if math.isnan(budget) or budget < 0:
        raise ValueError(f"budget must be a non-negative number (math.inf for none); got {budget}")
    return budget


def as_keys(keys: Any, n_rows: int) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.shape != (n_rows,):
        raise ValueError(f"keys must be a 1-D array with one key per row ({n_rows}); got shape {keys.shape}")
    return keys


def format_amount(value: float, *, at_least: bool = False) -> str:
    text = f"{value:.6g}"
    # A rounded-down minimum would send the user to a budget that still fails.
    if at_least and float(text) < value:
        text = repr(value)
    return text
