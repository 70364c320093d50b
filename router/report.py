"""What the user sees at the end: a terminal summary and a report folder beside the output
(`OUTPUT-report/`: report.json and pictures readable without a notebook).

The report folder is built from a finished output alone (`router report OUTPUT`, and `router run`
once the job ends): the rows give per-model sums, statuses, tokens and the capability and domain
counts; the job's `_report.json` (`router.job.result`) gives what rows cannot (the plan, the
budget, the frontier, the phase times).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from router import schema as S
from router.config import JobConfig
from router.job.frontier import with_chosen
from router.job.result import RunResult, report_dict
from router.job.schedule import format_schedule, short_label
from router.job.tally import ModelTally, OutputScan, scan_output

REPORT_JSON = "report.json"


def _usd(x: Any) -> str:
    return "-" if not x or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


def _ratio(actual: Any, predicted: Any) -> str:
    return f"{actual / predicted:.2f}x" if actual is not None and predicted else "-"


def _model_line(t: ModelTally, ran: bool) -> str:
    line = f"{str(t.model or '(no model)'):34} {t.rows:>7} {_usd(t.predicted_cost):>14}"
    if ran:
        line += (f" {_usd(t.actual_cost):>12} {_ratio(t.actual_cost, t.predicted_cost):>11} {t.input_tokens or 0:>10}"
                 f" {t.output_tokens or 0:>10}")  # fmt: skip
    return line


def _sources_lines(what: str, sources: dict[str, str]) -> list[str]:
    """One line per source of a planned quantity (prompt tokens, answer lengths), naming its models."""
    by_source: dict[str, list[str]] = {}
    for model, source in sources.items():
        by_source.setdefault(source, []).append(model)
    if len(by_source) == 1 and len(sources) > 1:
        return [f"{what}: {next(iter(by_source))}, every model"]
    return [f"{what}: {source}: {', '.join(models)}" for source, models in by_source.items()]


def _wave_lines(d: dict[str, Any]) -> list[str]:
    """The waves: each one's plan (budget left, lambda, the cost correction) and spend, and the share
    of the budget used in the end."""
    waves = d.get("waves") or []
    if not waves:
        return []
    u = d.get("cost_unit") or "USD"
    lines = [f"{'wave':>4} {'rows':>7} {u + ' left':>11} {'lambda':>10} {'predicted ' + u:>14} {'actual ' + u:>11} "
             f"{'spent in all':>13} {'refused':>8}  cost correction (min-max)"]  # fmt: skip
    for w in waves:
        f = list(w["factors"].values())
        lam = "-" if w["lam"] is None else f"{w['lam']:.4g}"
        lines.append(f"{w['number']:>4} {w['rows']:>7} {w['budget_left']:>11.6g} {lam:>10} {w['predicted']:>14.6g} "
                     f"{w['actual']:>11.6g} {w['spent_after']:>13.6g} {w['refused']:>8}  "
                     f"{min(f):.3g}-{max(f):.3g}")  # fmt: skip
    budget, act = d.get("budget_usd"), d.get("actual_spend_usd")
    if budget:
        lines.append(f"budget used: {act / budget:.1%} of {budget:.6g} {u}"
                     + (" (hard: a row entered an engine only when its worst case fitted)"
                        if d.get("budget_mode") == "hard" else ""))  # fmt: skip
    return lines


def _gpu_time_lines(d: dict[str, Any]) -> list[str]:
    """GPU-seconds predicted and used by the models priced by GPU time, and the deadline, if any."""
    g = d.get("gpu_time")
    lines = []
    if d.get("deadline_s") is not None:
        budget = d.get("budget_usd")
        lines.append(f"deadline: {d['deadline_s']:g}s of generation"
                     + (f", {budget:.6g} GPU-seconds on the job's devices after the engines' start"
                        if budget is not None else ""))  # fmt: skip
    if g:
        used = "-" if g["used_s"] is None else f"{g['used_s']:.4g}"
        per = ", ".join(f"{m} {v['predicted_s'] or 0:.4g}/{'-' if v['used_s'] is None else format(v['used_s'], '.4g')}"
                        for m, v in g["models"].items())  # fmt: skip
        lines.append(f"GPU time: predicted {g['predicted_s']:.4g} GPU-s, used {used} GPU-s"
                     + (f" (per model, predicted/used: {per})" if per else ""))  # fmt: skip
    return lines


def format_summary(cfg: JobConfig, result: RunResult) -> str:
    d = report_dict(cfg, result)
    ran = bool(result.output)
    u = d["cost_unit"]
    lines = []
    budget = "unlimited" if d["budget_usd"] is None else f"{d['budget_usd']:.6g} {u}"
    lines.append(f"rows: {d['rows']}   budget: {budget} ({d['budget_mode']})   "
                 f"predicted spend: {_usd(d['predicted_spend_usd'])} {u}" +
                 (f"   actual spend: {_usd(d['actual_spend_usd'])} {u}" if ran else ""))  # fmt: skip
    if d.get("resumed"):
        r = d["resumed"]
        lines.append(f"resumed: {r['rows']} rows were written by earlier runs ({_usd(r['spend_usd'])} {u}); "
                     "this run routed the rest with what was left of the budget")  # fmt: skip
    lines.append("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(d["statuses"].items())))
    lines.extend(_sources_lines("prompt tokens counted by", d.get("prompt_tokens") or {}))
    lines.extend(_sources_lines("answers planned at", d.get("answer_lengths") or {}))
    header = f"{'model':34} {'rows':>7} {'predicted ' + u:>14}"
    if ran:
        header += f" {'actual ' + u:>12} {'actual/pred':>11} {'in tokens':>10} {'out tokens':>10}"
    lines.append(header)
    for t in [*result.by_model, ModelTally.total(result.by_model)]:
        lines.append(_model_line(t, ran))
    lines.extend(_wave_lines(d))
    lines.extend(_gpu_time_lines(d))
    lines.append(f"{'phase':42} {'rows':>7} {'seconds':>9} {'rows/s':>9}")
    for p in d["phases"]:
        lines.append(f"{p['phase']:42} {p['rows']:>7} {p['seconds']:>9.1f} {p['rows_per_s']:>9.1f}")
    lines.append(f"{'total wall time':42} {'':>7} {sum(p['seconds'] for p in d['phases']):>9.1f}")
    if result.schedule is not None:
        lines.extend(format_schedule(result.schedule))
    else:
        lines.append("schedule: no vLLM engine on GPUs: engine pools run in turn, models.NAME.replicas each")
    for g in result.generation:
        rate, early = g.tokens_per_s_per_replica, g.engine_start_s
        lines.append(f"  ran {short_label(g.pool)}: {g.replicas} replica(s), {g.gpus} GPUs, from {g.start_s:.0f}s "
                     f"for {g.seconds:.0f}s, {g.tokens} tokens"
                     + (f" ({rate:.4g} tokens/s per replica)" if rate else "")
                     + (f"; engines started during encoding, in {early:.0f}s" if early is not None else "")
                     + (f", busy {g.engine_busy_share:.0%} of the pass" if g.engine_busy_share is not None else ""))  # fmt: skip
    f = d.get("frontier")
    if f:
        c = f["chosen"]
        lines.append(f"frontier (predicted, from {f['sample_rows']} of {f['rows']} rows): every row at its cheapest "
                     f"model {f['cheapest_usd']:.6g} {u}; at its best {f['best_quality_usd']:.6g} {u} for total "
                     f"quality {f['best_quality']:.4g}; this plan {c['cost_usd']:.6g} {u} for {c['quality']:.4g}")  # fmt: skip
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


def folder_report(output: str, scan: OutputScan | None = None) -> dict[str, Any]:
    """report.json: `_report.json` with the per-model numbers recounted from the rows, each model's
    statuses, the frontier's chosen point, and the top capability and domain counts. `scan`: the
    output's `router.job.tally.scan_output`, when the caller has it already."""
    d = _read_run_report(output)
    rows = scan if scan is not None else scan_output(output)
    d.update(
        rows=sum(rows.statuses.values()),
        statuses=rows.statuses,
        models=[t.to_dict() for t in rows.models],
        actual_spend_usd=sum(t.actual_cost or 0.0 for t in rows.models),
        rows_skipped_for_budget=rows.statuses.get(S.OVER_BUDGET, 0),
        top_capability_counts=rows.capabilities,
        top_domain_counts=rows.domains,
    )  # fmt: skip
    if d.get("frontier"):
        d["frontier"] = with_chosen(d["frontier"], rows.models, d.get("budget_usd"))
    return d


