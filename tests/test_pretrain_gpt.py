"""``python -m megatron_rw.pretrain_gpt`` end to end on CPU/gloo, on real text (stdlib docstrings)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.data.stdlib_text import stdlib_docstrings
from tests.data.tiny_corpus import build_tiny_corpus
from tests.workers.launch import REPO, free_port, torchrun

SCRIPT = os.path.join(REPO, "megatron_rw", "pretrain_gpt.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two domains (docstrings of the first and second half of the modules), train + valid each."""
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def base_args(corpus, **over):
    args = {
        "--num-layers": 2, "--hidden-size": 32, "--num-attention-heads": 4, "--seq-length": 32,
        "--micro-batch-size": 2, "--global-batch-size": 8, "--train-iters": 4, "--lr": 1e-3,
        "--lr-warmup-iters": 1, "--lr-decay-style": "cosine", "--min-lr": 1e-4,
        "--log-interval": 1, "--eval-interval": 2, "--eval-iters": 1, "--make-vocab-size-divisible-by": 64,
        "--tokenizer-type": "SentencePieceTokenizer", "--tokenizer-model": corpus["tokenizer"],
        "--sample-reweight-strategy": "linupper", "--sample-reweight-warmup-iters": 2,
        "--sample-reweight-r": 0.5,
    }
    args.update(over)
    flat = []
    for k, v in args.items():
        if v is None:
            continue
        flat.append(k)
        if v is not True:
            flat += v.split() if isinstance(v, str) and k.endswith("data-path") else [str(v)]
    flat += ["--train-data-path", "1", corpus["alpha_train"], "2", corpus["beta_train"],
             "--valid-data-path", "1", corpus["alpha_valid"], "1", corpus["beta_valid"]]
    return flat


def iteration_lines(log):
    return [l for l in log.splitlines() if l.lstrip().startswith("iteration ")]


