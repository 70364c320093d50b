"""Prompt tokens as a model's own tokenizer counts them, with no Ray.

The plan prices every (row, model) pair; counting every row with every model family's tokenizer
would cost more than routing itself. So each family's tokenizer counts a sample of the job's
prompts rendered as the engine renders them (the chat template's one user turn), and a
calibration fitted on the sample turns each row's UTF-8 length into that family's tokens:
`ceil(per_byte * bytes) + template`. Where no tokenizer is at hand (an endpoint's model, weights
not on this machine), the plan falls back to the UTF-8 estimate and says so.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def render_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as one user turn, the way an engine with this tokenizer sees it."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        # The template already holds BOS and the role markers: adding them again would give the
        # model a prompt it was never trained on.
        encoded = tokenizer(texts, add_special_tokens=False)
    else:
        encoded = tokenizer(list(prompts))
    return [list(ids) for ids in encoded["input_ids"]]


# Tokenizer classes that are the plain `tokenizer.json` with nothing of their own: loaded without
# `AutoTokenizer`, whose import pulls in torch and scikit-learn (3.5 s of the plan's start on a
# 2-core machine, against 0.6 s).
PLAIN_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(weights: str) -> Any | None:
    """The tokenizer of `weights` (a local folder, or a Hugging Face id already in the local cache),
    or None when it is not at hand here. Nothing is downloaded."""
    try:
        if _plain_tokenizer(weights):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(weights, local_files_only=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(weights, local_files_only=True)
    except Exception:  # not installed, not cached, not a tokenizer: the plan falls back and says so
        return None


def _plain_tokenizer(weights: str) -> bool:
    """Whether `weights` is a folder whose tokenizer is its `tokenizer.json` alone (PLAIN_TOKENIZERS)."""
    config = os.path.join(weights, "tokenizer_config.json")
    if not (os.path.isfile(config) and os.path.isfile(os.path.join(weights, "tokenizer.json"))):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("tokenizer_class") in PLAIN_TOKENIZERS


@dataclass(frozen=True)
class PromptCalibration:
    """One model family's prompt tokens from a prompt's UTF-8 length, fitted on counted prompts."""

    per_byte: float
    """Tokens per UTF-8 byte of the prompt text."""
    template: float
    """Tokens the chat template adds around a prompt (counted on an empty one)."""
    rows: int
    """Prompts the fit was made on."""
    row_error: float
    """Mean |predicted - counted| / counted over those prompts."""
    total_error: float
    """(predicted - counted) / counted of their sum."""
    source: str
    """What counted them (the tokenizer's weights)."""

    def tokens(self, utf8_bytes: np.ndarray) -> np.ndarray:
        """Predicted prompt tokens of rows of these UTF-8 lengths."""
        return np.ceil(np.asarray(utf8_bytes, np.float64) * self.per_byte) + self.template

    def describe(self) -> str:
        return (f"tokenizer of {self.source} (calibrated on {self.rows} prompts: "
                f"{self.row_error:.1%} per prompt, {self.total_error:+.1%} in total)")  # fmt: skip


def calibrate(tokenizer: Any, prompts: Sequence[str], source: str) -> PromptCalibration | None:
    """Fit a family's calibration on `prompts` (a sample of the job's); None without prompts."""
    prompts = [p for p in prompts if p]
    if not prompts:
        return None
    template = float(len(render_ids(tokenizer, [""])[0]))
    counted = np.array([len(ids) for ids in render_ids(tokenizer, prompts)], np.float64)
    utf8 = np.array([len(p.encode()) for p in prompts], np.float64)
    # Tokens per byte of the whole sample (a ratio of sums, so long prompts weigh by their tokens:
    # the spend is in tokens).
    per_byte = max(float((counted - template).sum()) / max(float(utf8.sum()), 1.0), 0.0)
    fit = PromptCalibration(per_byte, template, len(prompts), 0.0, 0.0, source)
    predicted = fit.tokens(utf8)
    row_error = float(np.mean(np.abs(predicted - counted) / np.maximum(counted, 1.0)))
    total = float(counted.sum())
    total_error = (float(predicted.sum()) - total) / total if total else math.nan
    return PromptCalibration(per_byte, template, len(prompts), row_error, total_error, source)
