"""Budget-bounded model assignment: pick one model per row to maximise total
predicted quality while the total predicted cost stays within a budget.

This is a multiple-choice knapsack, solved by Lagrangian relaxation. At a
price ``lam >= 0`` every row independently takes ``argmax_t Q[i,t] - lam*C[i,t]``
(ties toward the lower cost, then the lower column). As ``lam`` grows, a row's
choice walks down the upper convex hull of its (cost, quality) points, so the
total cost ``C(lam)`` is a non-increasing, right-continuous step function. The
solution price is ``lam* = min{lam >= 0 : C(lam) <= budget}``. Rows whose
breakpoint sits exactly at ``lam*`` are "tied": walking in ascending row-key
order, the longest prefix of them whose extra cost still fits in the budget
keeps the more expensive choice from just below ``lam*``. The result is
deterministic and loses at most one row's quality spread against the optimum.

A cell whose quality or cost is NaN or infinite is a model that cannot take
the row; a row no model can take gets choice -1 and costs nothing.

The same code runs in memory (:func:`solve_budget`) and streamed over batches
of rows, with only summaries travelling to a driver:

1. ``summarize`` every batch and ``merge_summaries`` the results. A summary is
   a histogram of the breakpoints' cost drops over 65536 bins of ``lam`` (the
   top 16 bits of its float64 representation, which order like ``lam``), so its
   size does not depend on the number of rows.
2. ``critical_bin(summary, budget)`` names the bin holding ``lam*`` (``None``
   when the budget already covers every row's best model).
3. ``collect_bin`` on every batch returns that bin's exact breakpoints.
4. ``solve_lambda`` on the driver turns them into a :class:`BudgetPlan`
   (``lam*`` and the tie threshold).
5. ``assign`` each batch under the plan.

Skipping rows (``allow_skip``) adds, per row, a virtual option of cost 0 and
quality 0 whose choice is reported as -1. It changes the breakpoints, so every
batch must agree on it: decide it once from the merged summary of a pass with
``allow_skip=False`` (``summary.min_cost > budget`` means even the cheapest
models do not fit) and, only then, redo the passes with ``allow_skip=True``.
When the budget covers every row's cheapest model no row is ever skipped.

Price windows. Most rows never move near ``lam*``: ``price_window`` places a
window ``(lo, hi]`` around it from a sample of rows, and the passes take
``window=``: one argmax at each end finds the rows whose choice changes inside
(``window_choices``), and only those walk. A windowed summary can also keep
the window's breakpoints (``keys=``), which removes the ``collect_bin`` pass.
``critical_bin`` raises :class:`PriceWindowMissed` if ``lam*`` is not in the
window (the sample misled): then run the passes without one. The answer is the
same with or without a window, unless a row's breakpoint lies within rounding
of an end of the window (the ends sit between the sample's breakpoints). In
memory, ``solve_budget`` does all this on one batch for inputs of at least
``solve.BRACKET_MIN_ROWS`` rows (a strided sample; if the window misses it walks
every row), so it costs about three argmax passes.

Caps (``ModelCap``: at most so many rows, or so much spend, on one model) are
solved by Lagrangian relaxation too: one price per capped limit, charged on the
capped model's cells (per row, or per unit of its cost), found by coordinate
descent on the dual (per price, the smallest at which its limit holds, by
bisection; the budget's price solved exactly inside each try, by the machinery
above), until a sweep leaves the assignment unchanged. Then a repair moves
rows off any model still over its cap, least reduced value lost first (ties
by key), to the best option that fits the budget and the other caps (where no
single move fits, a pair: a row to a full model and one of its rows elsewhere,
which undoes the stalls coordinate descent meets at ties); and, when
a cap bound, a fill spends what is left on better models in the same order.
What holds:

- always: the budget and every cap hold (up to the rounding of sums), or
  ``InfeasibleCaps`` / ``InfeasibleBudget`` is raised; the same input gives the
  same output; caps that never bind give exactly the uncapped answer;
- always: ``BudgetSolution.bound`` is the Lagrangian dual value at the prices
  found, so no assignment within the budget and caps beats it (nor does the LP
  relaxation): ``bound - total_quality`` is a certificate of the gap;
- tested, not proved: within ``K + 1`` rows' quality range of the LP optimum
  (``K`` capped limits; an LP basic optimum has at most ``K + 1`` split rows),
  against scipy's MILP on medium instances and brute force on small ones.
  ``InfeasibleCaps`` can, in principle, be raised for a feasible instance: with
  spend caps or groups, feasibility alone is a knapsack problem (NP-hard).
- not promised: monotonicity in the budget.

``solve_capped`` / ``assign_capped`` are the streamed form: a driver loop over
a re-readable source of batches, each price tried costing up to three passes
(summarize, collect_bin, assign) and each repair or fill round one pass; the
driver holds histograms and one round's candidate rows.

Group routing (``solve_budget_groups``): one model per group (a task, a source
file), with a group's quality and cost the sums over its rows; the same solver
runs over groups, with group keys as tie keys.

Row keys (ids; the row index in memory) order the tied rows and should be
unique. Prices are found in float32 when both matrices are float32 and in
float64 otherwise; costs are summed in float64. The budget holds up to the
rounding of those sums, and streamed and in-memory runs agree exactly unless
the budget lies within that rounding of a step of ``C(lam)``.

The modules, from the bottom up: ``walk`` (the hull walk every pass reads),
``window`` (price windows and the two-price pass), ``summary`` (the driver's
side: summaries, the critical bin, ``solve_lambda``), ``plain`` and
``windowed`` (the passes over walked rows, without and with a window),
``passes`` (the streamed per-batch passes), ``hulls`` (kept hulls), ``caps``,
``price_search`` and ``repair`` (the caps solver), ``capped`` (caps streamed),
``solve`` (``solve_budget`` in memory), ``groups`` (group routing) and ``ledger``
(the hard budget while answering: a row admitted only when its worst case fits).
"""

