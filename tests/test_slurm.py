"""The sbatch script on a real two-node Slurm cluster (two slurmd on this host, scripts/slurm_cluster.sh).

1. ``sbatch --nodes 2`` of the unmodified examples/slurm/pretrain_gpt_rw.sbatch trains DP2 across
   the two nodes (one process each, gloo), and every logged number equals the same configuration
   launched on one node without Slurm, bit for bit.
2. A job requeued by ``scontrol requeue`` as soon as its first checkpoint is written (what
   preemption with requeue does: SIGTERM to every task, then the job starts again) resumes from
   its last checkpoint and ends with the uninterrupted run's numbers; its log keeps what both
   attempts wrote.
3. ``sbatch --ntasks-per-node=2`` (one task per GPU): srun starts all 4 ranks, each launcher
   trains its own rank (DP4), and every logged number equals 4 processes on one host.
4. ``MEGATRON_LM=<checkout>`` through the same sbatch: the checkout's own ``pretrain_gpt.py``
   (through patches/megatron_lm) trains DP2 across the two nodes, and its TensorBoard scalars and
   final checkpoint equal the same command launched on one node without Slurm, bit for bit. The
   checkout is a copy of the newest fixture in ../shared/megatron-lm (skipped without one).

Skipped where Slurm is not installed (``bash scripts/slurm_cluster.sh install`` as root, which
.ci/run does) or the cluster does not come up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.data.tiny_corpus import build_tiny_corpus
from tests.workers.launch import REPO, free_port

pytestmark = pytest.mark.slow

SBATCH = os.path.join("examples", "slurm", "pretrain_gpt_rw.sbatch")
LAUNCHER = os.path.join(REPO, "examples", "pretrain_gpt_rw.sh")
CLUSTER = os.path.join(REPO, "scripts", "slurm_cluster.sh")
CONFIG = os.path.join(REPO, "examples", "configs", "smoke_cpu.sh")
# The launcher gives each process cores / processes threads: 2 on a Slurm node here, 1 for two
# processes on one node. CPU kernels sum in a different order with more threads, so both get one.
THREADS = "1"
COMPARED = ("train/lm loss", "train/weighted lm loss", "train/sample weight ess",
            "train/grad norm", "train/learning rate")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a running two-node cluster; torn down by PID afterwards."""
    if not (shutil.which("slurmctld") and shutil.which("sbatch")):
        pytest.skip("Slurm is not installed: run `bash scripts/slurm_cluster.sh install` as root")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd needs root")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, PORT_BASE=str(free_port()), CPUS_PER_NODE="2")
    up = subprocess.run(["bash", CLUSTER, "up", str(state)], env=env, capture_output=True,
                        text=True, timeout=120)
    try:
        if up.returncode != 0:
            pytest.skip(f"the Slurm cluster did not come up: {(up.stdout + up.stderr)[-1500:]}")
        yield str(state / "slurm.conf")
    finally:
        subprocess.run(["bash", CLUSTER, "down", str(state)], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def job_env(slurm_conf, corpus, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(SLURM_CONF=slurm_conf, PYTHON=sys.executable, CONFIG=CONFIG, DATA=corpus["dir"],
               OUT=str(out), GPUS_PER_NODE="1", MASTER_PORT=str(free_port()), PYTHONPATH=REPO,
               OMP_NUM_THREADS=THREADS)
    return env


def submit(env, log, *extra, args=()):
    """Submit the sbatch script from the repository root (as its header asks) with sbatch options
    ``extra`` and script arguments ``args``; returns the job id."""
    cmd = ["sbatch", "--parsable", "--nodes", "2", "--gpus-per-node=0", "--exclusive",
           f"--output={log}", *extra, SBATCH, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300 if "--wait" in extra else 60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_field(env, job, field):
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], env=env, capture_output=True,
                         text=True).stdout
    for word in out.split():
        if word.startswith(field + "="):
            return word.split("=", 1)[1]
    return None


def wait_until(predicate, timeout, what, poll=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def train_rows(path):
    """Last logged value per iteration (a resumed run logs the iterations after its checkpoint again)."""
    rows = {}
    for line in open(path):
        row = json.loads(line)
        if "train/lm loss" in row:
            rows[row["iteration"]] = row
    return rows


@pytest.fixture(scope="module")
def without_slurm(corpus, tmp_path_factory):
    """The same configuration on one node, two processes, no Slurm: the reference."""
    out = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(PYTHON=sys.executable, CONFIG=CONFIG, DATA=corpus["dir"], OUT=str(out),
               GPUS_PER_NODE="2", MASTER_PORT=str(free_port()), OMP_NUM_THREADS=THREADS)
    proc = subprocess.run(["bash", LAUNCHER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return train_rows(out / "metrics.jsonl")


def test_two_nodes_equal_one_node_without_slurm(cluster, corpus, without_slurm, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    job = submit(env, log, "--wait")
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    # One launcher per node, each its node's rank, one process each: DP 2 across the nodes.
    assert "node 0/2, 1 processes" in text and "node 1/2, 1 processes" in text, text[-4000:]
    assert "TP 1 PP 1 CP 1 DP 2" in text
    rows = train_rows(out / "metrics.jsonl")
    assert sorted(rows) == list(range(1, 41)) == sorted(without_slurm)
    for it in rows:
        for key in COMPARED:
            assert rows[it][key] == without_slurm[it][key], (it, key)
    assert rows[40]["train/sample weight ess"] < 1.0  # reweighting was on


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(cluster, corpus, without_slurm,
                                                                 tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    job = submit(env, log)
    checkpoint = out / "latest_checkpointed_iteration.txt"
    # The first of the config's checkpoints (every 10 of 40 iterations); the job is still running.
    wait_until(checkpoint.exists, 240, "the first checkpoint", poll=0.05)
    requeue = subprocess.run(["scontrol", "requeue", job], env=env, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    wait_until(lambda: job_field(env, job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
               300, "the requeued job to finish")
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    assert job_field(env, job, "Restarts") == "1"
    # Both attempts' output is in the log (--open-mode=append), and the second one resumed.
    assert text.count("node 0/2") == 2, text[-4000:]
    assert any(f"loaded iteration {it} " in text for it in (10, 20, 30)), text[-4000:]
    rows = train_rows(out / "metrics.jsonl")
    assert sorted(rows) == list(range(1, 41))
    for it in rows:
        for key in COMPARED:
            assert rows[it][key] == without_slurm[it][key], (it, key)


# One task per GPU: `sbatch --ntasks-per-node=2` of the same script on 2 nodes, so srun starts all
# 4 ranks (DP4) and the launcher takes each rank from Slurm; against 4 processes on one host
# without Slurm. Shortened: 4 processes share the 2 cores here.
PER_TASK_ARGS = ["--train-iters", "6", "--eval-interval", "6", "--save-interval", "6"]


@pytest.fixture(scope="module")
def four_processes_without_slurm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("four") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(PYTHON=sys.executable, CONFIG=CONFIG, DATA=corpus["dir"], OUT=str(out),
               GPUS_PER_NODE="4", MASTER_PORT=str(free_port()), OMP_NUM_THREADS=THREADS)
    proc = subprocess.run(["bash", LAUNCHER, *PER_TASK_ARGS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return train_rows(out / "metrics.jsonl")


def test_one_task_per_gpu_equals_one_host_without_slurm(cluster, corpus,
                                                         four_processes_without_slurm, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    job = submit(env, log, "--wait", "--ntasks-per-node=2", args=PER_TASK_ARGS)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    assert "4 ranks started by srun" in text and "TP 1 PP 1 CP 1 DP 4" in text, text[-4000:]
    assert "node 0/2" not in text  # no torchrun of the launcher's own
    rows = train_rows(out / "metrics.jsonl")
    assert sorted(rows) == list(range(1, 7)) == sorted(four_processes_without_slurm)
    for it in rows:
        for key in COMPARED:
            assert rows[it][key] == four_processes_without_slurm[it][key], (it, key)


# Megatron-LM's start-up (imports, dataset indices) dominates its run: four iterations, the last
# one validated and saved. Burn-in 2, so iterations 3 and 4 are reweighted. The legacy `torch`
# checkpoint (one torch.save per model-parallel rank): the default torch_dist took 24 s to save
# this 130 k-parameter model on 2 busy cores.
MLM_ARGS = ["--train-iters", "4", "--eval-interval", "4", "--save-interval", "4",
            "--ckpt-format", "torch"]
MLM_SCALARS = ("lm loss", "weighted lm loss", "sample weight ess", "grad-norm", "learning-rate")


@pytest.fixture(scope="module")
def megatron_lm(tmp_path_factory):
    """A writable copy of the newest Megatron-LM fixture checkout, dataset helpers built."""
    from tests.test_megatron_lm import newest_prepared_copy

    return newest_prepared_copy(str(tmp_path_factory.mktemp("megatron_lm") / "checkout"))


def tensorboard_scalars(folder):
    """``{tag: {iteration: value}}``: what Megatron-LM's training_log wrote (float32)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in MLM_SCALARS}


def checkpoint_tensors(run):
    """Every tensor (model, optimizer, RNG states) of a run's last checkpoint, by its key path."""
    iteration = int((run / "latest_checkpointed_iteration.txt").read_text())
    state = torch.load(run / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)

    walk("", state)
    return flat


def test_megatron_lm_through_sbatch_equals_it_without_slurm(cluster, corpus, megatron_lm,
                                                            tmp_path):
    reference = tmp_path / "reference"
    env = job_env(cluster, corpus, reference)
    env.update(MEGATRON_LM=megatron_lm, GPUS_PER_NODE="2")
    proc = subprocess.run(["bash", LAUNCHER, *MLM_ARGS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    env["MEGATRON_LM"] = megatron_lm
    job = submit(env, log, "--wait", args=MLM_ARGS)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    assert "node 0/2, 1 processes" in text and "node 1/2, 1 processes" in text, text[-4000:]
    assert f"trainer Megatron-LM {megatron_lm}" in text
    assert "data-parallel size: 2" in text  # Megatron-LM's own report of the layout
    lines = [l for l in text.splitlines() if " iteration " in l and "consumed samples" in l]
    assert len(lines) == 4 and all("weighted lm loss" in l for l in lines), text[-4000:]

    scalars, expected = tensorboard_scalars(out / "tensorboard"), tensorboard_scalars(
        reference / "tensorboard")
    for tag in MLM_SCALARS:
        assert sorted(scalars[tag]) == [1, 2, 3, 4], (tag, scalars[tag])
        assert scalars[tag] == expected[tag], tag
    ess = scalars["sample weight ess"]
    assert ess[2] == 1.0 and ess[4] < 1.0  # reweighting on after the burn-in
    tensors, expected = checkpoint_tensors(out), checkpoint_tensors(reference)
    assert sorted(tensors) == sorted(expected) and len(tensors) > 10
    for key in tensors:
        assert torch.equal(tensors[key], expected[key]), key
