"""Cheap checks of the cost benchmarks (no torchrun): the single-process measurements run, find no
host synchronisation and produce the keys results/weights_cost.json is built from; the scaling
model's arithmetic; the overhead analysis of interleaved pairs."""

import math

import torch

from benchmarks.cost import scaling_model
from benchmarks.cost.overhead import analyse
from benchmarks.cost.weights_cost import measure_local


def test_weights_cost_local_tiny():
    local = measure_local(sizes=(64, 256), strategies=("uniform", "linupper"), repeats=3)
    assert set(local) == {"compute_sample_weights_us", "loss_fn_us", "host_sync_calls",
                          "scaling_model"}
    assert set(local["loss_fn_us"]["b4_s32"]) == {"baseline", "reweighted"}
    assert {k: v for k, v in local["host_sync_calls"].items() if v} == {}
    assert len(local["host_sync_calls"]) == 6  # 4 strategies + 2 contracts of the hook
    lin = local["compute_sample_weights_us"]["linupper"]
    assert set(lin) == {"64", "256"} and all(lin[n]["median"] > 0 for n in lin)
    model = local["scaling_model"]
    assert set(model) == {"assumptions", "weights_fit", "rows"}
    assert [r["dp"] for r in model["rows"]] == list(scaling_model.DP_SIZES)


def test_scaling_model_arithmetic():
    assert scaling_model.allgather_bytes(1024, 4) == {"send": 16368, "recv": 16368,
                                                      "gathered": 16384}
    # 2 ranks: one hop either way, plus 4 of the 8 bytes at 25 GB/s = 25,000 bytes/us.
    assert math.isclose(scaling_model.ring_us(2, 8, 5.0), 5.0 + 4 / 25_000)
    assert math.isclose(scaling_model.log_depth_us(1024, 0, 10.0), 100.0)
    assert math.isclose(scaling_model.ring_us(1024, 0, 10.0), 10230.0)
    fit = scaling_model.fit_linear([1.0, 2.0, 3.0], [5.0, 7.0, 9.0])
    assert math.isclose(fit["t0_us"], 3.0) and math.isclose(fit["c_us_per_sample"], 2.0)


def test_overhead_analysis_pairs():
    base = {"step": [0.10, 0.20, 0.10, 0.40], "loss_fn": [0.001] * 4, "report": [0.0] * 4}
    rew = {"step": [0.11, 0.22, 0.11, 0.44], "loss_fn": [0.002] * 4, "report": [0.0] * 4}
    out = analyse({"samples_s": {"baseline": base, "reweighted": rew}})
    assert math.isclose(out["ratio_step"]["median"], 1.1)
    assert math.isclose(out["baseline_step_ms"]["median"], 150.0)
    lo, hi = out["ratio_step"]["median_ci95"]
    assert lo - 1e-9 <= 1.1 <= hi + 1e-9


def test_unit_costs_runs_every_variant(tmp_path):
    """Two processes, 3 rounds: every variant timed, ratios against the right reference."""
    from benchmarks.cost import unit_costs

    out = tmp_path / "unit_costs.json"
    assert unit_costs.main(["--rounds", "3", "--out", str(out)]) == 0
    import json
    result = json.loads(out.read_text())
    assert set(result["us"]) == {"sample", "document", "document+ess", "gather b", "gather b*32",
                                 "stats fixed r (2 all-reduces)",
                                 "stats target ESS (5 all-reduces)"}
    assert all(s["n"] == 3 and s["median"] > 0 for s in result["us"].values())
    assert result["ratio"]["sample / sample"]["median"] == 1.0
    assert "stats target ESS (5 all-reduces) / gather b" in result["ratio"]


def test_weights_variants_cost_times_every_variant_without_host_syncs():
    from benchmarks.cost import weights_variants_cost as wvc

    assert wvc.host_syncs() == {v: [] for v in wvc.VARIANTS}
    result = wvc.measure(sizes=(64, 256), repeats=3)
    assert set(result) == {"linupper", "robust", "linupper+ess", "robust+ess"}
    assert all(result[v][n]["us"]["median"] > 0 for v in result for n in ("64", "256"))
    assert result["linupper"]["256"]["ratio"]["median"] == 1.0  # each repeat against itself
    # the target-ESS path really reaches its target (it is what is being timed)
    w = wvc.with_ess(4.0 + torch.rand(256, generator=torch.Generator().manual_seed(0)), "robust")
    assert abs(float(w.sum() ** 2 / (256 * (w * w).sum())) - wvc.TARGET_ESS) < 0.01


def test_collective_latency_times_both_collectives(tmp_path):
    """benchmarks.cost.collective_latency on DP 2 for a few rounds (one torchrun launch)."""
    from benchmarks.cost import collective_latency as cl

    row = cl.measure(2, rounds=4, warmup=1)
    assert row["dp"] == 2 and row["global_micro_batch"] == 2 * cl.B
    assert row["gather_us"]["n"] == row["reduce_us"]["n"] == 4
    assert row["gather_us"]["median"] > 0 and row["reduce_us"]["median"] > 0
    assert len(row["ratio_reduce_over_gather"]["median_ci95"]) == 2
    cl.plot([row], str(tmp_path / "latency.png"))
    assert (tmp_path / "latency.png").stat().st_size > 5_000