def write_report_folder(output: str, folder: str | None = None, scan: OutputScan | None = None) -> tuple[str, list[str]]:
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


def _usd_unit(values, unit: str = "USD") -> tuple[float, str]:
    """A factor and unit that keep small spends readable on an axis (USD, 10^-3 USD, 10^-6 USD;
    GPU-s alike under a deadline)."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    if top >= 1 or top == 0:
        return 1.0, unit
    if top >= 1e-3:
        return 1e3, f"$10^{{-3}}$ {unit}"
    return 1e6, f"$10^{{-6}}$ {unit}"


def _model_label(m: Any) -> str:
    return "(no model)" if m is None else str(m)


def _budget_text(d: dict[str, Any]) -> str:
    b = d.get("budget_usd")
    unit = d.get("cost_unit") or "USD"
    return "no budget" if b is None else f"budget {b:.6g} {unit} ({d.get('budget_mode')})"


def _bar_labels(ax, bars, fmt: str = "{:g}") -> None:
    for bar in bars:
        w = bar.get_width()
        if w:
            ax.annotate(fmt.format(w), (w, bar.get_y() + bar.get_height() / 2), xytext=(2, 0),
                        textcoords="offset points", va="center", fontsize=7)  # fmt: skip


def _models_upwards(d: dict[str, Any]) -> list[ModelTally]:
    """report.json's models, the busiest at the top of a bar chart (the rows of no model below)."""
    models = [ModelTally.from_dict(r) for r in d["models"]]
    return sorted(models, key=lambda t: (t.model is None, -t.rows))[::-1]


