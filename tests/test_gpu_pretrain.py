"""``examples/pretrain_gpt_rw.sh`` on one GPU in bf16 (Megatron's own loop): it trains, saves,
resumes and logs the reweighting keys. Skipped without CUDA (tests/test_launcher.py runs the
launcher on CPU/gloo)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from tests.data.tiny_corpus import build_tiny_corpus
from tests.test_launcher import SHRINK, iteration_lines, launch, scalars
from tests.workers.launch import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Every key the hook reports in Megatron's loop (the tiny corpus has two domains).
REWEIGHT_KEYS = ("lm loss", "weighted lm loss", "sample weight ess", "sample weight max",
                 "sample weight min", "sample loss range", "invalid samples",
                 "sample weight share/alpha", "sample weight share/beta",
                 "sample share/alpha", "sample share/beta")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def test_bf16_run_saves_resumes_and_logs_reweighting(corpus, tmp_path):
    """Run 1 stops after the iteration-4 checkpoint (--exit-interval), run 2 loads it and trains
    iterations 5-8. The tiny_cpu config shrunk (tests/test_launcher.py), linupper, r = 0.5
    after a burn-in of 2 iterations, bf16 (the launcher's default with CUDA)."""
    out = tmp_path / "run"
    flags = [*SHRINK, "--train-iters", "8", "--save-interval", "4", "--eval-interval", "4",
             "--log-interval", "1", "--sample-reweight-warmup-iters", "2",
             "--sample-reweight-r", "0.5", "--log-sample-weights"]
    env = dict(DATA=corpus["dir"], OUT=str(out), GPUS_PER_NODE="1",
               CONFIG=os.path.join(REPO, "examples", "configs", "tiny_cpu.sh"))
    first = launch([*flags, "--exit-interval", "4"], **env)
    log = first.stdout + first.stderr
    assert "cuda/nccl" in log, log[-3000:]
    assert len(iteration_lines(log)) == 4, log[-3000:]
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "4"

    second = launch(flags, **env)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert [l.split("iteration")[1].split("/")[0].strip() for l in iteration_lines(log)] == \
        ["5", "6", "7", "8"]
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "8"

    rows = scalars(out)  # both runs' event files
    assert set(range(1, 9)) <= set(rows)
    for it in range(1, 9):
        row = rows[it]
        assert set(REWEIGHT_KEYS) <= set(row), (it, sorted(row))
        assert all(math.isfinite(row[k]) for k in REWEIGHT_KEYS), row
        assert 2.0 < row["lm loss"] < 8.0  # ln(512) = 6.2 at the start
        assert row["invalid samples"] == 0
    assert rows[1]["sample weight ess"] == 1.0 and rows[2]["sample weight ess"] == 1.0
    for it in (5, 8):  # after the resume: the schedule and the weights are live
        assert rows[it]["sample weight ess"] < 1.0
        assert rows[it]["weighted lm loss"] != rows[it]["lm loss"]
    assert {"lm loss validation-alpha", "lm loss validation-beta"} <= set(rows[8])
    samples = [json.loads(l) for l in (out / "sample_weights.jsonl").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == set(range(1, 9))
    assert any(w != 1.0 for s in samples if s["iteration"] > 4 for w in s["weight"])
