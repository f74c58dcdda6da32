"""``examples/pretrain_gpt_rw.sh`` end to end on CPU: DP2 and TP2 runs, flag forwarding, errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from megatron_rw.data.flags import data_flags
from megatron_rw.megatron_training.run_log import read_run
from tests.data.tiny_corpus import build_tiny_corpus
from tests.workers.launch import REPO, free_port

LAUNCHER = os.path.join(REPO, "examples", "pretrain_gpt_rw.sh")
# The tiny_cpu config, shrunk further by flags on the command line (they must win).
SHRINK = ["--num-layers", "2", "--hidden-size", "32", "--seq-length", "32",
          "--max-position-embeddings", "32", "--make-vocab-size-divisible-by", "64",
          "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", "3",
          "--lr-warmup-iters", "1", "--log-interval", "1", "--eval-interval", "3",
          "--eval-iters", "1", "--save-interval", "3", "--sample-reweight-warmup-iters", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def launch(args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    base.update(PYTHON=sys.executable, MASTER_PORT=str(free_port()), **env)
    return subprocess.run(["bash", LAUNCHER, *args], env=base, capture_output=True, text=True,
                          timeout=300)


def iteration_lines(log):
    """Megatron's training log lines: ``[date] iteration  n/  N | consumed samples: ...``."""
    return [l for l in log.splitlines() if " iteration " in l and "consumed samples" in l]


def scalars(out):
    """``{iteration: {tag: value}}`` from the run's TensorBoard events (megatron_rw.megatron_training.run_log)."""
    return read_run(str(out / "tensorboard"))[0]


