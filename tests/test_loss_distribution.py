import json

import pytest

from benchmarks.quality import loss_distribution

NAMES = ["books", "code", "duplicated", "random"]


def _write_run(tmp_path):
    """A fake run: 4 logged micro-batches of 8 rows, domain ids in the manifest's blend order."""
    data = tmp_path / "data"
    data.mkdir()
    train = " ".join(f"0.25 /x/megatron/{n}_train" for n in NAMES)
    (data / "manifest.json").write_text(json.dumps({"data_path": {"train": train}}))
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for it in (50, 100):
        for mb in range(2):
            # clean rows 5.0 .. 5.5, one memorised (2.0) and one random-token row (9.0)
            loss = [5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 2.0, 9.0]
            rows.append({"iteration": it, "micro_batch": mb, "r": 0.4 if it > 60 else float("inf"),
                         "loss": loss, "normalised": [0.0] * 8, "weight": [1.0] * 8,
                         "valid": [True] * 8, "domain": [0, 1, 0, 1, 0, 1, 2, 3]})
    (run / "sample_weights.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run, data


def test_report(tmp_path, capsys):
    run, data = _write_run(tmp_path)
    out = tmp_path / "out.json"
    assert loss_distribution.main(["--run", str(run), "--data", str(data), "--out", str(out),
                                   "--windows", "0:60,60:200", "--burn-in", "40"]) == 0
    report = json.loads(out.read_text())
    assert report["rows_per_micro_batch"] == [8]
    w = report["windows"]["0-59"]
    # quartiles of the 8 losses: q25 = 5.075, q50 = 5.25, q75 = 5.425 -> IQR 0.35
    assert w["random"]["z"]["q50"] == pytest.approx((9.0 - 5.25) / 0.35)
    assert w["duplicated"]["z"]["q50"] == pytest.approx((2.0 - 5.25) / 0.35)
    assert w["clean"]["share_z_above"]["1"] == 0.0
    rob = report["replay"]["robust:0.4"]
    lin = report["replay"]["linupper:0.4"]
    assert rob["random"]["mean_weight"] < 1 < lin["random"]["mean_weight"]
    assert rob["duplicated"]["mean_weight"] < 0.5
    assert rob["random_rows_above_batch_median_weight"] == 0.0
    assert lin["random_rows_above_batch_median_weight"] == 1.0
    assert len(report["sensitivity"]) == 36
    assert report["logged"]["random"]["mean_weight"] == 1.0
    assert "random" in capsys.readouterr().out
