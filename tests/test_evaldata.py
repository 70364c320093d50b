"""Evaluation-table readers: the shapes public routing data comes in."""

import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.method.evaldata import detect_format, prompt_text, read_eval_table

pytestmark = pytest.mark.timeout(60)


def routerbench_frame():
    return pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "prompt": [["What is 2+2?"], "['Example: 1+1=2', 'What is 3+3?']", '["Hi", "Name a colour."]'],
            "eval_name": ["math", "math", "chat"],
            "gpt-x": [1, 0, 1],
            "gpt-x|total_cost": [0.01, 0.02, 0.01],
            "gpt-x|model_response": ["4", "5", "red"],
            "small": [0, 1, 1],
            "small|total_cost": [0.001, 0.001, 0.002],
            "small|model_response": ["5", "6", "blue"],
        }
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet", "pkl"])
def test_routerbench_wide_table(tmp_path, suffix):
    df = routerbench_frame()
    path = tmp_path / f"rb.{suffix}"
    if suffix == "csv":
        df.assign(prompt=df["prompt"].astype(str)).to_csv(path, index=False)
    elif suffix == "parquet":
        df.assign(prompt=df["prompt"].astype(str)).to_parquet(path)
    else:
        with open(path, "wb") as f:
            pickle.dump(df, f)
    assert detect_format(path) == "routerbench"
    t = read_eval_table([path])
    assert t.models == ("gpt-x", "small")
    assert np.array_equal(t.scores, [[1, 0], [0, 1], [1, 1]])
    assert np.allclose(t.costs[:, 1], [0.001, 0.001, 0.002])
    assert t.task == ["math", "math", "chat"]
    assert t.queries[0] == "What is 2+2?"
    assert t.queries[1].endswith("What is 3+3?") and t.queries[2].endswith("Name a colour.")


def test_scores_json_with_text_scores_and_task_from_file(tmp_path):
    rows = [{"question": "q1", "scores": "{'m1': 1, 'm2': 0}"}, {"question": "q2", "scores": {"m1": 0.5, "m2": 1}}]
    (tmp_path / "mmlu_train.json").write_text(json.dumps(rows))
    t = read_eval_table([tmp_path / "mmlu_train.json"], tasks_from_files=True)
    assert t.models == ("m1", "m2") and np.allclose(t.scores, [[1, 0], [0.5, 1]]) and t.task == ["mmlu", "mmlu"]


def test_long_parquet_and_union_of_models(tmp_path):
    long = pa.table({"query_id": [1, 1, 2], "query": ["a", "a", "b"], "model": ["x", "y", "x"],
                     "score": [1.0, 0.0, 1.0], "cost": [0.1, 0.2, 0.1]})  # fmt: skip
    pq.write_table(long, tmp_path / "t.parquet")
    (tmp_path / "s.json").write_text(json.dumps([{"question": "c", "scores": {"z": 1}}]))
    t = read_eval_table([tmp_path / "t.parquet", tmp_path / "s.json"])
    assert t.models == ("x", "y", "z") and t.queries == ["a", "b", "c"]
    assert np.isnan(t.scores[1, 1]) and t.scores[2, 2] == 1 and np.isnan(t.costs[2]).all()


def test_prompt_text_forms():
    assert prompt_text("plain [not a list") == "plain [not a list"
    assert prompt_text([{"role": "user", "content": "hi"}]) == "hi"
    assert prompt_text("['a', 'b']") == "a\n\nb"


def test_choice_probabilities_are_read_as_right_or_wrong_and_other_scores_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    m = ["a", "b", "c"]

    def write(name, scores):
        rows = [{"question": f"{name} {i}", "scores": dict(zip(m, map(float, s)))} for i, s in enumerate(scores)]
        (tmp_path / name).write_text(json.dumps(rows))
        return tmp_path / name

    # RouterDC's multiple choice: 0 when wrong, else the probability put on the right choice.
    probs = np.where(rng.random((200, 3)) < 0.5, 0.0, rng.uniform(0.26, 0.999, (200, 3)))
    probs[0, 0] = 1.0  # a confident right choice that rounds to 1
    samples = rng.integers(0, 11, (200, 3)) / 10  # fractions of 10 samples right
    graded = np.where(rng.random((200, 3)) < 0.3, 0.0, rng.uniform(0.01, 0.9, (200, 3)))  # F1-like
    binary = (rng.random((200, 3)) < 0.5).astype(float)
    ratings = rng.integers(2, 9, (200, 3)) / 9  # a judge's 2..8 out of 9: off the k/20 grid, few values
    paths = [write("mc_train.json", probs), write("gsm_train.json", samples),
             write("f1_train.json", graded), write("bin_train.json", binary), write("judge_train.json", ratings)]  # fmt: skip
    t = read_eval_table(paths, tasks_from_files=True)
    assert t.binarized == ((str(paths[0]), "mc"),)
    assert np.array_equal(t.scores[:200], (probs > 0).astype(np.float32))
    assert np.allclose(t.scores[200:400], samples) and np.allclose(t.scores[400:600], graded)
    assert np.array_equal(t.scores[600:800], binary) and np.allclose(t.scores[800:], ratings)
    raw = read_eval_table(paths, score_reading="raw")
    assert raw.binarized == () and np.allclose(raw.scores[:200], probs)
    both = read_eval_table(paths[:2], score_reading="binary")
    assert np.array_equal(both.scores[200:], (samples > 0).astype(np.float32))
    # Within one file, each task is read on its own.
    mixed = [{"question": f"q{i}", "task": "mc" if i < 200 else "gsm",
              "scores": dict(zip(m, map(float, (probs if i < 200 else samples)[i % 200])))} for i in range(400)]  # fmt: skip
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    t = read_eval_table([tmp_path / "mixed.json"])
    assert t.binarized == ((str(tmp_path / "mixed.json"), "mc"),)
    assert np.array_equal(t.scores[:200], (probs > 0)) and np.allclose(t.scores[200:], samples)
    with pytest.raises(ValueError, match="score reading"):
        read_eval_table(paths, score_reading="bool")


