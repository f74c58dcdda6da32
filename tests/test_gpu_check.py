"""benchmarks/gpu/gpu_check.py without a GPU: it exits at once, and the parts that read, summarise,
plot and write results work on synthetic and on real (CPU-sized) inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.gpu import gpu_check as G
from benchmarks.gpu import gpu_check_report as R
from tests.workers.launch import REPO

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_a[uniform-mean]" time="0.1"/>
<testcase classname="tests.test_gpu" name="test_b"><failure message="assert 1 == 2">E   assert 1 == 2</failure></testcase>
<testcase classname="tests.test_gpu_pretrain" name="test_c"><skipped message="needs a CUDA device"/></testcase>
<testcase classname="tests.test_gpu" name="test_d"><error message="fixture">boom</error></testcase>
</testsuite></testsuites>"""


def run_scalars(shift=0.0, iters=(5, 10, 15, 20), warmup=10):
    """What a run of Megatron's loop leaves in TensorBoard (megatron_rw.megatron_training.run_log's shape): step
    keys every 5 iterations, two validation sets every 10."""
    scalars = {}
    for it in iters:
        live = it > warmup
        row = {"lm loss": 8.0 - 0.1 * it + shift,
               "weighted lm loss": 8.0 - 0.1 * it + shift + 0.05 * live,
               "sample weight ess": 0.9 if live else 1.0,
               "sample share/books": 0.5, "sample share/code": 0.5,
               "sample weight share/books": 0.6 if live else 0.5,
               "sample weight share/code": 0.4 if live else 0.5}
        if it > iters[0]:  # Megatron leaves out the first iteration's time
            row["iteration-time"] = (100.0 + it) / 1e3
        if it % 10 == 0:
            row.update({"lm loss validation-books": 7.0 - 0.1 * it + shift,
                        "lm loss validation-code": 7.5 - 0.1 * it + shift,
                        "lm loss validation-books ppl": 1.0})
        scalars[it] = row
    return scalars


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_exits_at_once_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.gpu_check", "--out-dir", str(tmp_path)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == G.NO_CUDA == 3
    assert "no CUDA device found" in proc.stderr and "docs/gpu_check.md" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_parse_junit(tmp_path):
    path = tmp_path / "r.xml"
    path.write_text(JUNIT)
    out = R.parse_junit(str(path))
    assert (out["passed"], out["failed"], out["skipped"]) == (1, 2, 1)
    assert out["cases"]["tests/test_gpu.py::test_a[uniform-mean]"] == "passed"
    assert out["cases"]["tests/test_gpu_pretrain.py::test_c"] == "skipped"
    assert out["cases"]["tests/test_gpu.py::test_d"] == "error"
    assert "assert 1 == 2" in out["failures"]["tests/test_gpu.py::test_b"]


def test_curves_and_quality_summary():
    runs = {"uniform": R.curves(run_scalars()), "linupper": R.curves(run_scalars(shift=-0.5))}
    c = runs["uniform"]
    assert c["train"]["iteration"] == [5, 10, 15, 20]
    assert c["valid"]["iteration"] == [10, 20] and set(c["valid"]) == {"iteration", "books",
                                                                        "code"}
    assert c["domain_weight"]["books"] == [1.0, 1.0, 1.2, 1.2]
    s = R.summarise_quality(runs, warmup_iters=10, last=2)
    assert s["uniform"]["iterations"] == 20
    assert math.isclose(s["uniform"]["train_lm_loss_last2_logs"], 8.0 - 1.75)
    assert math.isclose(s["uniform"]["final_valid_lm_loss"]["books"], 5.0)
    assert s["uniform"]["median_iteration_ms"] == pytest.approx(115.0)  # 110, 115, 120
    assert s["linupper"]["mean_ess_after_burn_in"] == 0.9
    assert s["linupper"]["mean_domain_weight_after_burn_in"] == pytest.approx(
        {"books": 1.2, "code": 0.8})
    diff = s["linupper"]["minus_uniform"]
    assert math.isclose(diff["train_lm_loss"], -0.5)
    assert math.isclose(diff["final_valid_lm_loss"]["books"], -0.5)
    assert "minus_uniform" not in s["uniform"]


