"""A tiny random-weight Llama and its tokenizer, built offline, to stand in for a pool model.

Tests and CPU dry runs need real weights that vLLM and transformers can load, but nothing may be
downloaded from a model hub. The stand-in is built from a seed (same seed, same weights), in a
few seconds, and cached on disk.
"""

from __future__ import annotations

import os
import random
import shutil
import string
import tempfile
from pathlib import Path

STANDIN_NAME = "tiny-llama-v1"

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