def read_metrics(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


def test_dp2_linupper_logs_loss_and_ess(corpus, tmp_path):
    log = torchrun(SCRIPT, 2, base_args(corpus, **{"--save": str(tmp_path / "ckpt"),
                                                  "--log-sample-weights": True}))
    lines = iteration_lines(log)
    assert len(lines) == 4, log[-3000:]
    for line in lines:
        assert "lm loss:" in line and "sample weight ess:" in line and "grad norm:" in line
    rows = [r for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl") if "train/lm loss" in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    # burn-in (2 iterations): exactly uniform; afterwards linupper with r=0.5 spreads the weights
    assert rows[0]["train/sample weight ess"] == 1.0 and rows[1]["train/sample weight ess"] == 1.0
    assert rows[3]["train/sample weight ess"] < 1.0
    assert rows[3]["train/weighted lm loss"] != rows[3]["train/lm loss"]
    valid = [r for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl") if "valid/all/lm loss" in r]
    assert {"valid/alpha/lm loss", "valid/beta/lm loss"} <= set(valid[-1])
    # per-domain telemetry: exactly 1 during burn-in, spread afterwards
    for name in ("alpha", "beta"):
        assert rows[0][f"train/sample weight/{name}"] == 1.0
        assert 3.0 < rows[0][f"train/sample loss/{name}"] < 8.0
    assert {rows[3]["train/sample weight/alpha"], rows[3]["train/sample weight/beta"]} != {1.0}
    # sample log: rank 0's rows (micro 2) of each of the 4 micro-batches per logged step
    samples = read_metrics(tmp_path / "ckpt" / "sample_weights.jsonl")
    assert [(s["iteration"], s["micro_batch"]) for s in samples] == [
        (i, m) for i in (1, 2, 3, 4) for m in range(2)]
    assert all(len(s["weight"]) == 2 and set(s["domain"]) <= {0, 1} for s in samples)
    assert all(w == 1.0 for s in samples[:4] for w in s["weight"])
    assert any(w != 1.0 for s in samples[4:] for w in s["weight"])
    assert all(-1.0 <= x <= 1.0 for s in samples for x in s["normalised"])
    assert os.path.exists(tmp_path / "ckpt" / "iter_0000004" / "model_optim_rng_tp00_pp000.pt")
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "4"


def test_tp2_runs(corpus, tmp_path):
    log = torchrun(SCRIPT, 2, base_args(corpus, **{"--tensor-model-parallel-size": 2,
                                                  "--global-batch-size": 4, "--train-iters": 3,
                                                  "--metrics-file": str(tmp_path / "m.jsonl")}))
    assert "TP 2 PP 1 CP 1 DP 1" in log
    assert len(iteration_lines(log)) == 3
    rows = [r for r in read_metrics(tmp_path / "m.jsonl") if "train/lm loss" in r]
    assert all(5.0 < r["train/lm loss"] < 7.0 for r in rows)


def _first_loss(corpus, tmp_path, nproc, **over):
    name = "_".join(f"{k.strip('-')}{v}" for k, v in over.items()) or "single"
    metrics = tmp_path / f"{name}.jsonl"
    torchrun(SCRIPT, nproc, base_args(corpus, **{
        "--train-iters": 1, "--lr-warmup-iters": 0, "--eval-interval": 100, "--eval-iters": 0,
        "--hidden-dropout": 0,
        "--attention-dropout": 0, "--sample-reweight-strategy": "uniform",
        "--metrics-file": str(metrics), **over}))
    return _train_rows(metrics)[1]["train/lm loss"]


@pytest.mark.compat
def test_first_loss_is_the_same_in_every_layout(corpus, tmp_path):
    """Iteration 1 sees the same global batch and the same initial weights whatever the layout,
    so its loss may differ only by summation order. Taking context-parallel chunks from the world
    group (megatron-core 0.19 with the group left out) slices DP2's sequences and moves the loss
    by ~2e-3 relative."""
    reference = _first_loss(corpus, tmp_path, 1)
    for over in ({}, {"--context-parallel-size": 2}):
        got = _first_loss(corpus, tmp_path, 2, **over)
        assert abs(got - reference) <= 1e-5 * reference, (over, got, reference)


DOCUMENTS = {"--sample-reweight-unit": "document", "--sample-reweight-max-documents": 4,
             "--sample-reweight-target-ess": 0.7, "--sample-reweight-warmup-iters": 0,
             "--sample-reweight-preview": "quadratic", "--seq-length": 64,
             "--max-position-embeddings": 64}


@pytest.mark.compat
def test_documents_target_ess_and_preview_in_every_layout(corpus, tmp_path):
    """Documents as units, r chosen for ESS 0.7, and a preview, through the entry point: the
    weighted loss of the first step is the same with 1 process, DP2 and CP2 (document slots are
    found on whole rows, then sliced for CP), the ESS is on target, r and the preview are logged."""
    rows = {}
    # The same global micro-batch of 4 rows in each layout (weights are normalised over it).
    for nproc, over in ((1, {"--micro-batch-size": 4}), (2, {}),
                        (2, {"--context-parallel-size": 2, "--micro-batch-size": 4})):
        metrics = tmp_path / f"docs{nproc}{len(over)}.jsonl"
        torchrun(SCRIPT, nproc, base_args(corpus, **{
            "--train-iters": 2, "--lr-warmup-iters": 0, "--eval-interval": 100, "--eval-iters": 0,
            "--hidden-dropout": 0, "--attention-dropout": 0, "--metrics-file": str(metrics),
            **DOCUMENTS, **over}))
        rows[(nproc, len(over))] = _train_rows(metrics)
    ref = rows[(1, 1)][1]
    # On target, or above it where linupper's ties at the top score put the floor higher.
    assert ref["train/sample weight ess"] > 0.69
    assert 0 < ref["train/reweight r"] < 1e3 and ref["train/weighted lm loss"] != ref["train/lm loss"]
    assert 0 < ref["train/preview weight ess"] <= 1
    assert {"train/preview weight/alpha", "train/preview weight/beta"} <= set(ref)
    for key in ("train/lm loss", "train/weighted lm loss", "train/sample weight ess",
                "train/reweight r"):
        for layout, got in rows.items():
            assert abs(got[1][key] - ref[key]) <= 1e-4 * abs(ref[key]), (layout, key)


RESUME = {"--train-iters": 8, "--save-interval": 4, "--eval-interval": 4,
          "--sample-reweight-schedule": "linear", "--sample-reweight-r-start": 5.0,
          "--sample-reweight-warmup-iters": 2, "--sample-reweight-anneal-iters": 5}
COMPARED = ("train/lm loss", "train/weighted lm loss", "train/sample weight ess",
            "train/grad norm", "train/learning rate", "train/reweight r")


def _train_rows(path):
    return {r["iteration"]: r for r in read_metrics(path) if "train/lm loss" in r}


def _children(pid):
    """Pids whose parent is ``pid`` (torchrun starts its workers in their own sessions, so killing
    torchrun's process group would leave them running)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _kill_job(proc):
    """SIGKILL the workers first (no chance to save anything), then torchrun."""
    for pid in _children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.compat
def test_resume_after_sigkill_is_bitwise_identical(corpus, tmp_path):
    """Run A: 8 iterations. Run B: same flags, SIGKILLed (torchrun and both ranks) right after the
    iteration-4 checkpoint; run C resumes it. Iterations 5-8 of C equal A's bit for bit, with
    dropout on and r mid-anneal (warm-up 2, anneal over iterations 2-7)."""
    a = tmp_path / "a"
    torchrun(SCRIPT, 2, base_args(corpus, **RESUME, **{"--save": str(a)}))

    b = tmp_path / "b"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", SCRIPT,
           *base_args(corpus, **RESUME, **{"--save": str(b)})]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "saved checkpoint at iteration       4" in line:
                _kill_job(proc)
                break
    finally:
        if proc.poll() is None:
            _kill_job(proc)
        proc.wait(timeout=60)
    assert any("saved checkpoint at iteration       4" in l for l in seen), "".join(seen)[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert (b / "latest_checkpointed_iteration.txt").read_text() == "4"

    log = torchrun(SCRIPT, 2, base_args(corpus, **RESUME, **{
        "--save": str(b), "--load": str(b), "--metrics-file": str(tmp_path / "c.jsonl")}))
    assert "loaded iteration 4 (32 samples)" in log, log[-4000:]
    rows_a, rows_c = _train_rows(a / "metrics.jsonl"), _train_rows(tmp_path / "c.jsonl")
    assert sorted(rows_c) == [5, 6, 7, 8]
    assert 1.0 < rows_c[5]["train/reweight r"] < 5.0  # mid-anneal at the resume point
    for it in (5, 6, 7, 8):
        for key in COMPARED:
            assert rows_c[it][key] == rows_a[it][key], (it, key, rows_c[it][key], rows_a[it][key])


@pytest.mark.parametrize("over,flag", [
    ({"--global-batch-size": 3}, "--global-batch-size"),
    ({"--tensor-model-parallel-size": 2}, "--tensor-model-parallel-size"),
    ({"--train-data-path-missing": True}, "--train-data-path"),
    ({"--small-tokenizer": True}, "--tokenizer-model"),
    ({"--sample-reweight-schedule": "linear"}, "--sample-reweight-anneal-iters"),
    ({"--no-such-megatron-flag": 1}, "--no-such-megatron-flag"),
])
def test_bad_input_fails_before_training(corpus, tmp_path, over, flag):
    over = dict(over)
    args = base_args(corpus, **{k: v for k, v in over.items()
                                if k not in ("--train-data-path-missing", "--small-tokenizer")})
    if "--train-data-path-missing" in over:
        args[args.index(corpus["alpha_train"])] = str(tmp_path / "nowhere")
    if "--small-tokenizer" in over:
        from megatron_rw.data.tokenizer import train_sentencepiece
        small = train_sentencepiece(stdlib_docstrings(), tmp_path / "small.model", vocab_size=400,
                                    num_threads=1)
        args[args.index(corpus["tokenizer"])] = str(small)
    with pytest.raises(RuntimeError) as err:
        torchrun(SCRIPT, 1, args)
    assert flag in str(err.value)
    assert not iteration_lines(str(err.value))


def test_data_path_with_split(corpus, tmp_path):
    args = base_args(corpus, **{"--train-iters": 2, "--eval-interval": 2, "--global-batch-size": 2,
                                "--metrics-file": str(tmp_path / "m.jsonl")})
    args = args[:args.index("--train-data-path")]
    args += ["--data-path", "1", corpus["alpha_train"], "1", corpus["beta_train"], "--split", "90,10,0"]
    log = torchrun(SCRIPT, 1, args)
    assert len(iteration_lines(log)) == 2
    valid = [r for r in read_metrics(tmp_path / "m.jsonl") if "valid/all/lm loss" in r][-1]
    assert {"valid/alpha/lm loss", "valid/beta/lm loss"} <= set(valid)
