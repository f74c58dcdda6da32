# Everything a fresh CPU machine needs: `make test` builds the venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# The primary stack is what Megatron users run today: Python 3.12, megatron-core 0.19.2.
# A pyenv shim named python3.12 may exist without 3.12 being selected: scripts/find_python.sh
# tries the shim, then pyenv's installed versions.
PYTHON ?= $(shell bash scripts/find_python.sh 3.12)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= 2.14.1
MCORE  ?= 0.19.2

# The oldest megatron-core the project supports, for the tests that prove the hook
# (`make test-compat`): Python 3.11, megatron-core 0.16.1.
COMPAT_PYTHON ?= $(shell bash scripts/find_python.sh 3.11)
COMPAT_VENV   ?= .venv-compat
COMPAT_PY     := $(COMPAT_VENV)/bin/python
COMPAT_STAMP  := $(COMPAT_VENV)/.installed
COMPAT_TORCH  ?= 2.13.0
COMPAT_MCORE  ?= 0.16.1

# The releases between them (`make test-mcore`): each in a small venv on top of the primary one
# (its own site-packages hold only that megatron-core; a .pth file adds .venv's packages after
# it), so no second torch is downloaded.
MCORE_BETWEEN ?= 0.17.1 0.18.2

# Everything but torch and megatron-core: the suite, the demo's plots, and what
# megatron.training needs (yaml; psutil for --save) when a Megatron-LM checkout is run.
EXTRAS := sentencepiece==0.2.3 numpy pytest matplotlib==3.10.7 pyyaml psutil tensorboard
# Only in the primary venv, which runs the Megatron-LM fixtures (tests/test_megatron_lm.py):
# core_v0.16.1's megatron.training imports six, regex and pydantic.
MEGATRON_LM_EXTRAS := six regex pydantic

DEMO   ?= runs/demo

.PHONY: test test-compat test-mcore demo bench sweep rw-eval gpu-check docker-test venv venv-compat clean

venv: $(STAMP)
venv-compat: $(COMPAT_STAMP)

# torch is installed first and pinned, so that megatron-core does not pick another build. On
# Python 3.12 PyPI's torch is a CUDA build (about 3 GB downloaded, 5.6 GB venv) that also runs on
# a CPU; on Python 3.11 torch 2.13.0 resolves to a CPU build on these machines.
define make_venv
	@test -n "$(1)" || { echo "no $(2) found (set $(3)=/path/to/python$(2))" >&2; exit 1; }
	rm -rf $(4)
	$(1) -m venv $(4)
	$(4)/bin/python -m pip install -q --upgrade pip
	$(4)/bin/python -m pip install -q torch==$(5)
	$(4)/bin/python -m pip install -q megatron-core==$(6) $(EXTRAS) $(7)
	$(4)/bin/python -m pip install -q --no-deps -e .
	touch $(4)/.installed
endef

$(STAMP): pyproject.toml
	$(call make_venv,$(PYTHON),python3.12,PYTHON,$(VENV),$(TORCH),$(MCORE),$(MEGATRON_LM_EXTRAS))

$(COMPAT_STAMP): pyproject.toml
	$(call make_venv,$(COMPAT_PYTHON),python3.11,COMPAT_PYTHON,$(COMPAT_VENV),$(COMPAT_TORCH),$(COMPAT_MCORE))

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

# The tests marked `compat` (uniform bitwise vs the baseline, layout equivalence, multi-node rank
# mapping, the compat layer) on megatron-core 0.16.1.
test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -m pytest -q -m compat tests

