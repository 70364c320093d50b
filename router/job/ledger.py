"""The hard budget's ledger as one Ray actor that every engine of the job asks before it generates
(`router.budget.SpendLedger` holds the arithmetic; `router.backends.generators.Generator` asks).

An engine whose rows do not fit now waits at the actor while other engines hold reservations (their
calls will settle and free them); when nothing is in flight and a row still does not fit, it never
will (the budget left only shrinks), and it is refused. So the job spends up to its budget instead of
refusing rows that would have fit a moment later.

An engine whose process dies cannot settle its calls: when Ray starts it again (same actor id),
its generator's first act is `LedgerClient.restarted`, which frees what the dead one held (its
calls died with it and are retried; nothing of them was written). A wait is bounded all the same
(`WAIT_S`), so that a reservation no one will free cannot stall the job forever: a row whose wait
ran out is refused, which keeps the guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget import SpendLedger

# Longest an engine waits for others' reservations to settle before its rows are refused.
WAIT_S = 900.0


class _LedgerActor:
    """Async actor: admits and settles one call at a time; waiting admits yield to settles."""

    def __init__(self, budget: float) -> None:
        import asyncio

        self.ledger = SpendLedger(budget)
        self.changed = asyncio.Condition()

    async def admit(self, worst: np.ndarray, holder: str | None) -> tuple[int, np.ndarray]:
        import asyncio

        async with self.changed:
            while True:
                ticket, ok = self.ledger.admit(worst, holder)
                if ok.any() or not self.ledger.in_flight:
                    self.ledger.refused += 0 if ok.any() else ok.size
                    return ticket, ok
                try:
                    await asyncio.wait_for(self.changed.wait(), WAIT_S)
                except asyncio.TimeoutError:
                    return -1, np.zeros(len(worst), bool)

    async def settle(self, ticket: int, actual: float) -> None:
        async with self.changed:
            self.ledger.settle(ticket, actual)
            self.changed.notify_all()

    async def release(self, holder: str) -> int:
        async with self.changed:
            freed = self.ledger.release(holder)
            self.changed.notify_all()
            return freed

    async def set_limit(self, limit: float) -> None:
        async with self.changed:
            self.ledger.limit = limit
            self.changed.notify_all()

    async def state(self) -> dict[str, float]:
        led = self.ledger
        return {"budget": led.budget, "spent": led.spent, "reserved": led.reserved}


@dataclass(frozen=True)
class LedgerClient:
    """What an engine holds: the actor's handle, called as `SpendLedger` is (the generators take it
    as their `ledger`)."""

    actor: Any

    def admit(self, worst: np.ndarray) -> tuple[int, np.ndarray]:
        import ray

        return ray.get(self.actor.admit.remote(np.asarray(worst, np.float64), _holder()))

    def restarted(self) -> None:
        """Called by an engine as it starts: frees what an earlier life of the same actor held."""
        import ray

        holder = _holder()
        if holder is not None:
            ray.get(self.actor.release.remote(holder))

    def settle(self, ticket: int, actual: float) -> None:
        import ray

        ray.get(self.actor.settle.remote(ticket, float(actual)))

    def set_limit(self, limit: float | None) -> None:
        """Admit rows only while spend and reservations stay under `limit` too (None: the budget only)."""
        import ray

        ray.get(self.actor.set_limit.remote(float("inf") if limit is None else float(limit)))

    def state(self) -> dict[str, float]:
        """Budget, spent and reserved, USD."""
        import ray

        return ray.get(self.actor.state.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def _holder() -> str | None:
    """This engine's actor id: it stays the same when Ray starts the actor again (None: not an actor)."""
    import ray

    return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None


def start_ledger(budget: float) -> LedgerClient:
    """A ledger actor for `budget` USD (what is left of the job's budget; it asks for no CPU)."""
    import ray

    return LedgerClient(ray.remote(num_cpus=0)(_LedgerActor).options(max_concurrency=1000).remote(budget))
