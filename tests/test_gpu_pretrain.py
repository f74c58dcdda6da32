"""``python -m megatron_rw.pretrain_gpt`` on one GPU in bf16: it trains, saves, resumes and logs the
reweighting keys. Skipped without CUDA (tests/test_pretrain_gpt.py runs the same on CPU/gloo)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.data.tiny_corpus import build_tiny_corpus
from tests.test_pretrain_gpt import SCRIPT, _train_rows, base_args, iteration_lines, read_metrics
from tests.workers.launch import torchrun

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Every key the hook reports, as the entry point logs it (the tiny corpus has two domains).
REWEIGHT_KEYS = ("train/lm loss", "train/weighted lm loss", "train/sample weight ess",
                 "train/sample weight max", "train/sample weight min", "train/sample loss range",
                 "train/invalid samples", "train/reweight r", "train/sample weight/alpha",
                 "train/sample weight/beta", "train/sample loss/alpha", "train/sample loss/beta")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def test_bf16_run_saves_resumes_and_logs_reweighting(corpus, tmp_path):
    """Run 1 stops after the iteration-4 checkpoint (--exit-interval), run 2 loads it and trains
    iterations 5-8. linupper, r = 0.5 after a burn-in of 2 iterations (base_args)."""
    ckpt = tmp_path / "ckpt"
    over = {"--bf16": True, "--train-iters": 8, "--save-interval": 4, "--eval-interval": 4,
            "--save": str(ckpt), "--log-sample-weights": True}
    first = torchrun(SCRIPT, 1, base_args(corpus, **over, **{"--exit-interval": 4}))
    assert "; cuda" in first, first[-3000:]
    assert len(iteration_lines(first)) == 4, first[-3000:]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "4"

    second = torchrun(SCRIPT, 1, base_args(corpus, **over, **{"--load": str(ckpt)}))
    assert "loaded iteration 4 (32 samples)" in second, second[-3000:]
    assert [l.split()[1] for l in iteration_lines(second)] == ["5/", "6/", "7/", "8/"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "8"

    rows = _train_rows(ckpt / "metrics.jsonl")  # both runs append to the same file
    assert sorted(rows) == list(range(1, 9))
    for it, row in rows.items():
        assert set(REWEIGHT_KEYS) <= set(row), (it, sorted(row))
        assert all(math.isfinite(row[k]) for k in REWEIGHT_KEYS if k != "train/reweight r"), row
        assert 2.0 < row["train/lm loss"] < 8.0  # ln(512) = 6.2 at the start
        assert row["train/invalid samples"] == 0
    assert rows[1]["train/sample weight ess"] == 1.0 and rows[2]["train/sample weight ess"] == 1.0
    assert rows[1]["train/reweight r"] == math.inf
    for it in (5, 8):  # after the resume: the schedule and the weights are live
        assert rows[it]["train/reweight r"] == 0.5
        assert rows[it]["train/sample weight ess"] < 1.0
        assert rows[it]["train/weighted lm loss"] != rows[it]["train/lm loss"]
    valid = [r for r in read_metrics(ckpt / "metrics.jsonl") if "valid/all/lm loss" in r]
    assert [r["iteration"] for r in valid] == [4, 8]
    samples = read_metrics(ckpt / "sample_weights.jsonl")
    assert {s["iteration"] for s in samples} == set(range(1, 9))
    assert any(w != 1.0 for s in samples if s["iteration"] > 4 for w in s["weight"])
