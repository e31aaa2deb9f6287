# Every target creates or reuses .venv in the repository root; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: install install-bench demo test test-slow bench eval asv lint format clean gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch 2.13.0 is pinned first so pip takes the CPU build from local disk (a bare `torch` requirement
# can pull a multi-GB CUDA build); triton 3.8.0 runs the kernels on the CPU under TRITON_INTERPRET=1.
TORCH_PIN ?= torch==2.13.0 triton==3.8.0

# Re-install when the project's requirements change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -c constraints.txt $(TORCH_PIN)
	$(PIP) install -c constraints.txt -e '.[dev,kernels,embed,viz,model,server,mcp]'
	touch $@

# The peers are added without constraints.txt (pip keeps what is installed where it satisfies them; chromadb
# 1.5.9 moves opentelemetry-api 1.45.3 -> 1.45.2): with it, resolving chromadb backtracked for over 13 minutes
# (2026-12-07). `make test` on a bench venv passed with that.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -e '.[dev,kernels,embed,viz,model,server,mcp,bench]'
	touch $@

install: $(VENV)/.installed

install-bench: $(VENV)/.installed-bench

demo: install
	$(VENV)/bin/t4dm demo

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install-bench
	$(VENV)/bin/t4dm bench storage --json docs/bench-storage.json
	RUST_LOG=error $(VENV)/bin/t4dm bench search --json docs/bench-search.json
	$(VENV)/bin/t4dm bench graph --json docs/bench-graph.json

# LoCoMo evidence retrieval (the data is CC BY-NC: read from ../shared, never copied here)
LOCOMO ?= ../shared/data/locomo_dev.json
eval: install
	$(VENV)/bin/t4dm eval locomo --data $(LOCOMO) --out docs/eval-locomo.json

asv: install-bench
	$(VENV)/bin/asv machine --yes >/dev/null
	$(VENV)/bin/asv run --quick --show-stderr --python=same

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every wheel the GPU machine lacks (it has no network): the peers (SpikingJelly, flash-linear-attention),
# bitsandbytes (CPU and CUDA 13 libraries only) and T4DX's faiss-cpu, crc32c, snowballstemmer, for its
# Python 3.12, in .wheels/ (~27 MiB, git-ignored). Then, on the GPU machine:
# run(command="bash scripts/gpu_check.sh all", carry=[".wheels"]); rehearse it here first with
# `bash scripts/gpu_dryrun.sh` (the same scripts on the CPU, the image's missing packages hidden).
gpu-wheels:
	$(PYTHON) scripts/gpu_wheels.py --dest .wheels

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .asv
