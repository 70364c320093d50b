"""The generation stage on started engines: one engine per Ray actor (`EngineActor`), fed by
light Ray Data callables (`EngineFeeder`).

The engine itself is a generator of `router.backends.generators` (vLLM, transformers or an
OpenAI-compatible endpoint); a generator is also a Ray Data callable on its own, for pools whose
engines Ray Data starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from router.backends.generators import BACKENDS


class EngineActor:
    """One engine (any backend's generator) in a Ray actor of its own, started before its rows
    exist: the job creates it while encoding runs, so that the engine's start overlaps encoding,
    scoring and the budget solve instead of following them. `EngineFeeder` feeds it."""

    def __init__(self, backend: str, kwargs: dict[str, Any]) -> None:
        self._gen = BACKENDS[backend](**kwargs)
        self._ready_at = time.time()
        self._first_call: float | None = None
        self._busy = 0.0

    def ready(self) -> float:
        """When the engine became ready (seconds since the epoch)."""
        return self._ready_at

    def answer(self, batch: pa.Table) -> pa.Table:
        t0 = time.time()
        if self._first_call is None:
            self._first_call = t0
        try:
            return self._gen(batch)
        finally:
            self._busy += time.time() - t0

    def usage(self) -> dict[str, float | None]:
        """When the first batch arrived (seconds since the epoch; None: none yet) and the seconds
        spent answering since."""
        return {"first_call": self._first_call, "busy_s": self._busy}


class EngineFeeder:
    """Ray Data callable: hands each batch to one of a pool's started engines (`EngineActor`
    actors, in turn) and returns its answers. With two of these per engine, the next batch
    already waits at the engine when one finishes."""

    def __init__(self, hosts: Sequence[Any]) -> None:
        import random

        if not hosts:
            raise ValueError("hosts is empty: give the started engine actors")
        self._hosts = list(hosts)
        self._next = random.randrange(len(self._hosts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        host = self._hosts[self._next % len(self._hosts)]
        self._next += 1
        return ray.get(host.answer.remote(batch))
