"""Prompt tokens as each model family's own tokenizer counts them: a calibration fitted on a sample
of the job's prompts prices every row, the UTF-8 estimate only where no tokenizer is at hand, in
both budget modes (`hard` mode keeps its guarantee while answering, not in the plan)."""

import json
from pathlib import Path

import numpy as np
import pytest

from router.backends.standin import build_standin
from router.backends.tokens import calibrate, load_tokenizer, render_ids
from router.config import load_config
from router.cost import estimate_input_tokens
from router.stages.route import PoolArrays

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "jobs/configs/local.yaml")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(build_standin(tmp_path_factory.mktemp("standin") / "tiny-llama")))


def prompts() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "examples/prompts.jsonl").read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip()]


def test_a_calibration_fitted_on_half_the_prompts_prices_the_other_half(tokenizer):
    texts = prompts()
    fit = calibrate(tokenizer, texts[::2], "stand-in")
    held_out = texts[1::2]
    counted = np.array([len(ids) for ids in render_ids(tokenizer, held_out)], np.float64)
    predicted = fit.tokens(np.array([len(t.encode()) for t in held_out]))
    assert abs(predicted.sum() - counted.sum()) / counted.sum() < 0.05
    # The template's own tokens are counted, not guessed, and the per-row error is reported.
    assert fit.template == len(render_ids(tokenizer, [""])[0]) and 0 <= fit.row_error < 0.5
    assert "calibrated on" in fit.describe()


def test_a_plain_tokenizer_counts_as_auto_tokenizer_does_without_importing_torch(tmp_path):
    """The plan's tokenizer of a folder whose tokenizer is its tokenizer.json alone is loaded without
    AutoTokenizer (whose import pulls in torch), and counts the same tokens."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    folder = str(build_standin(tmp_path / "tiny-llama"))
    code = ("import sys, json; from router.backends.tokens import load_tokenizer, render_ids;"
            f"t = load_tokenizer({folder!r}); ids = render_ids(t, json.loads(sys.argv[1]));"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'ids': ids}))")  # fmt: skip
    texts = prompts()[:20] + ["", "naïve café 東京 🙂"]
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["ids"] == render_ids(AutoTokenizer.from_pretrained(folder, local_files_only=True), texts)


def test_no_tokenizer_at_hand_is_none_and_nothing_is_downloaded(tmp_path):
    assert load_tokenizer(str(tmp_path / "no-weights-here")) is None
    assert load_tokenizer("an-org/a-model-that-is-not-in-the-cache") is None


def test_the_plan_prices_each_family_by_its_calibration_in_either_mode(tokenizer):
    fit = calibrate(tokenizer, prompts(), "stand-in")
    cfg = load_config(CONFIG, ["input=x", "output=y", "budget.mode=expected"])
    first, *rest = cfg.model_names
    utf8 = np.array([10, 400, 3000])
    pool = PoolArrays.from_config(cfg, {first: fit})
    tokens = pool.prompt_tokens(utf8)
    assert tokens.shape == (3, len(cfg.models))
    np.testing.assert_array_equal(tokens[:, 0], fit.tokens(utf8))
    for j in range(1, len(rest) + 1):  # no calibration: the UTF-8 estimate
        np.testing.assert_array_equal(tokens[:, j], estimate_input_tokens(utf8))
    hard = load_config(CONFIG, ["input=x", "output=y", "budget.mode=hard"])
    np.testing.assert_array_equal(PoolArrays.from_config(hard, {first: fit}).prompt_tokens(utf8), tokens)


def test_per_model_prompt_tokens_price_and_fence_each_model_on_its_own():
    from router.cost import cost_matrix

    tokens = np.array([[100.0, 300.0], [5000.0, 900.0]])  # the second prompt outruns model 0 only
    cost = cost_matrix(tokens, np.array([10.0, 10.0]), np.array([1.0, 2.0]), np.array([3.0, 4.0]),
                       np.array([1000, 2000]))  # fmt: skip
    np.testing.assert_allclose(cost[0], [(100 * 1 + 10 * 3) * 1e-6, (300 * 2 + 10 * 4) * 1e-6])
    assert np.isnan(cost[1, 0]) and cost[1, 1] == pytest.approx((900 * 2 + 10 * 4) * 1e-6)