def test_plot_and_results_file(tmp_path):
    runs = {"uniform": R.curves(run_scalars()), "linupper": R.curves(run_scalars(shift=-0.5))}
    png = R.plot_losses(runs, str(tmp_path / "sub" / "loss.png"), "title", warmup_iters=10)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    path = str(tmp_path / "results" / "gpu_check.json")
    R.write_results(path, {"curves": runs, "x": [math.nan, -math.inf]})
    with open(path) as f:
        text = f.read()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    # the first step has no iteration time (NaN), and stays strict JSON
    assert loaded["x"] == ["nan", "-inf"]
    assert loaded["curves"]["uniform"]["train"]["iteration time (ms)"][0] == "nan"
    assert not os.path.exists(path + ".tmp")


def test_status_and_console_lines():
    passed = {"status": "passed", "cases": {}, "passed": 20, "failed": 0, "skipped": 0, "seconds": 80}
    skipped = {"status": "skipped", "why": "30 s left of the budget, 45 s needed"}
    failed = {"status": "failed", "rc": None, "timed_out": True, "failures": {"t::a": "x"}}
    assert R.overall_status({"tests": passed}) == "passed"
    assert R.overall_status({"tests": passed, "overhead": skipped}) == "incomplete"
    assert R.overall_status({"tests": failed, "overhead": skipped}) == "failed"
    assert R.phase_line(passed) == "20 passed, 0 failed, 0 skipped in 80 s"
    assert R.phase_line(skipped).startswith("skipped (30 s left")
    assert R.phase_line(failed) == "FAILED (timed out): t::a"


def test_software_names_transformer_engine():
    info = G.software()
    assert info["packages"]["megatron-core"] and info["packages"]["torch"]
    if not info["transformer_engine"]["available"]:
        assert "64 MiB" in info["transformer_engine"]["why"]


def test_gpu_runs_flags_parse_for_one_gpu(monkeypatch):
    """A flag Megatron's parser rejects would only show on the device: parse them here."""
    megatron_arguments = pytest.importorskip("megatron.training.arguments")
    from benchmarks.megatron_args import parse_flags
    from megatron_rw import add_sample_reweight_args

    data = ["--train-data-path", "x", "--tokenizer-type", "GPTSentencePieceTokenizer",
            "--tokenizer-model", "x.model", "--save", "runs/x", "--bf16"]  # what the launcher adds
    config = os.path.join(REPO, "examples", "configs", "gpt_125m.sh")
    flags = G.config_flags(config, ("MODEL_ARGS", "TRAIN_ARGS", "REWEIGHT_ARGS"))
    # The quality phase: Megatron's loop through the launcher, 1 GPU.
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt.py", *flags, *G.QUALITY_FLAGS,
                                      "--sample-reweight-strategy", "linupper", *data])
    args = megatron_arguments.parse_args(extra_args_provider=add_sample_reweight_args)
    assert args.global_batch_size // args.micro_batch_size == 2  # micro-batches per step, DP 1
    assert (args.seq_length, args.hidden_size, args.num_layers, args.train_iters) == (1024, 768, 12, 200)
    assert args.sample_reweight_warmup_iters == G.QUALITY_WARMUP < args.train_iters
    assert args.lr_warmup_iters < args.train_iters and args.log_timers_to_tensorboard
    # 200 steps of 16 x 1024 tokens stay under one epoch of the small corpus (3.9 M train tokens).
    assert args.train_iters * args.global_batch_size * args.seq_length < 3.9e6
    # The overhead run: the config's model and optimizer at GPT-2's vocabulary, padded as
    # Megatron pads it (benchmarks/gpu/gpt_model.py).
    args = parse_flags(G.config_flags(config) + ["--micro-batch-size", "8", "--bf16"] + data)
    divisor = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    assert math.ceil(50257 / divisor) * divisor == 50304 and args.bf16


def test_quality_phase_needs_a_prepared_corpus(tmp_path):
    out = G.phase_quality(str(tmp_path), str(tmp_path), 10, corpus=str(tmp_path / "none"))
    assert out["status"] == "failed" and "megatron_rw.data.prepare" in out["why"]


def test_run_logged_kills_the_tree_at_its_time_limit(tmp_path):
    # A child that starts a grandchild in a session of its own, as torchrun does with its workers.
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)'], start_new_session=True); print('started', flush=True); "
              "time.sleep(60)")
    out = G.run_logged([sys.executable, "-c", script], str(tmp_path / "log"), timeout=3)
    assert out["timed_out"] and out["rc"] is None and "started" in out["log_tail"]
    assert out["seconds"] < 30


# --------------------------------------------------- the phases for real, CPU-sized (torchrun)
@pytest.mark.slow
def test_tests_phase_reads_pytest(tmp_path):
    out = G.phase_tests(str(tmp_path), str(tmp_path), timeout=300)
    if torch.cuda.is_available():
        assert out["status"] == "passed", out
    else:  # every GPU test skips, and a check that skipped its tests did not pass
        assert out["status"] == "failed" and out["rc"] == 0
        assert out["passed"] == 0 and out["skipped"] == len(out["cases"]) >= 20