def _spend_and_rows(d: dict[str, Any], plt):
    models = _models_upwards(d)
    y = np.arange(len(models))
    names = [_model_label(t.model) for t in models]
    routed = [t.rows for t in models]
    answered = [t.statuses.get(S.OK, 0) if t.model is not None else 0 for t in models]
    pred = [t.predicted_cost or 0.0 for t in models]
    act = [t.actual_cost or 0.0 for t in models]
    f, unit = _usd_unit(pred + act, d.get("cost_unit") or "USD")
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
    f, unit = _usd_unit([p["cost_usd"] for p in pts] + [c["cost_usd"]], d.get("cost_unit") or "USD")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110, layout="constrained")
    ax.plot([p["cost_usd"] * f for p in pts], [p["quality"] / n for p in pts], "o-", ms=3, color="tab:blue",
            label=f"frontier: budget swept ({len(pts)} budgets)")  # fmt: skip
    ax.plot(c["cost_usd"] * f, c["quality"] / n, "*", ms=16, color="tab:red", zorder=5,
            label=f"this plan: {c['cost_usd']:.4g} {d.get('cost_unit') or 'USD'}, quality {c['quality'] / n:.3f} per row")  # fmt: skip
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
    models = _models_upwards(d)
    priced = [t for t in models if t.predicted_cost]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(4.0, 1.8 + 0.45 * len(models))), dpi=110,
                                   layout="constrained")  # fmt: skip
    y = np.arange(len(priced))
    ratio = [(t.actual_cost or 0.0) / t.predicted_cost for t in priced]
    bars = ax1.barh(y, ratio, color=["tab:red" if x > 1 else "tab:blue" for x in ratio])
    _bar_labels(ax1, bars, "{:.2f}")
    ax1.axvline(1.0, color="k", lw=1, ls="--", label="actual = predicted")
    ax1.set_yticks(y, [_model_label(t.model) for t in priced])
    ax1.set_xlabel("actual spend / predicted spend")
    ax1.set_title("Spend against the plan, per model")
    ax1.margins(x=0.12)
    ax1.grid(axis="x", alpha=0.3)
    y = np.arange(len(models))
    left = np.zeros(len(models))
    present = [s for s in S.STATUSES if any(t.statuses.get(s) for t in models)]
    for s in present:
        v = np.array([t.statuses.get(s, 0) for t in models], dtype=float)
        ax2.barh(y, v, left=left, color=STATUS_COLOURS.get(s), label=s)
        left += v
    ax2.set_yticks(y, [_model_label(t.model) for t in models])
    ax2.set_xlabel("rows")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlim(0, max(left.max(), 1) * 1.04)  # zero-width stacked segments would pin the edge
    ax2.set_title("Row statuses per model")
    fig.legend(fontsize=8, loc="outside lower center", ncol=1 + len(present))
    ax2.grid(axis="x", alpha=0.3)
    pred, act = d.get("predicted_spend_usd"), d.get("actual_spend_usd")
    share = f" ({act / pred:.0%} of plan)" if pred and act is not None else ""
    pred_text = "-" if pred is None else f"{pred:.6g}"
    u = d.get("cost_unit") or "USD"
    fig.suptitle(f"Plan vs what happened: predicted {pred_text} {u}, actual {act:.6g} {u}{share}; {_budget_text(d)}")
    return fig


