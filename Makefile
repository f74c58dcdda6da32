# Everything a fresh CPU machine needs: `make test` builds the venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DEMO   ?= runs/demo

.PHONY: test demo bench sweep venv clean

venv: $(STAMP)

# torch is installed first and pinned: on these machines torch==2.13.0 resolves to a local CPU
# build, while letting megatron-core pull torch in would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q megatron-core==0.16.1 sentencepiece==0.2.3 numpy pytest matplotlib==3.10.7
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The CPU demo: a small real-text corpus (cached in data/), a tiny GPT trained with linupper on 2
# processes (data parallel), then the per-domain summary and $(DEMO)/run.png. Starts afresh.
demo: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	rm -rf $(DEMO)
	mkdir -p $(DEMO)
	PYTHON=$(PY) DATA=data/small OUT=$(DEMO) GPUS_PER_NODE=2 CONFIG=examples/configs/tiny_cpu.sh \
		bash examples/pretrain_gpt_rw.sh --log-sample-weights 2>&1 | tee $(DEMO)/train.log
	$(PY) examples/plot_run.py $(DEMO)

# Every number in docs/results.md. `bench`: a few minutes. `sweep`: about 70 minutes on 2 cores,
# resumable (finished runs are skipped, an interrupted one continues from its checkpoint).
bench: $(STAMP)
	$(PY) -m benchmarks.layout_equivalence
	$(PY) -m benchmarks.toy_regression
	$(PY) -m benchmarks.weights_cost
	$(PY) -m benchmarks.overhead

sweep: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	$(PY) -m benchmarks.noisy_corpus --base data/small --out data/small_noisy
	$(PY) -m benchmarks.gpt_sweep
	$(PY) -m benchmarks.gpt_sweep_report

clean:
	rm -rf $(VENV) .pytest_cache
