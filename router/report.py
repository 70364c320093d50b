"""What the user sees at the end: a terminal summary, `_report.json` in the output folder and a
report folder beside it (`OUTPUT-report/`: report.json and pictures readable without a notebook).

The report folder is rebuilt from a finished output alone (`router report OUTPUT`): the rows give
per-model sums, statuses, tokens and the capability and domain counts; `_report.json` gives what
rows cannot (the plan, the budget, the frontier, the phase times).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

import numpy as np

from router import schema as S
from router.config import ConfigError, JobConfig

STANDIN_NOTE = (
    "generation used local random-weight stand-in models: the answers are noise; routing, "
    "grouping, token counts and costs are real"
)


# Budgets swept for the frontier; the sample it is solved on is drawn by the pipeline.
FRONTIER_POINTS = 30
REPORT_JSON = "report.json"
LABEL_COLUMNS = (S.CAPABILITIES, S.DOMAINS)


def _usd(x: Any) -> str:
    return "-" if not x or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


def predicted_frontier(
    quality: np.ndarray, cost: np.ndarray, n_rows: int, budget: float, *, points: int = FRONTIER_POINTS
) -> dict[str, Any] | None:
    """Total predicted quality against predicted spend, the budget swept from every row's cheapest
    model to every row's best one (and down to `budget` when it is lower: then rows are skipped,
    as in the run). Solved on a sample of rows (quality, cost: k x M) and scaled to `n_rows`."""
    from router import budget as B

    k = quality.shape[0]
    if k == 0 or n_rows == 0:
        return None
    scale = n_rows / k
    cost = np.asarray(cost, np.float64)
    usable = np.isfinite(cost) & np.isfinite(quality)
    routable = usable.any(axis=1)
    cheapest = float(np.where(usable, cost, np.inf).min(axis=1)[routable].sum())
    best = B.solve_budget(quality, cost, math.inf)
    lo, hi = cheapest, best.total_cost
    marks = [cheapest]
    if math.isfinite(budget):
        lo = min(lo, budget / scale)
        marks.append(budget / scale)
    budgets = np.unique(np.clip(np.concatenate([np.linspace(lo, hi, points), marks]), lo, hi))
    swept = []
    for b in budgets:
        s = B.solve_budget(quality, cost, float(b), allow_skip=True)
        swept.append({
            "budget_usd": float(b) * scale,
            "cost_usd": s.total_cost * scale,
            "quality": s.total_quality * scale,
            "rows_skipped": round(int(((s.choice < 0) & routable).sum()) * scale),
        })  # fmt: skip
    return {
        "rows": n_rows,
        "sample_rows": k,
        "cheapest_usd": cheapest * scale,
        "best_quality_usd": best.total_cost * scale,
        "best_quality": best.total_quality * scale,
        "points": swept,
    }


def chosen_point(by_model: list[dict[str, Any]], budget: float | None) -> dict[str, Any]:
    """Where the plan sits on the frontier: its predicted spend and total predicted quality."""
    return {
        "budget_usd": None if budget is None or math.isinf(budget) else budget,
        "cost_usd": sum(r.get(f"{S.PREDICTED_COST}_sum") or 0.0 for r in by_model),
        "quality": sum(r.get(f"{S.PREDICTED_QUALITY}_sum") or 0.0 for r in by_model),
    }


def _with_chosen(frontier: dict[str, Any] | None, by_model, budget) -> dict[str, Any] | None:
    return None if frontier is None else {**frontier, "chosen": chosen_point(by_model, budget)}


def report_dict(cfg: JobConfig, result) -> dict[str, Any]:
    plan = result.plan
    prior = getattr(result, "resumed", None)  # rows earlier runs of the job had written
    return {
        "input": cfg.input,
        "output": result.output,
        "rows": result.n_rows,
        "budget_usd": None if math.isinf(result.budget) else result.budget,
        "budget_mode": cfg.budget.mode,
        "lambda": None if plan is None else plan.lam,
        # Resumed: what the earlier runs spent plus this run's plan (which had only the rest of the budget).
        "predicted_spend_usd": None if plan is None else plan.predicted_cost + (prior.spend if prior else 0.0),
        "resumed": None if prior is None else {
            "rows": prior.rows, "shards": prior.files, "spend_usd": prior.spend, "predicted_usd": prior.predicted,
        },  # fmt: skip
        "actual_spend_usd": sum((r.get(f"{S.ACTUAL_COST}_sum") or 0.0) for r in result.by_model),
        "rows_skipped_for_budget": result.by_status.get(S.OVER_BUDGET, 0),
        "statuses": result.by_status,
        "models": result.by_model,
        "phases": [
            {"phase": p.name, "rows": p.rows, "seconds": round(p.seconds, 3), "rows_per_s": round(p.rows_per_s, 1)}
            for p in result.phases
        ],
        "frontier": _with_chosen(result.frontier, result.by_model, result.budget),
        "schedule": None if getattr(result, "schedule", None) is None else result.schedule.to_dict(),
        "generation": getattr(result, "generation", []),
        "note": STANDIN_NOTE if result.standin else None,
    }


def write_report(cfg: JobConfig, result) -> str:
    from router.stages.read import filesystem

    fs, path = filesystem(cfg.output)
    target = f"{path.rstrip('/')}/_report.json"
    with fs.open_output_stream(target) as f:
        f.write(json.dumps(report_dict(cfg, result), indent=1, default=float).encode())
    return target


def _ratio(actual: Any, predicted: Any) -> str:
    return f"{actual / predicted:.2f}x" if actual is not None and predicted else "-"


def format_summary(cfg: JobConfig, result) -> str:
    d = report_dict(cfg, result)
    ran = bool(result.output)
    lines = []
    budget = "unlimited" if d["budget_usd"] is None else f"{d['budget_usd']:.6g} USD"
    lines.append(f"rows: {d['rows']}   budget: {budget} ({d['budget_mode']})   "
                 f"predicted spend: {_usd(d['predicted_spend_usd'])} USD" +
                 (f"   actual spend: {_usd(d['actual_spend_usd'])} USD" if ran else ""))  # fmt: skip
    if d.get("resumed"):
        r = d["resumed"]
        lines.append(f"resumed: {r['rows']} rows were written by earlier runs ({_usd(r['spend_usd'])} USD); "
                     "this run routed the rest with what was left of the budget")  # fmt: skip
    lines.append("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(d["statuses"].items())))
    header = f"{'model':34} {'rows':>7} {'predicted USD':>14}"
    if ran:
        header += f" {'actual USD':>12} {'actual/pred':>11} {'in tokens':>10} {'out tokens':>10}"
    lines.append(header)
    total: dict[str, Any] = {S.MODEL: "total", "count_all": 0}
    for r in d["models"]:
        total["count_all"] += r["count_all"]
        for c in (S.PREDICTED_COST, S.ACTUAL_COST, S.INPUT_TOKENS, S.OUTPUT_TOKENS):
            total[f"{c}_sum"] = (total.get(f"{c}_sum") or 0) + (r.get(f"{c}_sum") or 0)
    for r in [*d["models"], total]:
        predicted, actual = r.get(f"{S.PREDICTED_COST}_sum"), r.get(f"{S.ACTUAL_COST}_sum")
        line = f"{str(r[S.MODEL] or '(no model)'):34} {r['count_all']:>7} {_usd(predicted):>14}"
        if ran:
            line += (f" {_usd(actual):>12} {_ratio(actual, predicted):>11} {r.get(f'{S.INPUT_TOKENS}_sum') or 0:>10}"
                     f" {r.get(f'{S.OUTPUT_TOKENS}_sum') or 0:>10}")  # fmt: skip
        lines.append(line)
    lines.append(f"{'phase':42} {'rows':>7} {'seconds':>9} {'rows/s':>9}")
    for p in d["phases"]:
        lines.append(f"{p['phase']:42} {p['rows']:>7} {p['seconds']:>9.1f} {p['rows_per_s']:>9.1f}")
    lines.append(f"{'total wall time':42} {'':>7} {sum(p['seconds'] for p in d['phases']):>9.1f}")
    if getattr(result, "schedule", None) is not None:
        from router.job.schedule import format_schedule

        lines.extend(format_schedule(result.schedule))
    else:
        lines.append("schedule: no vLLM engine on GPUs: engine pools run in turn, models.NAME.replicas each")
    from router.job.schedule import short_label

    for g in d["generation"]:
        rate, early = g["tokens_per_s_per_replica"], g.get("engine_start_s")
        lines.append(f"  ran {short_label(g['pool'])}: {g['replicas']} replica(s), {g['gpus']} GPUs, from {g['start_s']:.0f}s "
                     f"for {g['seconds']:.0f}s, {g['tokens']} tokens"
                     + (f" ({rate:.4g} tokens/s per replica)" if rate else "")
                     + (f"; engines started during encoding, in {early:.0f}s" if early is not None else "")
                     + (f", busy {g['engine_busy_share']:.0%} of the pass" if "engine_busy_share" in g else ""))  # fmt: skip
    f = d.get("frontier")
    if f:
        c = f["chosen"]
        lines.append(f"frontier (predicted, from {f['sample_rows']} of {f['rows']} rows): every row at its cheapest "
                     f"model {f['cheapest_usd']:.6g} USD; at its best {f['best_quality_usd']:.6g} USD for total "
                     f"quality {f['best_quality']:.4g}; this plan {c['cost_usd']:.6g} USD for {c['quality']:.4g}")  # fmt: skip
    if d["note"]:
        lines.append("NOTE: " + d["note"])
    return "\n".join(lines)


# ---------------------------------------------------------------- the report folder


def report_folder(output: str) -> str:
    """Where the report of `output` goes: the folder beside it with `-report` appended
    (`out/x` and `out/x/` -> `out/x-report`, `s3://b/answers/` -> `s3://b/answers-report`).
    An output at the root of a bucket or filesystem has nothing beside it: then `OUTPUT/_report`
    (readers of the output skip names that start with `_`)."""
    if "://" in output:
        scheme, _, rest = output.partition("://")
        rest = rest.rstrip("/")
        return f"{scheme}://{rest}/_report" if "/" not in rest.strip("/") else f"{scheme}://{rest}-report"
    path = output.rstrip("/") or "/"
    if os.path.basename(os.path.normpath(path)) in ("", ".", ".."):
        path = os.path.abspath(path)
    return "/_report" if path == "/" else f"{path}-report"


def _read_run_report(output: str) -> dict[str, Any]:
    from router.stages.read import filesystem

    fs, path = filesystem(output)
    target = f"{path.rstrip('/')}/_report.json"
    try:
        with fs.open_input_stream(target) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no _report.json in {output!r}: give the output folder of a finished `router run`"
        ) from None


def scan_output(output: str) -> dict[str, Any]:
    """Rows and sums per model and status, and counts of each row's top capability and top domain,
    from the written rows: one streaming pass on this machine over the few columns it needs."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from router.stages.read import filesystem
    from router.job.output import committed_files
    from router.job.pipeline import TALLY_SUMS, tally_batch, tally_parts

    fs, _ = filesystem(output)
    files = committed_files(output)  # the one rule for what the answers are (resume uses it too)
    if not files:
        raise ConfigError(f"{output!r} holds no answers (no part-*.parquet files): give the output folder of a `router run`")
    ds = pads.dataset(files, filesystem=fs, format="parquet")
    names = set(ds.schema.names)
    if not {S.MODEL, S.STATUS} <= names:
        raise ConfigError(f"{output!r} is not a router output: it has no {S.MODEL!r} and {S.STATUS!r} columns")
    sums = [c for c in TALLY_SUMS if c in names]
    labels = [c for c in LABEL_COLUMNS if c in names]
    counts: dict[str, Counter] = {c: Counter() for c in LABEL_COLUMNS}

    def parts():
        for batch in ds.to_batches(columns=[S.MODEL, S.STATUS, *sums, *labels], batch_size=1 << 16):
            t = pa.Table.from_batches([batch])
            for c in labels:
                top = pc.list_flatten(pc.list_slice(t[c], 0, 1))
                counts[c].update({v["values"]: v["counts"] for v in pc.value_counts(top).to_pylist() if v["values"]})
            yield from tally_batch(t).to_pylist()

    by_model, by_status = tally_parts(parts())
    return {
        "models": by_model,
        "statuses": dict(sorted(by_status.items())),
        S.CAPABILITIES: dict(counts[S.CAPABILITIES].most_common()),
        S.DOMAINS: dict(counts[S.DOMAINS].most_common()),
    }