def run_and_check(args, out, **env):
    """One run through the launcher: the log, after the checks every run must pass (the
    config's reweighting flags arrived, Megatron's checkpoint layout and per-domain validation
    sets)."""
    proc = launch(args, OUT=str(out), **env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = iteration_lines(log)
    assert len(lines) == 3, log[-3000:]
    assert all("weighted lm loss" in l and "sample weight ess" in l for l in lines)
    # the config's reweighting flags arrived (burn-in shortened from the command line)
    assert "sample weight ess: 1.000000E+00" in lines[0]
    assert "sample weight ess: 1.000000E+00" not in lines[2]
    for domain in ("alpha", "beta"):
        assert f"validation-{domain} loss at iteration 3" in log, log[-3000:]
    # Megatron's checkpoint: iter_<7 digits>/ in torch_dist format (metadata.json, .distcp)
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (out / "iter_0000003" / "metadata.json").is_file()
    return log


@pytest.fixture(scope="module")
def dp2_run(corpus, tmp_path_factory):
    """The launcher's default on 2 processes (DP2), validated after every step: the reference
    that the launch forms must reproduce and the run plot_run summarises. One thread per
    process, as torchrun outside the launcher gives them. Each sample's weight logged
    (``--log-sample-weights``) and the iteration time in TensorBoard, for the benchmarks' rows."""
    out = tmp_path_factory.mktemp("dp2") / "run"
    log = run_and_check([*SHRINK, "--eval-interval", "1", "--log-sample-weights",
                         "--log-timers-to-tensorboard"], out, DATA=corpus["dir"],
                        GPUS_PER_NODE="2", OMP_NUM_THREADS="1")
    return out, log


def test_launcher_trains_with_megatrons_loop_by_default(dp2_run):
    """No MEGATRON_LM: Megatron's own loop from the installed megatron-core (the project's
    pretrain_gpt.py through the patch); per-domain validation sets, TensorBoard."""
    pytest.importorskip("megatron.training.argument_utils")
    out, log = dp2_run
    assert "2 processes, cpu/gloo, config tiny_cpu" in log
    assert "trainer Megatron's training loop (installed megatron.training)" in log
    assert "data-parallel size: 2" in log and "tensor-model-parallel size: 1" in log
    rows = scalars(out)
    assert {"lm loss validation-alpha", "lm loss validation-beta"} <= set(rows[3])
    # validation is Megatron's own loss: no weights reported in evaluation
    assert not any(t.startswith("weighted lm loss validation") for t in rows[3])
    assert rows[3]["sample weight ess"] < 1.0 == rows[1]["sample weight ess"]


def test_sample_log_writes_the_first_data_rank_rows(dp2_run):
    """--log-sample-weights (patches/megatron_lm/rw_samples.py): every logged step (log
    interval 1), each micro-batch of data rank 0 (8 samples = DP 2 x 2 micro-batches x 2 rows),
    weights 1 in the 1-step burn-in and live after it, every row's domain."""
    out, _ = dp2_run
    records = [json.loads(l) for l in (out / "sample_weights.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["micro_batch"]) for r in records] == \
        [(it, m) for it in (1, 2, 3) for m in (0, 1)]
    assert all(len(r["weight"]) == len(r["loss"]) == len(r["domain"]) == 2 for r in records)
    assert all(w == 1.0 for r in records[:2] for w in r["weight"])
    assert records[0]["r"] == math.inf and records[-1]["r"] == 0.4
    assert any(w != 1.0 for r in records[2:] for w in r["weight"])
    assert {d for r in records for d in r["domain"]} <= {0, 1}


def test_benchmark_rows_from_a_megatron_run(dp2_run, corpus):
    """benchmarks.quality.run_metrics: the rows the evaluation reports read, from the run's events."""
    from benchmarks.quality.run_metrics import blend_shares, metrics_rows

    out, _ = dp2_run
    shares = blend_shares(os.path.join(corpus["dir"], "manifest.json"))
    assert set(shares) == {"alpha", "beta"} and abs(sum(shares.values()) - 1) < 1e-9
    rows = metrics_rows(str(out / "tensorboard"), shares)
    train = {r["iteration"]: r for r in rows if "train/lm loss" in r}
    valid = {r["iteration"]: r for r in rows if "valid/all/lm loss" in r}
    assert sorted(train) == sorted(valid) == [1, 2, 3]
    assert train[1]["train/reweight r"] == math.inf and train[3]["train/reweight r"] == 0.4
    assert train[1]["train/sample weight/alpha"] == pytest.approx(1.0)
    assert train[3]["train/iteration time (ms)"] > 0 and "train/grad norm" in train[3]
    for it, row in valid.items():
        both = shares["alpha"] * row["valid/alpha/lm loss"] + shares["beta"] * row["valid/beta/lm loss"]
        assert row["valid/all/lm loss"] == pytest.approx(both)


def test_launcher_trains_tensor_parallel(corpus, tmp_path):
    out = tmp_path / "run"
    log = run_and_check([*SHRINK, "--tensor-model-parallel-size", "2"], out, DATA=corpus["dir"],
                        GPUS_PER_NODE="2")
    assert "data-parallel size: 1" in log and "tensor-model-parallel size: 2" in log


def test_launcher_rejects_an_unprepared_corpus(tmp_path):
    proc = launch(SHRINK, DATA=str(tmp_path), OUT=str(tmp_path / "run"))
    assert proc.returncode != 0
    assert "manifest.json does not exist" in proc.stderr and "megatron_rw.data.prepare" in proc.stderr
    assert "iteration" not in proc.stdout


def test_launcher_without_megatron_training_says_to_set_megatron_lm(corpus, tmp_path):
    """megatron-core 0.16.1's wheel has no megatron.training: the launcher says what to do
    before any process starts (here a megatron package without it shadows the installed one)."""
    shadow = tmp_path / "shadow" / "megatron"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    proc = launch(SHRINK, DATA=corpus["dir"], OUT=str(tmp_path / "run"),
                  PYTHONPATH=str(tmp_path / "shadow"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has no megatron.training" in proc.stderr and "MEGATRON_LM=" in proc.stderr
    assert "Traceback" not in proc.stderr and "iteration" not in proc.stdout


def test_launcher_rejects_a_missing_config(corpus, tmp_path):
    proc = launch(SHRINK, DATA=corpus["dir"], CONFIG=str(tmp_path / "nope.sh"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_data_flags_follow_a_moved_corpus(corpus, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(corpus["dir"], moved)
    flags = data_flags(str(moved))
    assert flags[:4] == ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
                         str(moved / "tokenizer.model")]
    train = flags[flags.index("--train-data-path") + 1: flags.index("--valid-data-path")]
    assert train == ["1", str(moved / "megatron" / "alpha_train"),
                     "1", str(moved / "megatron" / "beta_train")]
    # per-domain validation: the valid prefixes unweighted, Megatron's per-set evaluation
    flags = data_flags(str(moved), per_domain_validation=True, set_names=True)
    valid = flags[flags.index("--valid-data-path") + 1: flags.index("--multiple-validation-sets")]
    assert valid == [str(moved / "megatron" / f"{d}_valid") for d in ("alpha", "beta")]
    assert flags[-4:] == ["--full-validation", "--validation-set-names", "alpha", "beta"]
    assert "--validation-set-names" not in data_flags(str(moved), True, set_names=False)
    os.remove(moved / "megatron" / "beta_valid.bin")
    with pytest.raises(FileNotFoundError, match="beta_valid.bin"):
        data_flags(str(moved))


def test_plot_run_summarises_a_run(dp2_run, tmp_path):
    out, _ = dp2_run
    png = tmp_path / "run.png"
    plot = subprocess.run([sys.executable, os.path.join(REPO, "examples", "plot_run.py"),
                           str(out), "--out", str(png)],
                          capture_output=True, text=True, check=True).stdout
    lines = plot.splitlines()
    assert "val loss @1" in lines[0] and "val loss @3" in lines[0]
    table = {l.split()[0]: l.split()[1:] for l in lines[1:] if l.startswith(("alpha", "beta"))}
    # both domains: validation at iterations 1 and 3, share of the samples, mean weight after
    # the 1-step burn-in
    assert set(table) == {"alpha", "beta"} and all(len(v) == 4 for v in table.values())
    shares = [float(v[2]) for v in table.values()]
    assert abs(sum(shares) - 1.0) < 1e-3
    assert any(l.startswith("mean of sets") for l in lines)
    assert png.stat().st_size > 10_000


@pytest.mark.slow
def test_launcher_runs_a_megatron_lm_checkout(corpus, tmp_path):
    """MEGATRON_LM=checkout: the checkout's own pretrain_gpt.py through the patch, on CPU with
    the CPU runtime and gloo, from the same config and prepared corpus."""
    from tests.test_megatron_lm import newest_prepared_copy

    checkout = newest_prepared_copy(str(tmp_path / "checkout"))
    out = tmp_path / "run"
    proc = launch(SHRINK, DATA=corpus["dir"], OUT=str(out), GPUS_PER_NODE="2",
                  MEGATRON_LM=checkout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"cpu/gloo, config tiny_cpu, output {out}, trainer Megatron-LM {checkout}" in log
    lines = iteration_lines(log)
    assert len(lines) == 3, log[-3000:]
    assert all("weighted lm loss" in l and "sample weight ess" in l for l in lines)
    assert "sample weight ess: 1.000000E+00" in lines[0]  # the 1-step burn-in
    assert "sample weight ess: 1.000000E+00" not in lines[2]
    # the training blend's domains (--train-data-path prefixes, split suffix dropped), training
    # steps only: rw_domains.py
    names = re.findall(r"sample weight share/(\S+):", lines[2])
    assert len(names) >= 2 and not any(n.endswith("_train") for n in names), lines[2]
    assert all(f"sample share/{n}:" in lines[2] for n in names)
    validation = [l for l in log.splitlines() if "validation loss at iteration 3" in l]
    assert validation and not any("share/" in l for l in validation)
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert any((out / "tensorboard").iterdir())


# ---------------------------------------------------------------- launch forms
# The launcher's own torchrun is the reference; torchrun outside it (with and without
# --no-python) must train the same run bit for bit. tests/test_slurm.py: srun, one task per GPU.
COMPARED = ("lm loss", "weighted lm loss", "sample weight ess", "grad-norm", "learning-rate")


def outer_torchrun(torchrun_options, args, **env):
    """``torchrun [options] examples/pretrain_gpt_rw.sh [args]`` as a user types it."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "MASTER_")) and k not in ("RANK", "WORLD_SIZE",
                                                                     "LOCAL_RANK")}
    base.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *torchrun_options,
           LAUNCHER, *args]
    return subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("options", [["--no-python"], []], ids=["no-python", "plain"])
def test_torchrun_outside_the_launcher_equals_its_own_torchrun(corpus, tmp_path, dp2_run,
                                                               options):
    """Each of torchrun's workers runs this rank's trainer directly (no nested torchrun); plain
    torchrun runs the script with Python, which hands it to bash."""
    out = tmp_path / "run"
    proc = outer_torchrun(options, [*SHRINK, "--eval-interval", "1"], DATA=corpus["dir"],
                          OUT=str(out))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "2 ranks started by torchrun, cpu/gloo, config tiny_cpu" in log, log[-3000:]
    assert log.count("pretrain_gpt_rw.sh:") == 1  # rank 0 alone says so, and no inner launcher
    assert "SyntaxError" not in log and "Traceback" not in log
    rows, reference = scalars(out), scalars(dp2_run[0])
    assert sorted(rows) == sorted(reference) == [1, 2, 3]
    for it, row in rows.items():
        for key in COMPARED:
            assert row[key] == reference[it][key], (it, key)


def test_python_on_the_launcher_is_bash_on_it(tmp_path):
    """``python examples/pretrain_gpt_rw.sh`` (what torchrun does) reaches the bash launcher: its
    own start-up errors, not a Python traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(CONFIG=str(tmp_path / "nope.sh"))
    proc = subprocess.run([sys.executable, LAUNCHER], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- layouts from one checkpoint
# Megatron seeds each pipeline stage's initialisation (and, without --use-cpu-initialization,
# each tensor rank's) differently, so layouts start from different parameters. Started from one
# checkpoint (torch_dist, resharded to each layout on load), a layout's first step sees the same
# parameters and the same global batch as any other's. The weights are normalised over the
# global micro-batch (a micro-batch from every data-parallel rank), so each layout gets the
# micro-batch size that makes it 4 samples, the same 4 in every layout (Megatron's sampler hands
# data rank r the r-th slice of each DP x b block): lm loss, weighted lm loss, ESS and grad norm
# agree then (float summation order aside: measured up to 1.4e-6 relative). TP2 with sequence
# parallelism and DP2 x CP2 run on the project's CPU layer spec.
LAYOUTS = {"dp1": (1, ["--micro-batch-size", "4"]),
           "dp2": (2, ["--micro-batch-size", "2"]),
           "tp2": (2, ["--micro-batch-size", "4", "--tensor-model-parallel-size", "2"]),
           "pp2": (2, ["--micro-batch-size", "4", "--pipeline-model-parallel-size", "2"]),
           "tp2sp": (2, ["--micro-batch-size", "4", "--tensor-model-parallel-size", "2",
                         "--sequence-parallel"]),
           "dp2cp2": (4, ["--micro-batch-size", "2", "--context-parallel-size", "2"])}
STEP = ["lm loss", "weighted lm loss", "sample weight ess", "grad-norm"]


def train_only(corpus):
    """The corpus's tokenizer and training blend, no validation (nothing to evaluate)."""
    flags = data_flags(corpus["dir"])
    return [*flags[:flags.index("--valid-data-path")], "--eval-iters", "0"]


@pytest.fixture(scope="module")
def start_checkpoint(corpus, tmp_path_factory):
    pytest.importorskip("megatron.training.training",
                        reason="the installed megatron-core has no megatron.training (0.17+)")
    out = tmp_path_factory.mktemp("start") / "run"
    proc = launch([*SHRINK, *train_only(corpus), "--train-iters", "1", "--lr-warmup-iters", "0",
                   "--save-interval", "1"],
                  DATA="", OUT=str(out), GPUS_PER_NODE="1", OMP_NUM_THREADS="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.compat
def test_layouts_take_the_same_first_step_from_one_checkpoint(corpus, tmp_path,
                                                              start_checkpoint):
    steps = {}
    for name, (procs, flags) in LAYOUTS.items():
        out = tmp_path / name
        proc = launch([*SHRINK, *train_only(corpus), *flags, "--train-iters", "2",
                       "--lr-warmup-iters", "0",
                       "--sample-reweight-warmup-iters", "0", "--load", str(start_checkpoint),
                       "--no-load-optim", "--no-load-rng"],
                      DATA="", OUT=str(out), GPUS_PER_NODE=str(procs), OMP_NUM_THREADS="1")
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, (name, log[-4000:])
        assert "at iteration 1" in log and len(iteration_lines(log)) == 1, (name, log[-3000:])
        steps[name] = scalars(out)[2]
    assert steps["dp1"]["sample weight ess"] < 1.0  # reweighted
    for name, row in steps.items():
        for key in STEP:
            assert row[key] == pytest.approx(steps["dp1"][key], rel=1e-5), (name, key, steps)


def test_project_layers_only_where_the_local_spec_cannot_run():
    """The project's CPU layer spec replaces Megatron's local one for CP or SP only; MoE and
    MTP there are refused at start-up, naming why."""
    from argparse import Namespace

    provider = pytest.importorskip("megatron_rw.megatron_training.gpt_model_provider",
                                   reason="no megatron.training (0.17+)")
    base = dict(transformer_impl="local", context_parallel_size=2, sequence_parallel=False,
                spec=None, num_experts=None, mtp_num_layers=None)
    assert provider.needs_project_layers(Namespace(**base))
    assert provider.needs_project_layers(Namespace(**{**base, "context_parallel_size": 1,
                                                      "sequence_parallel": True}))
    for other in ({"context_parallel_size": 1}, {"transformer_impl": "transformer_engine"},
                  {"spec": ["my.module", "spec"]}):
        assert not provider.needs_project_layers(Namespace(**{**base, **other}))
    for workload in ({"num_experts": 4}, {"mtp_num_layers": 1}):
        with pytest.raises(SystemExit, match="dense models without MTP"):
            provider.needs_project_layers(Namespace(**{**base, **workload}))
