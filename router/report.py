"""What the user sees at the end: a terminal summary and `_report.json` in the output folder."""

from __future__ import annotations

import json
import math
from typing import Any

from router import schema as S
from router.config import JobConfig

STANDIN_NOTE = (
    "generation used local random-weight stand-in models: the answers are noise; routing, "
    "grouping, token counts and costs are real"
)


def _usd(x: Any) -> str:
    return "-" if not x or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


def report_dict(cfg: JobConfig, result) -> dict[str, Any]:
    plan = result.plan
    return {
        "input": cfg.input,
        "output": result.output,
        "rows": result.n_rows,
        "budget_usd": None if math.isinf(result.budget) else result.budget,
        "budget_mode": cfg.budget.mode,
        "lambda": None if plan is None else plan.lam,
        "predicted_spend_usd": None if plan is None else plan.predicted_cost,
        "actual_spend_usd": sum((r.get(f"{S.ACTUAL_COST}_sum") or 0.0) for r in result.by_model),
        "rows_skipped_for_budget": result.by_status.get(S.OVER_BUDGET, 0),
        "statuses": result.by_status,
        "models": result.by_model,
        "phases": [
            {"phase": p.name, "rows": p.rows, "seconds": round(p.seconds, 3), "rows_per_s": round(p.rows_per_s, 1)}
            for p in result.phases
        ],
        "note": STANDIN_NOTE if result.standin else None,
    }


def write_report(cfg: JobConfig, result) -> str:
    from router.inputs import _filesystem

    fs, path = _filesystem(cfg.output)
    target = f"{path.rstrip('/')}/_report.json"
    with fs.open_output_stream(target) as f:
        f.write(json.dumps(report_dict(cfg, result), indent=1, default=float).encode())
    return target


def format_summary(cfg: JobConfig, result) -> str:
    d = report_dict(cfg, result)
    lines = []
    budget = "unlimited" if d["budget_usd"] is None else f"{d['budget_usd']:.6g} USD"
    lines.append(f"rows: {d['rows']}   budget: {budget} ({d['budget_mode']})   "
                 f"predicted spend: {_usd(d['predicted_spend_usd'])} USD" +
                 (f"   actual spend: {_usd(d['actual_spend_usd'])} USD" if result.output else ""))  # fmt: skip
    lines.append("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(d["statuses"].items())))
    header = f"{'model':34} {'rows':>7} {'predicted USD':>14}"
    if result.output:
        header += f" {'actual USD':>12} {'in tokens':>10} {'out tokens':>10}"
    lines.append(header)
    for r in d["models"]:
        line = f"{str(r[S.MODEL] or '(none)'):34} {r['count_all']:>7} {_usd(r.get(f'{S.PREDICTED_COST}_sum')):>14}"
        if result.output:
            line += (f" {_usd(r.get(f'{S.ACTUAL_COST}_sum')):>12} {r.get(f'{S.INPUT_TOKENS}_sum') or 0:>10}"
                     f" {r.get(f'{S.OUTPUT_TOKENS}_sum') or 0:>10}")  # fmt: skip
        lines.append(line)
    lines.append("phases: " + "; ".join(f"{p['phase']} {p['seconds']:.1f}s ({p['rows_per_s']:.0f} rows/s)"
                                          for p in d["phases"]))  # fmt: skip
    if d["note"]:
        lines.append("NOTE: " + d["note"])
    return "\n".join(lines)