@pytest.mark.slow
def test_overhead_phase_tiny(tmp_path):
    tiny = ["--pairs", "3", "--warmup", "1", "--vocab", "500", "--micro", "2",
            "--micro-batch-size", "2", "--model-args",
            "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 "
            "--max-position-embeddings 64"]
    out = G.phase_overhead(str(tmp_path), str(tmp_path), timeout=300, extra=tiny)
    assert out["status"] == "passed", out
    assert out["results"]["ratio_step"]["n"] == 3 and out["results"]["ratio_step"]["median"] > 0
    assert out["settings"]["tokens_per_step"] == 2 * 2 * 64
    assert len(out["raw_seconds"]["reweighted"]["step"]) == 3
    assert "OVERHEAD" not in R.phase_line(out) and "pairs" in R.phase_line(out)


@pytest.mark.slow
def test_quality_phase_tiny(tmp_path):
    from tests.data.tiny_corpus import build_tiny_corpus

    corpus = build_tiny_corpus(tmp_path / "corpus")["dir"]
    flags = ["--num-layers", "2", "--hidden-size", "32", "--seq-length", "32",
             "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
             "--train-iters", "4", "--lr-warmup-iters", "1", "--log-interval", "1",
             "--eval-interval", "2", "--eval-iters", "1", "--save-interval", "4",
             "--make-vocab-size-divisible-by", "64", "--sample-reweight-r", "0.5",
             "--sample-reweight-warmup-iters", "2"]
    out = G.phase_quality(str(tmp_path), str(tmp_path), 400, corpus=corpus,
                          config="examples/configs/tiny_cpu.sh", flags=flags, warmup_iters=2)
    assert out["status"] == "passed", json.dumps(out)[-3000:]
    s = out["summary"]
    assert set(s) == {"uniform", "linupper"} and s["uniform"]["iterations"] == 4
    assert s["uniform"]["mean_ess_after_burn_in"] == 1.0 > s["linupper"]["mean_ess_after_burn_in"]
    assert set(s["linupper"]["final_valid_lm_loss"]) == {"alpha", "beta"}
    assert set(s["linupper"]["mean_domain_weight_after_burn_in"]) == {"alpha", "beta"}
    png = R.plot_losses(out["curves"], str(tmp_path / "loss.png"), "tiny", 2)
    assert os.path.getsize(png) > 1000


@pytest.mark.parametrize("budget, status, rc", [(390, "passed", 0), (95, "incomplete", 1)])
def test_main_budget_and_files(tmp_path, monkeypatch, budget, status, rc):
    """The orchestration with stand-in phases: the budget leaves the last phase out when too
    little is left, and the results file and the plot land in --out-dir."""
    curves = {"uniform": R.curves(run_scalars()), "linupper": R.curves(run_scalars(shift=-0.5))}
    calls = []

    def fake(name, result):
        def run(work, log_dir, timeout, *args, **kwargs):
            calls.append((name, timeout))
            return result
        return run

    monkeypatch.setattr(G, "find_cuda_device", lambda: ("Stand-in GPU", None))
    monkeypatch.setattr(G, "gpu", lambda: {"name": "Stand-in GPU"})
    monkeypatch.setattr(G, "phase_tests", fake("tests", {"status": "passed", "cases": {}, "passed": 1,
                                                         "failed": 0, "skipped": 0, "seconds": 1}))
    monkeypatch.setattr(G, "phase_overhead", fake("overhead", {"status": "passed", "x": 1}))
    monkeypatch.setattr(G, "phase_quality", fake("quality", {
        "status": "passed", "curves": curves, "summary": R.summarise_quality(curves, 10)}))
    assert G.main(["--out-dir", str(tmp_path), "--budget-s", str(budget)]) == rc
    results = R.read_json(str(tmp_path / "gpu_check.json"))
    assert results["status"] == status and results["device"]["name"] == "Stand-in GPU"
    assert [c[0] for c in calls] == (["tests", "overhead", "quality"] if rc == 0
                                     else ["tests", "overhead"])
    assert all(t <= G.PHASE_LIMITS[n][0] for n, t in calls)
    assert os.path.exists(tmp_path / "gpu_check_loss.png") == (rc == 0)
    if rc:
        assert results["phases"]["quality"]["status"] == "skipped"
