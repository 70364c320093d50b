"""Grading a model's answers against gold answers, to profile a model that has no evaluation data.

Index sets like `queries_*.jsonl` (task_name, query, ground_truth, metric, choices) name a metric
per row. Supported: multiple choice (`em_mc`), number match (`MATH`, `GSM8K`), token F1 (`f1_score`),
concept coverage (`commongen_coverage`) and plain exact match (`em`). Code tasks (`code_eval`)
need a sandbox to run tests and are skipped, and counted.
"""

from __future__ import annotations

import re
import string
from collections import Counter

SKIPPED_METRICS = ("code_eval",)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace("$", ""))
    for raw in reversed(found):
        try:
            return float(raw.replace(",", "").rstrip("."))
        except ValueError:
            continue
    return None


def number_match(response: str, gold: str) -> float:
    if "####" in gold:  # GSM8K solutions end with '#### <answer>'
        gold = gold.split("####")[-1]
    boxed = re.findall(r"\\boxed\{([^}]*)\}", gold)
    if boxed:
        gold = boxed[-1]
    g, r = _last_number(gold), _last_number(response)
    if g is None:
        return float(_normalize(response).endswith(_normalize(gold)))
    return float(r is not None and abs(r - g) <= 1e-6 * max(1.0, abs(g)))


def multiple_choice(response: str, gold: str) -> float:
    """The first standalone option letter (A-J) in the answer, against the gold letter."""
    m = re.search(r"\b([A-J])\b", response.strip().upper())
    return float(m is not None and m.group(1) == gold.strip().upper()[:1])


def token_f1(response: str, gold: str) -> float:
    r, g = _normalize(response).split(), _normalize(gold).split()
    common = sum((Counter(r) & Counter(g)).values())
    if not r or not g or not common:
        return 0.0
    precision, recall = common / len(r), common / len(g)
    return 2 * precision * recall / (precision + recall)


def coverage(response: str, gold: str) -> float:
    concepts = [c.strip().lower() for c in gold.split(",") if c.strip()]
    words = set(_normalize(response).split())
    return sum(c in words for c in concepts) / len(concepts) if concepts else 0.0


GRADERS = {
    "em_mc": multiple_choice,
    "MATH": number_match,
    "GSM8K": number_match,
    "f1_score": token_f1,
    "commongen_coverage": coverage,
    "em": lambda r, g: float(_normalize(r) == _normalize(g)),
}


def grade(response: str | None, gold: str, metric: str) -> float | None:
    """Score in [0, 1]; None for a metric that is skipped or unknown (the caller counts them)."""
    grader = GRADERS.get(metric)
    if grader is None:
        return None
    return grader(response or "", str(gold))
