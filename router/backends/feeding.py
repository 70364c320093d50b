"""vLLM's engine fed continuously: any number of calls at once, one thread stepping the engine.

`vllm.LLM.generate` returns only when its longest answer is done. With real answer lengths (2 to
500+ tokens) the running batch shrinks, as a call drains, to a few long answers, and the device
idles until the next call starts. `EngineLoop` instead owns the engine in one thread of its own:
calls from any thread hand it their requests (`submit`), it adds them to the engine between two
steps and steps the engine while any request is unfinished, and each request's future is resolved
the step it finishes. With the next call's requests already waiting in the engine, the running
batch is refilled as answers finish, as one `LLM.generate` over all the rows would be.

An engine that computes in this process (vLLM's CPU build) also takes each call's own work (its
chat template and tokenizing) into the loop's thread between two steps (`call`): run beside the
steps in the calls' threads, that work took the cores from the engine's compute threads, which
wait for each other at every parallel region, and cost the engine about twice its own time
(bench/feeding.py: 89% of one `LLM.generate` against 94%, same runs).

Only the loop's thread touches the engine (vLLM's `LLMEngine` is not thread-safe), and it builds
it too: an engine that runs its model in this process (vLLM's CPU build) sets up its compute
threads for the thread that builds it, and stepping it from another thread ran 1.2-1.6x slower here.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Answer:
    """One finished request: vLLM's output and the engine seconds charged to it."""

    output: Any
    """vLLM's `RequestOutput` (finished)."""
    engine_s: float
    """Its share of the engine's steps: each step's seconds split evenly among the requests the
    engine was running then (the oldest unfinished ones, up to its batch: vLLM schedules first come
    first served). Over all requests these add up to the engine's busy time."""


@dataclass
class _Flight:
    future: Future
    engine_s: float = 0.0


@dataclass
class _Call:
    prompts: list[Any]
    params: list[Any]
    futures: list[Future]


class EngineClosed(RuntimeError):
    """The loop was closed (or its engine died) before the request finished."""


class EngineLoop:
    """Feeds one `vllm.LLM`, built by `build` in the loop's thread, from any thread; see the
    module's docstring. Raises what `build` raised. `close` ends the thread."""

    def __init__(self, build: Callable[[], Any], name: str = "vllm-engine-loop") -> None:
        self._cond = threading.Condition()
        self._inbox: list[_Call] = []
        self._chores: list[tuple[Callable[[], Any], Future]] = []
        # Insertion order is arrival order: the engine runs the oldest unfinished requests.
        self._flying: dict[str, _Flight] = {}
        self._dead: BaseException | None = None
        self._closing = False
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(build,), name=name, daemon=True)
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        self.llm: Any
        """The `vllm.LLM` the loop drives (call its methods from the loop's thread only, but for
        those that do not touch the engine: `get_tokenizer`, its configs)."""
        scheduler = getattr(self.llm.llm_engine.vllm_config, "scheduler_config", None)
        self.max_running = int(getattr(scheduler, "max_num_seqs", 0) or 0) or 256
        """How many requests the engine runs at once (vLLM's max_num_seqs)."""

    def submit(self, prompts: list[Any], params: list[Any]) -> list[Future]:
        """Queue requests (vLLM prompts, one `SamplingParams` each); one future per request, which
        resolves to its `Answer` or raises what the engine raised. A call the engine rejects (an
        invalid request among them) fails all its futures, and none of its requests runs."""
        call = _Call(list(prompts), list(params), [Future() for _ in prompts])
        with self._cond:
            if self._dead is not None:
                raise self._dead
            if self._closing:
                raise EngineClosed("the engine loop is closed")
            self._inbox.append(call)
            self._cond.notify()
        return call.futures

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the loop's thread between two engine steps and return what it returns (or
        raise what it raised). For the per-call work of an engine that computes in this process
        (vLLM's CPU build): run beside the engine's steps, in threads of their own, that work took
        the cores from the engine's compute threads, which then wait for each other at every
        parallel region; between steps it costs the engine only its own time, as in one
        `LLM.generate`, and calls still overlap their waits for answers."""
        done: Future = Future()
        with self._cond:
            if self._dead is not None:
                raise self._dead
            if self._closing:
                raise EngineClosed("the engine loop is closed")
            self._chores.append((fn, done))
            self._cond.notify()
        return done.result()

    def generate(self, prompts: list[Any], params: list[Any]) -> list[Answer]:
        """`submit`, then wait for every answer (in order)."""
        futures = self.submit(prompts, params)
        wait(futures)  # woken once, when the last is done (not once per answer)
        return [f.result() for f in futures]

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop: requests still unfinished fail with `EngineClosed`."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop's thread

    def _serve(self, build: Callable[[], Any]) -> None:
        try:
            self.llm = build()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            self._build_error = exc
            return
        finally:
            self._built.set()
        engine = self.llm.llm_engine
        while True:
            with self._cond:
                while not self._inbox and not self._chores and not self._flying and not self._closing:
                    self._cond.wait()
                if self._closing:
                    break
                calls, self._inbox = self._inbox, []
                chores, self._chores = self._chores, []
            for fn, done in chores:
                try:
                    done.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    done.set_exception(exc)
            for call in calls:
                self._add(call)
            if not self._flying:
                continue
            began = time.perf_counter()
            try:
                outputs = engine.step()
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                if type(exc).__name__ == "EngineDeadError" or not self._recover(exc):
                    self._fail_all(exc)
                    return
                continue
            seconds = time.perf_counter() - began
            running = min(len(self._flying), self.max_running)
            share = seconds / running
            for k, flight in enumerate(self._flying.values()):
                if k == running:
                    break
                flight.engine_s += share
            for out in outputs:
                if not out.finished:
                    continue
                flight = self._flying.pop(out.request_id, None)
                if flight is not None:
                    flight.future.set_result(Answer(out, flight.engine_s))
            if not outputs and not engine.has_unfinished_requests():
                # Nothing left in the engine, yet requests wait for answers: they were dropped.
                self._fail_flying(EngineClosed("the engine dropped these requests unanswered"))
        self._fail_all(EngineClosed("the engine loop was closed before these requests finished"))

    def _add(self, call: _Call) -> None:
        try:
            ids = self.llm.enqueue(call.prompts, call.params, use_tqdm=False)
        except BaseException as exc:  # noqa: BLE001 - vLLM added none of the call's requests
            for f in call.futures:
                f.set_exception(exc)
            return
        for internal, future in zip(ids, call.futures):
            # Answers carry the id the request was given (a counter); vLLM's own id appends a
            # random suffix to it.
            self._flying[internal.split("-", 1)[0]] = _Flight(future)

    def _recover(self, exc: BaseException) -> bool:
        """A step raised without killing the engine: abort what was in flight and fail it, so that
        the callers can retry their rows apart (and find the one at fault). False: could not."""
        try:
            self.llm.llm_engine.abort_request(list(self._flying))
        except Exception:  # noqa: BLE001
            return False
        self._fail_flying(exc)
        return True

    def _fail_flying(self, exc: BaseException) -> None:
        flying, self._flying = self._flying, {}
        for flight in flying.values():
            flight.future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            self._dead = self._dead or exc
            calls, self._inbox = self._inbox, []
            chores, self._chores = self._chores, []
        self._fail_flying(exc)
        for _, done in chores:
            done.set_exception(exc)
        for call in calls:
            for f in call.futures:
                if not f.done():
                    f.set_exception(exc)