def _spend_over_run(d: dict[str, Any], plt):
    """Actual spend against the budget as the waves answered the rows, each wave's plan beside it."""
    waves = d.get("waves") or []
    if not waves:
        return None
    rows = np.cumsum([0] + [w["rows"] for w in waves])
    spent = np.array([waves[0]["spent_after"] - waves[0]["actual"]] + [w["spent_after"] for w in waves])
    planned = spent[:-1] + np.array([w["predicted"] for w in waves])
    scale, unit = _usd_unit(np.concatenate([spent, planned, [d.get("budget_usd") or 0.0]]), d.get("cost_unit") or "USD")
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110, layout="constrained")
    ax.plot(rows, spent * scale, "o-", color="tab:blue", label="actual spend")
    for i, w in enumerate(waves):
        ax.plot([rows[i], rows[i + 1]], [spent[i] * scale, planned[i] * scale], ":", color="tab:gray",
                label="each wave's plan" if i == 0 else None)  # fmt: skip
        lam = "" if w["lam"] is None else f"\nlambda {w['lam']:.3g}"
        ax.annotate(f"wave {w['number']}{lam}", (rows[i + 1], spent[i + 1] * scale), fontsize=7,
                    xytext=(4, -14), textcoords="offset points")  # fmt: skip
    if d.get("budget_usd"):
        ax.axhline(d["budget_usd"] * scale, color="tab:red", ls="--", label=f"budget ({d['budget_mode']})")
    ax.set_xlabel("rows written")
    ax.set_ylabel(f"spend ({unit})")
    ax.set_title(f"Spend over the run, wave by wave; {_budget_text(d)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


PICTURES = {
    "spend_and_rows_by_model.png": _spend_and_rows,
    "frontier.png": _frontier,
    "capabilities_and_domains.png": _labels,
    "plan_vs_actual.png": _plan_vs_actual,
    "spend_over_run.png": _spend_over_run,
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
