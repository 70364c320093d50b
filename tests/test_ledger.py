"""The hard budget while answering: whatever the answers do, the actual spend never exceeds the
budget, and rows are refused only when they could never fit."""

import numpy as np
import pytest

from router.budget import SpendLedger
from router.cost import token_usd

pytestmark = pytest.mark.timeout(120)

ANSWERS = {
    "every answer to max_tokens": lambda rng, worst_out, wave: worst_out,
    "every answer one token": lambda rng, worst_out, wave: np.ones_like(worst_out),
    "lengths that flip between waves": lambda rng, worst_out, wave: worst_out if wave % 2 else np.ones_like(worst_out),
    "random lengths": lambda rng, worst_out, wave: rng.integers(1, worst_out + 1),
}


def drive(rng, budget, answers, engines=3, batches=40, batch=16):
    """Engines ask the ledger, generate what it admits, and settle later, interleaved at random (a
    call stays in flight while others ask); returns the ledger, the spend seen at every step, and the
    rows refused."""
    ledger = SpendLedger(budget)
    in_flight = []  # (ticket, actual cost)
    seen, refused = [], 0
    for step in range(batches):
        prompt = rng.integers(5, 400, batch)
        max_tokens = rng.choice([8, 64, 512], batch)
        price_in, price_out = rng.choice([0.1, 1.0, 15.0], 2)
        worst = token_usd(prompt, max_tokens, price_in, price_out)
        pending = np.arange(batch)
        while pending.size:
            ticket, ok = ledger.admit(worst[pending])
            if not ok.any():
                if not ledger.in_flight:
                    refused += pending.size  # nothing will free room: they never fit
                    break
                t, a = in_flight.pop(rng.integers(len(in_flight)))  # wait: another call settles
                ledger.settle(t, a)
                seen.append(ledger.spent)
                continue
            rows = pending[ok]
            out = answers(rng, max_tokens[rows], step // 8)
            assert (out <= max_tokens[rows]).all()
            in_flight.append((ticket, float(token_usd(prompt[rows], out, price_in, price_out).sum())))
            pending = pending[~ok]
            while len(in_flight) >= engines:
                t, a = in_flight.pop(rng.integers(len(in_flight)))
                ledger.settle(t, a)
                seen.append(ledger.spent)
    for t, a in in_flight:
        ledger.settle(t, a)
        seen.append(ledger.spent)
    return ledger, seen, refused


@pytest.mark.parametrize("answers", list(ANSWERS), ids=list(ANSWERS))
def test_the_actual_spend_never_exceeds_the_budget(answers):
    rng = np.random.default_rng(7)
    for budget in (1e-4, 1e-3, 1e-2, 0.05, 1.0):
        ledger, seen, refused = drive(rng, budget, ANSWERS[answers])
        assert max(seen) <= budget
        assert ledger.reserved == 0 and not ledger.in_flight


def test_rows_are_refused_only_when_they_could_never_fit():
    rng = np.random.default_rng(3)
    ledger, _, refused = drive(rng, 2e-3, ANSWERS["every answer to max_tokens"])
    assert refused > 0  # the budget binds
    # Answers at their worst case: what was left when rows were refused is less than any row's worst case.
    assert ledger.budget - ledger.spent < token_usd(400, 512, 15.0, 15.0)


def test_a_batch_is_admitted_row_by_row_and_a_settled_call_frees_its_reservation():
    ledger = SpendLedger(10.0)
    ticket, ok = ledger.admit(np.array([4.0, 7.0, 3.0]))
    assert ok.tolist() == [True, False, True]  # the 7 does not fit after the 4; the 3 still does
    assert ledger.reserved == 7.0
    again, none = ledger.admit(np.array([5.0]))
    assert again == -1 and not none.any()
    ledger.settle(ticket, 2.5)  # answered for less than the worst case
    assert ledger.spent == 2.5 and ledger.reserved == 0.0
    _, ok = ledger.admit(np.array([7.0]))
    assert ok.tolist() == [True]
    with pytest.raises(ValueError):
        ledger.admit(np.array([np.nan]))


def test_an_engine_started_again_frees_what_its_dead_life_held():
    ledger = SpendLedger(1.0)
    dead, _ = ledger.admit(np.array([0.6]), holder="engine-a")
    ledger.admit(np.array([0.3]), holder="engine-b")
    assert not ledger.admit(np.array([0.5]), holder="engine-b")[1].any()
    assert ledger.release("engine-a") == 1  # nothing of its call was written: nothing spent
    assert ledger.spent == 0.0 and ledger.reserved == pytest.approx(0.3)
    assert ledger.admit(np.array([0.5]), holder="engine-b")[1].all()
    ledger.settle(dead, 0.6)  # should the dead life settle after all, what it spent counts, once
    assert ledger.spent == pytest.approx(0.6) and ledger.reserved == pytest.approx(0.8)