def folder_report(output: str, scan: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json: `_report.json` with the per-model numbers recounted from the rows, each model's
    statuses, the frontier's chosen point, and the top capability and domain counts. `scan`: the
    output's `scan_output`, when the caller has it already."""
    d = _read_run_report(output)
    rows = scan if scan is not None else scan_output(output)
    d.update(
        rows=sum(rows["statuses"].values()),
        statuses=rows["statuses"],
        models=rows["models"],
        actual_spend_usd=sum(r.get(f"{S.ACTUAL_COST}_sum") or 0.0 for r in rows["models"]),
        rows_skipped_for_budget=rows["statuses"].get(S.OVER_BUDGET, 0),
        top_capability_counts=rows[S.CAPABILITIES],
        top_domain_counts=rows[S.DOMAINS],
    )  # fmt: skip
    if d.get("frontier"):
        d["frontier"] = _with_chosen(d["frontier"], d["models"], d.get("budget_usd"))
    return d


def write_report_folder(output: str, folder: str | None = None, scan: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """Write report.json and the pictures for a finished output; returns the folder and file names.
    Without matplotlib only report.json is written (it says how to get the pictures). `scan`: see
    `folder_report`."""
    from router.stages.read import filesystem

    d = folder_report(output, scan)
    folder = folder or report_folder(output)
    fs, path = filesystem(folder)
    path = path.rstrip("/")
    fs.create_dir(path, recursive=True)
    written = []
    try:
        pictures = render_pictures(d)
    except ImportError:
        pictures = {}
        d["pictures_note"] = "matplotlib is not installed: `pip install matplotlib`, then `router report OUTPUT`"
    for name, png in pictures.items():
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(png)
        written.append(name)
    d["report_of"] = output
    d["pictures"] = written
    with fs.open_output_stream(f"{path}/{REPORT_JSON}") as f:
        f.write(json.dumps(d, indent=1, default=float).encode())
    return folder, [REPORT_JSON, *written]


# ---------------------------------------------------------------- pictures (matplotlib, Agg)


def _usd_unit(values) -> tuple[float, str]:
    """A factor and unit that keep small spends readable on an axis (USD, 10^-3 USD, 10^-6 USD)."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    if top >= 1 or top == 0:
        return 1.0, "USD"
    if top >= 1e-3:
        return 1e3, "$10^{-3}$ USD"
    return 1e6, "$10^{-6}$ USD"


def _model_label(m: Any) -> str:
    return "(no model)" if m is None else str(m)


def _budget_text(d: dict[str, Any]) -> str:
    b = d.get("budget_usd")
    return "no budget" if b is None else f"budget {b:.6g} USD ({d.get('budget_mode')})"


def _bar_labels(ax, bars, fmt: str = "{:g}") -> None:
    for bar in bars:
        w = bar.get_width()
        if w:
            ax.annotate(fmt.format(w), (w, bar.get_y() + bar.get_height() / 2), xytext=(2, 0),
                        textcoords="offset points", va="center", fontsize=7)  # fmt: skip


def _spend_and_rows(d: dict[str, Any], plt):
    models = sorted(d["models"], key=lambda r: (r[S.MODEL] is None, -r["count_all"]))[::-1]
    y = np.arange(len(models))
    names = [_model_label(r[S.MODEL]) for r in models]
    routed = [r["count_all"] for r in models]
    answered = [r.get("statuses", {}).get(S.OK, 0) if r[S.MODEL] is not None else 0 for r in models]
    pred = [r.get(f"{S.PREDICTED_COST}_sum") or 0.0 for r in models]
    act = [r.get(f"{S.ACTUAL_COST}_sum") or 0.0 for r in models]
    f, unit = _usd_unit(pred + act)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(4.0, 1.6 + 0.45 * len(models))), sharey=True, dpi=110,
                                   layout="constrained")  # fmt: skip
    h = 0.38
    _bar_labels(ax1, ax1.barh(y + h / 2, routed, h, color="tab:blue", label="plan: rows routed"))
    _bar_labels(ax1, ax1.barh(y - h / 2, answered, h, color="tab:green", label="rows answered (status ok)"))
    ax1.set_yticks(y, names)
    ax1.set_xlabel("rows")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_title("Rows per model")
    ax1.margins(x=0.15)
    ax2.barh(y + h / 2, np.array(pred) * f, h, color="tab:blue", label="plan: predicted spend")
    ax2.barh(y - h / 2, np.array(act) * f, h, color="tab:orange", label="actual spend (real token counts)")
    ax2.set_xlabel(f"spend [{unit}]")
    ax2.set_title("Spend per model")
    fig.legend(fontsize=8, loc="outside lower center", ncol=4)
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Rows and spend per model: {d['rows']} rows, {_budget_text(d)}")
    return fig


def _frontier(d: dict[str, Any], plt):
    fr = d.get("frontier")
    if not fr or not fr.get("points"):
        return None
    n = fr["rows"]
    pts = sorted(fr["points"], key=lambda p: p["cost_usd"])
    c = fr["chosen"]
    f, unit = _usd_unit([p["cost_usd"] for p in pts] + [c["cost_usd"]])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110, layout="constrained")
    ax.plot([p["cost_usd"] * f for p in pts], [p["quality"] / n for p in pts], "o-", ms=3, color="tab:blue",
            label=f"frontier: budget swept ({len(pts)} budgets)")  # fmt: skip
    ax.plot(c["cost_usd"] * f, c["quality"] / n, "*", ms=16, color="tab:red", zorder=5,
            label=f"this plan: {c['cost_usd']:.4g} USD, quality {c['quality'] / n:.3f} per row")  # fmt: skip
    if c.get("budget_usd") is not None:
        ax.axvline(c["budget_usd"] * f, ls="--", color="0.4", lw=1, label="budget")
    ax.axvline(fr["cheapest_usd"] * f, ls=":", color="tab:green", lw=1,
               label="every row at its cheapest model (left of it, rows are skipped)")  # fmt: skip
    ax.set_xlabel(f"predicted spend for all {n} rows [{unit}]")
    ax.set_ylabel("mean predicted quality per row\n(0 to 1; skipped rows count 0)")
    ax.set_title(f"Predicted quality vs spend (solved on {fr['sample_rows']} of {n} rows)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2)
    return fig


def _labels(d: dict[str, Any], plt, top: int = 15):
    caps, doms = d.get("top_capability_counts") or {}, d.get("top_domain_counts") or {}
    if not caps and not doms:
        return None
    dom_items = list(doms.items())[:top]
    rest = sum(doms.values()) - sum(v for _, v in dom_items)
    if rest:
        dom_items.append((f"other ({len(doms) - top} domains)", rest))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(4.0, 1.6 + 0.32 * max(len(caps), len(dom_items)))), dpi=110,
                                   layout="constrained")  # fmt: skip
    for ax, items, title in ((ax1, list(caps.items()), "Rows by top capability"),
                             (ax2, dom_items, "Rows by top knowledge domain")):  # fmt: skip
        items = items[::-1]
        y = np.arange(len(items))
        _bar_labels(ax, ax.barh(y, [v for _, v in items], color="tab:purple"))
        ax.set_yticks(y, [k for k, _ in items])
        ax.set_xlabel("rows")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.margins(x=0.12)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"What the {sum(caps.values()) or sum(doms.values())} prompts ask for (each row's first-ranked label)")
    return fig


STATUS_COLOURS = {S.OK: "tab:green", S.GENERATION_ERROR: "tab:red", S.OVER_BUDGET: "tab:orange",
                  S.TOO_LONG: "tab:brown", S.INVALID_INPUT: "0.55"}  # fmt: skip


def _plan_vs_actual(d: dict[str, Any], plt):
    models = sorted(d["models"], key=lambda r: (r[S.MODEL] is None, -r["count_all"]))[::-1]
    priced = [r for r in models if r.get(f"{S.PREDICTED_COST}_sum")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(4.0, 1.8 + 0.45 * len(models))), dpi=110,
                                   layout="constrained")  # fmt: skip
    y = np.arange(len(priced))
    ratio = [(r.get(f"{S.ACTUAL_COST}_sum") or 0.0) / r[f"{S.PREDICTED_COST}_sum"] for r in priced]
    bars = ax1.barh(y, ratio, color=["tab:red" if x > 1 else "tab:blue" for x in ratio])
    _bar_labels(ax1, bars, "{:.2f}")
    ax1.axvline(1.0, color="k", lw=1, ls="--", label="actual = predicted")
    ax1.set_yticks(y, [_model_label(r[S.MODEL]) for r in priced])
    ax1.set_xlabel("actual spend / predicted spend")
    ax1.set_title("Spend against the plan, per model")
    ax1.margins(x=0.12)
    ax1.grid(axis="x", alpha=0.3)
    y = np.arange(len(models))
    left = np.zeros(len(models))
    present = [s for s in S.STATUSES if any(r.get("statuses", {}).get(s) for r in models)]
    for s in present:
        v = np.array([r.get("statuses", {}).get(s, 0) for r in models], dtype=float)
        ax2.barh(y, v, left=left, color=STATUS_COLOURS.get(s), label=s)
        left += v
    ax2.set_yticks(y, [_model_label(r[S.MODEL]) for r in models])
    ax2.set_xlabel("rows")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlim(0, max(left.max(), 1) * 1.04)  # zero-width stacked segments would pin the edge
    ax2.set_title("Row statuses per model")
    fig.legend(fontsize=8, loc="outside lower center", ncol=1 + len(present))
    ax2.grid(axis="x", alpha=0.3)
    pred, act = d.get("predicted_spend_usd"), d.get("actual_spend_usd")
    share = f" ({act / pred:.0%} of plan)" if pred and act is not None else ""
    pred_text = "-" if pred is None else f"{pred:.6g}"
    fig.suptitle(f"Plan vs what happened: predicted {pred_text} USD, actual {act:.6g} USD{share}; {_budget_text(d)}")
    return fig


PICTURES = {
    "spend_and_rows_by_model.png": _spend_and_rows,
    "frontier.png": _frontier,
    "capabilities_and_domains.png": _labels,
    "plan_vs_actual.png": _plan_vs_actual,
}


def render_pictures(d: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per picture name, from a report.json dict (pictures without data are left out)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, draw in PICTURES.items():
        fig = draw(d, plt)
        if fig is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out