# The same tests on every megatron-core in MCORE_BETWEEN (Python 3.12). The Megatron-LM fixture
# tests bring their own megatron.core and already ran under `make test`.
test-mcore: $(STAMP)
	@set -e; site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	for v in $(MCORE_BETWEEN); do \
		venv=.venv-mcore-$$v; \
		if [ ! -f $$venv/.installed ]; then \
			rm -rf $$venv; \
			$(PYTHON) -m venv $$venv; \
			echo "$$(cd $$site && pwd)" > $$($$venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_primary_venv.pth; \
			$$venv/bin/python -m pip install -q --no-deps megatron-core==$$v; \
			touch $$venv/.installed; \
		fi; \
		$$venv/bin/python -c 'import megatron.core as m, sys; print("megatron-core", m.__version__, "from", m.__file__); sys.exit(m.__version__.split("+")[0] != sys.argv[1])' $$v; \
		$$venv/bin/python -m pytest -q -m compat --ignore=tests/test_megatron_lm.py tests; \
	done

# The CPU demo: a small real-text corpus (cached in data/), a tiny GPT trained with linupper on 2
# processes (data parallel), then the per-domain summary and $(DEMO)/run.png. Starts afresh.
demo: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	rm -rf $(DEMO)
	mkdir -p $(DEMO)
	PYTHON=$(PY) DATA=data/small OUT=$(DEMO) GPUS_PER_NODE=2 CONFIG=examples/configs/tiny_cpu.sh \
		bash examples/pretrain_gpt_rw.sh 2>&1 | tee $(DEMO)/train.log
	$(PY) examples/plot_run.py $(DEMO)

# Every number in docs/results.md sections 1-4 (section 5: `rw-eval` below). `bench`: about 15
# minutes on 2 cores. `sweep`: about 70 minutes, resumable (finished runs are skipped, an
# interrupted one continues from its checkpoint).
bench: $(STAMP)
	$(PY) -m benchmarks.layout_equivalence
	$(PY) -m benchmarks.quality.toy_regression
	$(PY) -m benchmarks.cost.weights_cost
	$(PY) -m benchmarks.cost.overhead
	$(PY) -m benchmarks.cost.megatron_lm_overhead
	$(PY) -m benchmarks.cost.collective_latency

sweep: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	$(PY) -m benchmarks.quality.noisy_corpus --base data/small --out data/small_noisy
	$(PY) -m benchmarks.quality.gpt_sweep
	$(PY) -m benchmarks.quality.gpt_sweep_report

# Section 5 of docs/results.md (issue 11: robust, target ESS, documents as units, preview). The
# evaluation (rw_eval) is 51 runs, about 6 to 7 hours on 2 cores, resumable like the sweep.
rw-eval: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	$(PY) -m benchmarks.quality.noisy_corpus --base data/small --out data/small_noisy
	$(PY) -m benchmarks.quality.loss_distribution_run --png results/loss_distribution.png
	$(PY) -m benchmarks.quality.loss_distribution_run --strategy robust --r 0.4 --out results/loss_distribution_robust.json
	$(PY) -m benchmarks.quality.loss_distribution_run --strategy linupper --r 0.4 --out results/loss_distribution_linupper.json
	$(PY) -m benchmarks.quality.docs_per_row
	$(PY) -m benchmarks.cost.unit_costs
	$(PY) -m benchmarks.cost.weights_variants_cost
	$(PY) -m benchmarks.quality.rw_eval
	$(PY) -m benchmarks.quality.rw_eval_report
	$(PY) -m benchmarks.quality.preview_check

# One-shot GPU check (docs/gpu_check.md): the GPU tests, the hook's step-time ratio at GPT-2-small
# scale in bf16, and a short uniform-vs-linupper run on data/small; writes results/gpu_check.json
# and results/gpu_check_loss.png in about 7 minutes on one GPU. Exits 3 at once without CUDA.
gpu-check: $(STAMP)
	$(PY) -m megatron_rw.data.prepare --profile small --out data/small
	$(PY) -m benchmarks.gpu.gpu_check

# The Dockerfile built on a local Debian base (debootstrap + Python 3.12 + torch; nvcr.io is not
# reachable here) with a private dockerd, then a few CPU iterations through the image's entry
# point; writes results/docker_test.json and removes images, daemon and data root. Root, ~15 GB
# free in /tmp (12 GB used at the peak), 14 minutes on 2 busy cores; .ci/run runs it.
docker-test: $(STAMP)
	PYTHON=$(PY) bash scripts/docker_test.sh

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .venv-mcore-* .pytest_cache
