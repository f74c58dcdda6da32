# Everything a fresh CPU machine needs: `make test` builds the venv on first use.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test venv clean

venv: $(STAMP)

# torch is installed first and pinned: on these machines torch==2.13.0 resolves to a local CPU
# build, while letting megatron-core pull torch in would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q megatron-core==0.16.1 sentencepiece==0.2.3 numpy pytest
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
