"""The sbatch script on a real two-node Slurm cluster (two slurmd on this host, scripts/slurm_cluster.sh).

Every run is the launcher's default: Megatron's own training loop from the installed
megatron-core (megatron_rw/megatron_training/pretrain_gpt.py through the patch), compared by what
it wrote to TensorBoard (megatron_rw.megatron_training.run_log).

1. ``sbatch --nodes 2`` of the unmodified examples/slurm/pretrain_gpt_rw.sbatch trains DP2 across
   the two nodes (one process each, gloo), and every logged number equals the same configuration
   launched on one node without Slurm, bit for bit.
2. A job requeued by ``scontrol requeue`` as soon as its first checkpoint is written (what
   preemption with requeue does: SIGTERM to every task, then the job starts again) resumes from
   its last checkpoint (Megatron's, torch_dist) and ends with the uninterrupted run's numbers;
   its log keeps what both attempts wrote.
3. ``sbatch --ntasks-per-node=2`` (one task per GPU): srun starts all 4 ranks, each launcher
   trains its own rank (DP4), and every logged number equals 4 processes on one host.
Skipped where Slurm is not installed (``bash scripts/slurm_cluster.sh install`` as root, which
.ci/run does) or the cluster does not come up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

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
COMPARED = ("lm loss", "weighted lm loss", "sample weight ess", "grad-norm", "learning-rate")


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


def train_rows(out):
    """What the run logged per training iteration (for an iteration logged twice, after a resume,
    the later value: megatron_rw.megatron_training.run_log)."""
    from megatron_rw.megatron_training.run_log import read_run

    return {it: row for it, row in read_run(str(out / "tensorboard"))[0].items()
            if "lm loss" in row}


@pytest.fixture(scope="module")
def without_slurm(corpus, tmp_path_factory):
    """The same configuration on one node, two processes, no Slurm: the reference."""
    out = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(PYTHON=sys.executable, CONFIG=CONFIG, DATA=corpus["dir"], OUT=str(out),
               GPUS_PER_NODE="2", MASTER_PORT=str(free_port()), OMP_NUM_THREADS=THREADS)
    proc = subprocess.run(["bash", LAUNCHER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return train_rows(out)


def test_two_nodes_equal_one_node_without_slurm(cluster, corpus, without_slurm, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    job = submit(env, log, "--wait")
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    # One launcher per node, each its node's rank, one process each: DP 2 across the nodes.
    assert "node 0/2, 1 processes" in text and "node 1/2, 1 processes" in text, text[-4000:]
    assert "data-parallel size: 2" in text  # Megatron's own report of the layout
    rows = train_rows(out)
    assert sorted(rows) == list(range(1, 41)) == sorted(without_slurm)
    for it in rows:
        for key in COMPARED:
            assert rows[it][key] == without_slurm[it][key], (it, key)
    assert rows[40]["sample weight ess"] < 1.0  # reweighting was on


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
    assert any(f"successfully loaded checkpoint from {out} " in l and l.endswith(f"at iteration {it}")
               for l in text.splitlines() for it in (10, 20, 30)), text[-4000:]
    rows = train_rows(out)
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
    return train_rows(out)


def test_one_task_per_gpu_equals_one_host_without_slurm(cluster, corpus,
                                                         four_processes_without_slurm, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(cluster, corpus, out)
    job = submit(env, log, "--wait", "--ntasks-per-node=2", args=PER_TASK_ARGS)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    assert "4 ranks started by srun" in text and "data-parallel size: 4" in text, text[-4000:]
    assert "node 0/2" not in text  # no torchrun of the launcher's own
    rows = train_rows(out)
    assert sorted(rows) == list(range(1, 7)) == sorted(four_processes_without_slurm)
    for it in rows:
        for key in COMPARED:
            assert rows[it][key] == four_processes_without_slurm[it][key], (it, key)