from __future__ import annotations

from router.budget.caps import CapLimit, Caps, InfeasibleCaps, ModelCap
from router.budget.capped import CappedPlan, assign_capped, solve_capped
from router.budget.groups import GroupPlan, GroupSums, group_sums, merge_group_sums, solve_budget_groups, solve_groups
from router.budget.hulls import Hulls, assign_hulls, collect_hulls, summarize_hulls
from router.budget.ledger import SpendLedger
from router.budget.passes import assign, collect_bin, summarize
from router.budget.plain import BudgetSolution
from router.budget.solve import solve_budget
from router.budget.summary import (
    KEEP_BREAKPOINTS,
    NBINS,
    BudgetPlan,
    BudgetSummary,
    InfeasibleBudget,
    critical_bin,
    merge_summaries,
    solve_lambda,
)
from router.budget.walk import row_breakpoints
from router.budget.window import MOVING, PriceWindow, PriceWindowMissed, price_window, window_choices

__all__ = [
    "KEEP_BREAKPOINTS",
    "MOVING",
    "NBINS",
    "BudgetPlan",
    "BudgetSolution",
    "BudgetSummary",
    "CapLimit",
    "Caps",
    "CappedPlan",
    "GroupPlan",
    "GroupSums",
    "Hulls",
    "InfeasibleBudget",
    "InfeasibleCaps",
    "ModelCap",
    "PriceWindow",
    "PriceWindowMissed",
    "SpendLedger",
    "assign",
    "assign_capped",
    "assign_hulls",
    "collect_bin",
    "collect_hulls",
    "critical_bin",
    "group_sums",
    "merge_group_sums",
    "merge_summaries",
    "price_window",
    "row_breakpoints",
    "solve_budget",
    "solve_budget_groups",
    "solve_capped",
    "solve_groups",
    "solve_lambda",
    "summarize",
    "summarize_hulls",
    "window_choices",
]