def routeprofile_rows():
    perf = {"big": {"response": "B", "prompt_tokens": 50, "completion_tokens": 2, "success": True,
                    "task_performance": 1.0},
            "small": {"response": "long...", "prompt_tokens": 48, "completion_tokens": 300, "success": True,
                      "task_performance": 0.0}}  # fmt: skip
    failed = {**perf, "small": {**perf["small"], "success": False}}
    return [{"task_name": "arc", "query": "Pick one: A or B?", "ground_truth": "B", "metric": "em_mc",
             "model_performance": perf},
            {"task_name": "gsm8k", "query": "2+2?", "ground_truth": "4", "metric": "gsm8k",
             "model_performance": repr(failed)}]  # fmt: skip


def test_routeprofile_records_with_token_counts(tmp_path):
    """RouteProfile's records: scores, answer and prompt tokens per model; a failed call is not
    evaluated; `model_performance` as a mapping or its Python text; costs from prices."""
    path = tmp_path / "routing_test_data.json"
    path.write_text(json.dumps(routeprofile_rows()))
    assert detect_format(path) == "routeprofile"
    t = read_eval_table([path])
    assert t.models == ("big", "small") and t.task == ["arc", "gsm8k"] and t.queries[1] == "2+2?"
    np.testing.assert_array_equal(t.scores, [[1, 0], [1, np.nan]])
    np.testing.assert_array_equal(t.output_tokens, [[2, 300], [2, np.nan]])
    np.testing.assert_array_equal(t.input_tokens, [[50, 48], [50, np.nan]])
    assert t.costs is None
    priced = read_eval_table([path], prices={"big": {"input_price": 1.0, "output_price": 2.0}})
    np.testing.assert_allclose(priced.costs[:, 0], (50 * 1.0 + 2 * 2.0) * 1e-6)
    assert np.isnan(priced.costs[:, 1]).all()  # no price: no cost
    part = priced.take([1])
    assert part.queries == ["2+2?"] and part.input_tokens.shape == (1, 2) and part.task == ["gsm8k"]
    # A scores JSON file is still one.
    (tmp_path / "s.json").write_text(json.dumps([{"question": "model_performance", "scores": {"m": 1}}]))
    assert detect_format(tmp_path / "s.json") == "scores-json"


def test_routerbench_costs_with_prices_give_answer_lengths(tmp_path):
    from router.cost import estimate_input_tokens

    df = routerbench_frame()
    path = tmp_path / "rb.pkl"
    with open(path, "wb") as f:
        pickle.dump(df, f)
    prices = {"gpt-x": {"input_price": 10.0, "output_price": 30.0}}
    t = read_eval_table([path], prices=prices)
    tokens_in = estimate_input_tokens(np.array([len(q.encode()) for q in t.queries]))
    expect = np.maximum((df["gpt-x|total_cost"].to_numpy() * 1e6 - tokens_in * 10.0) / 30.0, 0)
    np.testing.assert_allclose(t.output_tokens[:, 0], expect, rtol=1e-5)
    assert np.isnan(t.output_tokens[:, 1]).all()
    assert read_eval_table([path]).output_tokens is None


def test_long_parquet_token_columns(tmp_path):
    long = pa.table({"query_id": [1, 1, 2], "query": ["a", "a", "b"], "model": ["x", "y", "x"],
                     "score": [1.0, 0.0, 1.0], "output_tokens": [5, 50, 7], "input_tokens": [10, 11, 12]})  # fmt: skip
    pq.write_table(long, tmp_path / "t.parquet")
    t = read_eval_table([tmp_path / "t.parquet"])
    np.testing.assert_array_equal(t.output_tokens, [[5, 50], [7, np.nan]])
    np.testing.assert_array_equal(t.input_tokens, [[10, 11], [12, np.nan]])
