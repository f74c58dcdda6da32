"""The example configs, Slurm script and Dockerfile agree with Megatron's parser and the repo."""

from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

from tests.workers.launch import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "examples", "configs", "*.sh")))
# World sizes each config is written for: one 8-GPU node for the GPU ones, 2 CPU ranks for the
# CPU ones.
WORLD = {"tiny_cpu": 2, "small_cpu": 2, "smoke_cpu": 2, "gpt_125m": 8, "gpt_1b": 8}


def config_flags(path):
    """The flags a config contributes, expanded by bash exactly as the launcher does."""
    script = f'source "{path}"; printf "%s\\n" "${{MODEL_ARGS[@]}}" "${{TRAIN_ARGS[@]}}" "${{REWEIGHT_ARGS[@]}}"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_parses_and_fits_its_world(path):
    """Megatron's own parser (an unknown flag would exit here) and the layout rules its
    validate_args applies at start-up: model parallel divides the world, and the global batch
    is whole micro-batches on every data-parallel rank."""
    pytest.importorskip("megatron.training.arguments")
    from benchmarks.megatron_args import LAUNCHER_FLAGS, parse_flags

    name = os.path.basename(path)[:-3]
    args = parse_flags(config_flags(path) + list(LAUNCHER_FLAGS))
    model = (args.tensor_model_parallel_size * args.pipeline_model_parallel_size
             * args.context_parallel_size)
    assert WORLD[name] % model == 0
    dp = WORLD[name] // model
    assert args.global_batch_size % (args.micro_batch_size * dp) == 0
    assert args.sample_reweight_strategy in ("linupper", "quadratic")
    assert 0 < args.sample_reweight_warmup_iters < args.train_iters


def test_configs_cover_the_documented_set():
    assert {os.path.basename(p)[:-3] for p in CONFIGS} == set(WORLD)


@pytest.mark.parametrize("script", ["examples/pretrain_gpt_rw.sh", "examples/slurm/pretrain_gpt_rw.sbatch"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True)


def test_dockerfile_pins_and_copies_what_exists():
    text = open(os.path.join(REPO, "Dockerfile")).read()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base)
    # The image carries the primary stack `make test` runs (the Makefile's MCORE).
    makefile = open(os.path.join(REPO, "Makefile")).read()
    mcore = re.search(r"^MCORE\s*\?=\s*(\S+)", makefile, flags=re.M).group(1)
    assert f"megatron-core=={mcore}" in text
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for path in src.split():
            assert os.path.exists(os.path.join(REPO, path)), path
    entry = re.search(r'ENTRYPOINT \["bash", "([^"]+)"\]', text).group(1)
    assert os.path.isfile(os.path.join(REPO, entry))
