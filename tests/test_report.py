"""The report a user reads after a run: the terminal summary and the report folder beside the
output (report.json and pictures), rebuilt by `router report` from a finished output folder.

The output folder here is written by the run's own code (finalize, write_report) from made-up
rows: no Ray, no vLLM.
"""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from router.budget import BudgetPlan, solve_budget
from router import schema as S
from router.config import load_config
from router.job.frontier import predicted_frontier
from router.job.output import finalize
from router.job.result import Phase, RunResult, write_report
from router.job.tally import ModelTally
from router.report import format_summary, report_folder

CONFIG = "jobs/configs/local.yaml"
PICTURES = ("spend_and_rows_by_model.png", "frontier.png", "capabilities_and_domains.png", "plan_vs_actual.png")
CAPS = ["reasoning", "coding", "multilingual"]
DOMAINS = ["arithmetic", "programming", "history", "biology"]


def _rows(cfg, n: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Generated rows (ok and generation_error) and rows no engine saw, as the run writes them."""
    rng = np.random.default_rng(seed)
    models = [m.name for m in cfg.models][:4]
    price = {m.name: m for m in cfg.models}
    gen, rest = [], []
    for i in range(n):
        caps = [CAPS[i % 3], CAPS[(i + 1) % 3]]
        doms = [DOMAINS[i % 4], DOMAINS[(i + 2) % 4]]
        row = {S.ID: f"r{i}", S.PROMPT: f"question {i}", "source": "t", S.ERROR: None,
               S.CAPABILITIES: caps, S.DOMAINS: doms}  # fmt: skip
        if i % 10 == 9:
            rest.append({**row, S.MODEL: None, S.STATUS: S.OVER_BUDGET, S.ERROR: "the budget cannot pay for this row",
                         S.PREDICTED_QUALITY: None, S.PREDICTED_COST: None})  # fmt: skip
            continue
        if i % 10 == 8:
            rest.append({**row, S.MODEL: None, S.STATUS: S.INVALID_INPUT, S.ERROR: "empty prompt",
                         S.PREDICTED_QUALITY: None, S.PREDICTED_COST: None})  # fmt: skip
            continue
        m = models[i % len(models)]
        inp, out = int(rng.integers(5, 60)), int(rng.integers(1, 33))
        status = S.GENERATION_ERROR if i % 17 == 0 else S.OK
        ok = status == S.OK
        gen.append({
            **row, S.MODEL: m, S.STATUS: status, S.ERROR: None if ok else "engine rejected the row",
            S.PREDICTED_QUALITY: float(rng.uniform(0.4, 0.9)),
            S.PREDICTED_COST: (70 * price[m].input_price + 32 * price[m].output_price) / 1e6,
            S.RESPONSE: "noise" if ok else None, S.INPUT_TOKENS: inp if ok else None,
            S.OUTPUT_TOKENS: out if ok else None,
            S.ACTUAL_COST: (inp * price[m].input_price + out * price[m].output_price) / 1e6 if ok else None,
            S.FINISH_REASON: "length" if ok else None, S.GENERATION_SECONDS: 0.5 if ok else None,
        })  # fmt: skip
    routed = pa.schema([(S.ID, pa.string()), (S.PROMPT, pa.string()), ("source", pa.string()),
                        (S.ERROR, pa.string()), (S.CAPABILITIES, pa.list_(pa.string())),
                        (S.DOMAINS, pa.list_(pa.string())), (S.MODEL, pa.string()), (S.STATUS, pa.string()),
                        (S.PREDICTED_QUALITY, pa.float64()), (S.PREDICTED_COST, pa.float64())])  # fmt: skip
    generated = routed
    for name, t in ((S.RESPONSE, pa.string()), (S.INPUT_TOKENS, pa.int64()), (S.OUTPUT_TOKENS, pa.int64()),
                    (S.ACTUAL_COST, pa.float64()), (S.FINISH_REASON, pa.string()),
                    (S.GENERATION_SECONDS, pa.float64())):  # fmt: skip
        generated = generated.append(pa.field(name, t))
    return pa.Table.from_pylist(gen, schema=generated), pa.Table.from_pylist(rest, schema=routed)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished output folder: two parquet files with the output schema and `_report.json`."""
    d = tmp_path_factory.mktemp("run")
    out = d / "answers"
    out.mkdir()
    cfg = load_config(CONFIG, ["input=in.jsonl", f"output={out}", "budget.total=0.002"])
    gen, rest = _rows(cfg, 120)
    for name, t in (("part-gen.parquet", gen), ("part-rest.parquet", rest)):  # committed shards' names
        pq.write_table(finalize(t, cfg.text_column), out / name)
    rows = pa.concat_tables([pq.read_table(out / "part-gen.parquet"), pq.read_table(out / "part-rest.parquet")]).to_pylist()
    rng = np.random.default_rng(1)
    quality = rng.uniform(0.3, 0.9, (100, 9)).astype(np.float32)
    cost = rng.uniform(1e-6, 4e-5, (100, 9))
    result = RunResult(output=str(out), n_rows=len(rows), plan=BudgetPlan(lam=0.5, tie_key=None,
                       predicted_cost=0.0019), budget=0.002, allow_skip=False, standin=True,
                       phases=[Phase("read+encode+score", 120, 3.0), Phase("budget solve", 120, 0.5)],
                       frontier=predicted_frontier(quality, cost, len(rows), 0.002))  # fmt: skip
    write_report(cfg, result)  # by_model is empty here: `router report` recounts it from the rows
    return cfg, out, rows


def _expected_by_model(rows):
    by = {}
    for r in rows:
        m = by.setdefault(r[S.MODEL], {"rows": 0, "pred": 0.0, "act": 0.0, "in": 0, "out": 0, "q": 0.0, "st": {}})
        m["rows"] += 1
        m["pred"] += r[S.PREDICTED_COST] or 0.0
        m["act"] += r[S.ACTUAL_COST] or 0.0
        m["in"] += r[S.INPUT_TOKENS] or 0
        m["out"] += r[S.OUTPUT_TOKENS] or 0
        m["q"] += r[S.PREDICTED_QUALITY] or 0.0
        m["st"][r[S.STATUS]] = m["st"].get(r[S.STATUS], 0) + 1
    return by


@pytest.fixture(scope="module")
def reported(finished):
    _, out, _ = finished
    res = run_cli("report", str(out) + "/", timeout=240)
    assert res.returncode == 0, res.stderr
    folder = out.parent / "answers-report"
    assert str(folder) in res.stdout
    return folder, json.loads((folder / "report.json").read_text())


@pytest.mark.timeout(300)
def test_report_json_recounts_each_model_from_the_rows(finished, reported):
    _, out, rows = finished
    _, rep = reported
    expected = _expected_by_model(rows)
    assert {m[S.MODEL] for m in rep["models"]} == set(expected)
    for m in rep["models"]:
        e = expected[m[S.MODEL]]
        assert m["count_all"] == e["rows"] and m["statuses"] == e["st"]
        assert math.isclose(m[f"{S.PREDICTED_COST}_sum"], e["pred"], rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(m[f"{S.ACTUAL_COST}_sum"], e["act"], rel_tol=1e-9, abs_tol=1e-15)
        assert m[f"{S.INPUT_TOKENS}_sum"] == e["in"] and m[f"{S.OUTPUT_TOKENS}_sum"] == e["out"]
    assert rep["rows"] == len(rows) == 120
    assert rep["statuses"] == {s: sum(r[S.STATUS] == s for r in rows) for s in {r[S.STATUS] for r in rows}}
    assert rep["rows_skipped_for_budget"] == 12
    assert math.isclose(rep["actual_spend_usd"], sum(r[S.ACTUAL_COST] or 0 for r in rows), rel_tol=1e-9)
    # What the rows cannot say comes from _report.json.
    assert rep["lambda"] == 0.5 and rep["budget_usd"] == 0.002 and rep["predicted_spend_usd"] == 0.0019
    assert [p["phase"] for p in rep["phases"]] == ["read+encode+score", "budget solve"]
    assert rep["report_of"] == str(out) + "/" and set(rep["pictures"]) == set(PICTURES)
    assert (out / "_report.json").is_file()  # the output keeps its own report


@pytest.mark.timeout(300)
def test_report_json_counts_top_capabilities_and_domains(finished, reported):
    _, _, rows = finished
    _, rep = reported
    assert rep["top_capability_counts"] == {c: sum(r[S.CAPABILITIES][0] == c for r in rows) for c in CAPS}
    assert rep["top_domain_counts"] == {d: 30 for d in DOMAINS}
    counts = list(rep["top_capability_counts"].values())
    assert counts == sorted(counts, reverse=True)  # most common first


@pytest.mark.timeout(300)
def test_report_json_marks_the_chosen_point_on_the_frontier(finished, reported):
    _, _, rows = finished
    _, rep = reported
    f = rep["frontier"]
    assert f["rows"] == 120 and f["sample_rows"] == 100 and len(f["points"]) >= 30
    chosen = f["chosen"]
    assert math.isclose(chosen["cost_usd"], sum(r[S.PREDICTED_COST] or 0 for r in rows), rel_tol=1e-9)
    assert math.isclose(chosen["quality"], sum(r[S.PREDICTED_QUALITY] or 0 for r in rows), rel_tol=1e-9)
    assert chosen["budget_usd"] == 0.002


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", PICTURES)
def test_pictures_are_readable_pngs(reported, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    folder, _ = reported
    path = folder / name
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 700 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.timeout(120)
def test_report_of_a_folder_that_is_not_a_finished_run_is_one_clear_line(tmp_path):
    res = run_cli("report", str(tmp_path / "missing"), timeout=100)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no _report.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "output, folder",
    [("out/x", "out/x-report"), ("out/x/", "out/x-report"), ("s3://b/answers/", "s3://b/answers-report"),
     ("gs://b/a/b", "gs://b/a/b-report"), ("s3://bucket/", "s3://bucket/_report"), ("/", "/_report")],
)  # fmt: skip
def test_report_folder_sits_beside_the_output(output, folder):
    assert report_folder(output) == folder


@pytest.mark.timeout(60)
def test_frontier_rises_with_spend_and_passes_through_the_budget():
    rng = np.random.default_rng(2)
    quality = rng.uniform(0.2, 0.9, (400, 5)).astype(np.float32)
    cost = rng.uniform(1e-6, 1e-4, (400, 5))
    cost[:7] = np.nan  # rows no model can take: never counted as skipped
    cheapest = np.nanmin(cost[7:], axis=1).sum()
    budget = 0.8 * cheapest  # below the cheapest assignment: the low end skips rows
    f = predicted_frontier(quality, cost, 400, budget)
    pts = f["points"]
    assert len(pts) >= 30 and math.isclose(pts[0]["budget_usd"], budget) and pts[0]["rows_skipped"] > 0
    assert all(p["cost_usd"] <= p["budget_usd"] * (1 + 1e-9) for p in pts)
    assert np.all(np.diff([p["cost_usd"] for p in pts]) >= -1e-12)
    # Rows are skipped only below the cheapest assignment (as in the run), so quality rises with the
    # budget on each side of it; at it, every row must take a model and quality can step down.
    for side in ([p for p in pts if p["budget_usd"] < f["cheapest_usd"]],
                 [p for p in pts if p["budget_usd"] >= f["cheapest_usd"]]):  # fmt: skip
        assert len(side) >= 2 and np.all(np.diff([p["quality"] for p in side]) >= -1e-9)
    assert all(p["rows_skipped"] == 0 for p in pts if p["budget_usd"] >= f["cheapest_usd"])
    assert math.isclose(pts[-1]["cost_usd"], f["best_quality_usd"]) and pts[-1]["rows_skipped"] == 0
    at_budget = solve_budget(quality, cost, budget, allow_skip=True)
    assert any(math.isclose(p["quality"], at_budget.total_quality) for p in pts)
    # A sample stands for the whole file: sums scale by rows / sample rows.
    scaled = predicted_frontier(quality, cost, 4000, budget * 10)
    assert math.isclose(scaled["points"][0]["quality"], 10 * at_budget.total_quality, rel_tol=1e-9)


@pytest.mark.timeout(60)
def test_terminal_summary_shows_models_totals_and_phases(finished):
    cfg, out, rows = finished
    by_model = [
        ModelTally(m, rows=e["rows"], predicted_cost=e["pred"], actual_cost=e["act"], input_tokens=e["in"],
                   output_tokens=e["out"], predicted_quality=e["q"])
        for m, e in _expected_by_model(rows).items()
    ]  # fmt: skip
    result = RunResult(output=str(out), n_rows=120, plan=BudgetPlan(0.5, None, 0.0019), budget=0.002,
                       allow_skip=False, by_model=by_model, by_status={S.OK: 90, S.OVER_BUDGET: 12},
                       phases=[Phase("read+encode+score", 120, 3.0), Phase("generate (x)", 96, 48.0)])  # fmt: skip
    text = format_summary(cfg, result)
    assert "actual/pred" in text and "(no model)" in text
    total = next(line for line in text.splitlines() if line.startswith("total "))
    assert " 120 " in total and f"{sum(r[S.ACTUAL_COST] or 0 for r in rows):.6f}" in total
    assert "generate (x)" in text and "51.0" in text  # per-phase rows and the total wall time
