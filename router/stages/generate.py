"""The generation stage on started engines: one engine per Ray actor (`EngineActor`), fed by
light Ray Data callables (`EngineFeeder`).

The engine itself is a generator of `router.backends.generators` (vLLM, transformers or an
OpenAI-compatible endpoint); a generator is also a Ray Data callable on its own, for pools whose
engines Ray Data starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from router.backends.generators import BACKENDS


class EngineActor:
    """One engine (any backend's generator) in a Ray actor of its own, started before its rows
    exist: the job creates it while encoding runs, so that the engine's start overlaps encoding,
    scoring and the budget solve instead of following them. `EngineFeeder` feeds it. Create it with
    `max_concurrency` set to the calls it runs at once (`router.job.engines.engine_calls_in_flight`):
    their rows share the engine's running batch."""

    def __init__(self, backend: str, kwargs: dict[str, Any]) -> None:
        self._gen = BACKENDS[backend](**kwargs)
        self._ready_at = time.time()
        self._first_call: float | None = None
        self._busy = 0.0
        self._lock = threading.Lock()
        self._answering = 0
        self._since = 0.0

    def ready(self) -> float:
        """When the engine became ready (seconds since the epoch)."""
        return self._ready_at

    def answer(self, batch: pa.Table) -> pa.Table:
        with self._lock:
            now = time.time()
            if self._first_call is None:
                self._first_call = now
            if self._answering == 0:
                self._since = now
            self._answering += 1
        try:
            return self._gen(batch)
        finally:
            with self._lock:  # busy: while any call runs (calls at once are counted once)
                self._answering -= 1
                if self._answering == 0:
                    self._busy += time.time() - self._since

    def usage(self) -> dict[str, float | None]:
        """When the first batch arrived (seconds since the epoch; None: none yet) and the seconds
        spent answering since."""
        with self._lock:
            busy = self._busy + (time.time() - self._since if self._answering else 0.0)
        return {"first_call": self._first_call, "busy_s": busy}


class EngineFeeder:
    """Ray Data callable: hands each batch to one of a pool's started engines (`EngineActor`
    actors) and returns its answers. Run several calls at once (threads): each goes to the engine
    this feeder has the fewest batches at, so that every engine holds its next batches while it
    answers."""

    def __init__(self, hosts: Sequence[Any]) -> None:
        import random

        if not hosts:
            raise ValueError("hosts is empty: give the started engine actors")
        self._hosts = list(hosts)
        self._load = [0] * len(self._hosts)
        self._next = random.randrange(len(self._hosts))  # feeders start at different engines
        self._lock = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        with self._lock:
            n = len(self._hosts)
            at = min(((self._next + k) % n for k in range(n)), key=lambda i: self._load[i])
            self._next = at + 1
            self._load[at] += 1
        try:
            return ray.get(self._hosts[at].answer.remote(batch))
        finally:
            with self._lock:
                self._load[at] -= 1
