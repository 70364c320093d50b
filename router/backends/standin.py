"""A tiny random-weight Llama and its tokenizer, built offline, to stand in for a pool model.

Tests and CPU dry runs need real weights that vLLM and transformers can load, but nothing may be
downloaded from a model hub. The stand-in is built from a seed (same seed, same weights), in a
few seconds, and cached on disk.

Its answers are noise, but their lengths are shaped like real ones: most are short, some medium,
a few run to `max_tokens`, and they vary by prompt (see `_shape_answer_lengths`). One set of
weights serves every pool model; what makes one model terse and another verbose is an
end-of-sequence logit bias per model (`standin_eos_bias`), which the engines apply per row.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import string
import tempfile
from pathlib import Path

STANDIN_NAME = "tiny-llama-v2"  # bump when the weights change: caches are keyed by it

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# One turn per message, each closed by EOS, so a model that emits EOS ends its turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The directory only appears under its final name once complete, so these files suffice.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

_SUBJECTS = (
    "the model", "a router", "the budget", "every prompt", "the cluster", "a student",
    "the teacher", "my friend", "the engineer", "this function", "the river", "a small cat",
    "the old library", "our team", "the compiler", "a question", "the answer", "the city",
)
_VERBS = (
    "reads", "writes", "answers", "explains", "routes", "counts", "solves", "describes",
    "compares", "builds", "tests", "translates", "summarises", "measures", "improves", "finds",
)
_OBJECTS = (
    "a long story", "the math problem", "every token", "the first chapter", "a simple proof",
    "the shortest path", "three numbers", "the python code", "an email to a customer",
    "the history of Rome", "a recipe for bread", "the weather report", "a list of prime numbers",
    "the cost of each model", "a poem about the sea", "the capital of France", "the error message",
)
_ENDINGS = (
    "before lunch.", "with great care.", "in two steps.", "for the exam.", "as fast as it can.",
    "without a single mistake.", "and then stops.", "under the budget.", "in plain English.",
    "because it must.", "every morning.", "on the GPU.", "?", "!",
)
_QUESTIONS = (
    "What is {a} plus {b}?", "Write a function that returns {a} times {b}.",
    "Explain why {a} is smaller than {b}.", "How many days are in {a} weeks?",
    "Translate 'good morning' into French.", "Summarise the following text in {a} words.",
    "def add(x, y):\n    return x + y\n", "for i in range({a}):\n    print(i * {b})\n",
    "Q: Is {a} a prime number?\nA: Let me think step by step.",
)


# The end-of-sequence logit bias from the most verbose to the tersest pool model. With max_tokens=32,
# on the example prompts and on evaluation queries alike: at -3 median answers of about 20 tokens
# and a third at max_tokens; at 0 a median near 10 and a tenth at max_tokens; at 4 a median of 4
# and almost none at max_tokens.
VERBOSE_EOS_BIAS = -3.5
TERSE_EOS_BIAS = 4.0


def standin_eos_bias(model_name: str) -> float:
    """The end-of-sequence logit bias that makes pool model `model_name`'s stand-in terse or verbose.

    Fixed by the name (the same in every run and process), and spread evenly between
    VERBOSE_EOS_BIAS and TERSE_EOS_BIAS over names, so a pool of stand-ins has models whose
    answer lengths differ several-fold, as real pools do. Only for the stand-in's weights: on
    another model the same bias means something else.
    """
    digest = hashlib.sha256(model_name.encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    return round(VERBOSE_EOS_BIAS + share * (TERSE_EOS_BIAS - VERBOSE_EOS_BIAS), 4)


def default_standin_dir() -> Path:
    """Where the stand-in is cached: under $ROUTER_CACHE_DIR, else ~/.cache/router."""
    root = os.environ.get("ROUTER_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "router"
    return base / "standins" / STANDIN_NAME


def _is_built(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def _training_corpus(seed: int) -> list[str]:
    """A few thousand lines of English, code and digits, plus every printable ASCII character."""
    rng = random.Random(seed)
    lines = []
    for _ in range(4000):
        lines.append(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
            f"{rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}"
        )
        lines.append(rng.choice(_QUESTIONS).format(a=rng.randint(0, 999), b=rng.randint(0, 999)))
    # Byte-level BPE already covers every byte; this makes common ASCII runs merge sensibly.
    lines.append(string.printable)
    lines.extend(string.printable)
    return lines


def _build_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=None,
    )


def _topic_scores(tokenizer, rng) -> list[float]:
    """How much each token, met anywhere in the context, pushes an answer to end: tokens with digits
    towards short answers, whitespace and symbols (code, formulas, laid-out puzzles) towards long
    ones, word pieces a little either way; so the kind of prompt sets the length of its answers."""
    specials = set(tokenizer.all_special_ids)
    noise = rng.standard_normal(len(tokenizer))
    scores = []
    for token_id, z in enumerate(noise):
        text = tokenizer.decode([token_id]).strip()
        if token_id in specials:
            score = 0.0
        elif text and any(c.isdigit() for c in text):
            score = 1.0 + 0.3 * z
        elif not any(c.isalnum() for c in text):
            score = -1.0 + 0.3 * z
        else:
            score = 0.5 * z
        scores.append(score + _TOPIC_OFFSET)
    return scores


# The end-of-sequence logit (see _shape_answer_lengths), before the output layer is scaled by
# _LOGIT_SCALE: the offset of every topic score, which makes a bias of 0 a model of medium
# verbosity; the weights of the context's mean score and of the current token's stop value; the
# stop value of whitespace and special tokens. Chosen by measuring answer lengths on the example
# prompts and on evaluation queries.
_TOPIC_OFFSET = 0.4
_CONTEXT_WEIGHT = 1.5
_STOP_WEIGHT = 0.6
_NEVER_STOPS = -3.0
_LOGIT_SCALE = 10.0


def _shape_answer_lengths(model, tokenizer, seed: int) -> None:
    """Give the random model an end-of-sequence logit that behaves like a real model's.

    Three coordinates of the residual stream are cleared of the random weights (nothing else reads
    or writes them) and carry side channels:
    - `topic`: each token's embedding holds a score (`_topic_scores`); head 0 of the first layer,
      with zero queries, attends evenly over the whole context and writes the mean score into
      `context`, so the end-of-sequence logit depends on what the prompt (and the answer so far)
      is made of;
    - `stop`: each token's embedding holds a random value, so the logit also moves from token to
      token: every step is a fresh chance to stop, so most answers end early, some late, and a
      greedy answer caught in a loop of tokens that never stop runs to max_tokens.
    The end-of-sequence row of the output layer reads `context` and `stop` only. Whitespace and
    special tokens never stop an answer, so within standin_eos_bias's range no answer is empty
    (the prompt ends in a newline).
    """
    import numpy as np
    import torch

    hidden, head_dim = model.config.hidden_size, model.config.head_dim
    context, topic, stop = hidden - 1, hidden - 2, hidden - 3
    side = [context, topic, stop]
    scale = model.config.initializer_range  # the size of every other coordinate of an embedding
    scores = _topic_scores(tokenizer, np.random.default_rng(seed))
    stops = np.random.default_rng(seed + 1).standard_normal(len(tokenizer))
    specials = set(tokenizer.all_special_ids)
    for token_id in range(len(tokenizer)):
        if token_id in specials or not tokenizer.decode([token_id]).strip():
            stops[token_id] = _NEVER_STOPS
    n = len(tokenizer)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, side] = 0
        embed[:n, topic] = scale * torch.tensor(scores, dtype=embed.dtype)
        embed[:n, stop] = scale * torch.tensor(stops, dtype=embed.dtype)
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                reader.weight[:, side] = 0
            for writer in (attn.o_proj, mlp.down_proj):
                writer.weight[side, :] = 0
        head = model.model.layers[0].self_attn
        head.q_proj.weight[:head_dim] = 0  # equal attention scores: an even average over the context
        head.v_proj.weight[:head_dim] = 0
        head.v_proj.weight[0, topic] = 1.0
        head.o_proj.weight[:, :head_dim] = 0
        head.o_proj.weight[context, 0] = scale
        out = model.lm_head.weight
        out[:, side] = 0
        out[tokenizer.eos_token_id] = 0
        out[tokenizer.eos_token_id, context] = _CONTEXT_WEIGHT
        out[tokenizer.eos_token_id, stop] = _STOP_WEIGHT
        # Random weights give logits within about +-1: sampling would pick almost uniformly among
        # thousands of tokens and nearly never end. Sharper logits make sampled answers keep
        # close to the greedy path, and so end at similar lengths, as a real model's do.
        out *= _LOGIT_SCALE


def _build_model(
    tokenizer, *, seed: int, hidden_size: int, layers: int, heads: int, vocab_size: int,
    max_positions: int,
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # fork_rng keeps the caller's global torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _shape_answer_lengths(model, tokenizer, seed)
    return model.to(torch.float32).eval()


def build_standin(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 2048,
    max_positions: int = 4096,
) -> Path:
    """Build the stand-in model and tokenizer at `path` unless it is already there; return `path`.

    Safe to call from several processes at once: each builds in a private directory next to
    `path` and renames it into place; the first rename wins and the others discard theirs.
    """
    path = Path(path).expanduser().resolve()
    if _is_built(path):
        return path
    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
    if hidden_size // heads < 32:
        # vLLM's CPU attention backend rejects head dims below 32.
        raise ValueError(
            f"head dim {hidden_size // heads} is too small for vLLM's CPU backend: "
            "use hidden_size/heads >= 32 (e.g. hidden_size=128, heads=4)"
        )
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise FileExistsError(
            f"{path} exists but holds no complete stand-in: remove it or pick another directory"
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        tokenizer = _build_tokenizer(vocab_size, seed)
        model = _build_model(
            tokenizer, seed=seed, hidden_size=hidden_size, layers=layers, heads=heads,
            vocab_size=vocab_size, max_positions=max_positions,
        )
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        # mkdtemp makes the directory private; a shared cache should be readable like any file.
        umask = os.umask(0)
        os.umask(umask)
        for item in (tmp, *tmp.iterdir()):
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
        try:
            # rename(2) replaces an empty directory, so a fresh placeholder dir is fine.
            os.rename(tmp, path)
        except OSError:
            # Another process got there first; its build is as good as ours.
            if not _is_built(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
