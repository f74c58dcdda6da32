"""benchmarks/preview_check: the comparisons, on synthetic metrics rows (no training)."""

import json

import pytest

from benchmarks.quality import preview_check as pc


def _rows(loss_shift=0.0):
    return {it: {"iteration": it, "train/lm loss": 5.0 + it / 1000 + loss_shift,
                 "train/grad norm": 1.0, "train/sample loss/random": 7.8,
                 "train/learning rate": 1e-3, "train/iteration time (ms)": float(it),
                 **({"valid/all/lm loss": 5.1} if it % 50 == 0 else {})}
            for it in range(10, 101, 10)}


def test_unchanged_counts_every_loss_and_names_the_differences():
    base = _rows()
    same = {it: {**row, "train/iteration time (ms)": 0.0, "train/preview weight/random": 0.4}
            for it, row in base.items()}
    u = pc.unchanged(same, base)  # timing and extra preview keys are not compared
    assert (u["values_compared"], u["values_different"]) == (10 * 3 + 2, 0)
    off = {it: dict(row) for it, row in base.items()}
    off[60]["train/lm loss"] = 5.06 + 1e-15  # one ulp-sized change is caught
    off[100].pop("valid/all/lm loss")        # so is a missing value
    u = pc.unchanged(off, base)
    assert u["values_different"] == 2
    assert [(d["iteration"], d["key"]) for d in u["first_differences"]] == [
        (60, "train/lm loss"), (100, "valid/all/lm loss")]


def test_read_rows_keeps_the_last_of_a_resumed_runs_repeats(tmp_path):
    rows = [{"iteration": 10, "train/lm loss": 1.0}, {"iteration": 10, "valid/all/lm loss": 2.0},
            {"iteration": 10, "train/lm loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert pc.read_rows(str(tmp_path)) == {10: {"iteration": 10, "train/lm loss": 3.0,
                                                "valid/all/lm loss": 2.0}}


def test_mean_after_burn_in_and_the_comparison_with_a_real_run():
    rows = {it: {"train/preview weight/random": 100.0 if it <= 40 else w,
                 "train/preview weight/books": 1.0}
            for it, w in zip(range(10, 101, 10), [0] * 4 + [0.2, 0.4, 0.6, 0.2, 0.4, 0.6])}
    preview = pc.mean_after(rows, pc.PREVIEW_WEIGHT, burn_in=40)
    assert preview == pytest.approx({"books": 1.0, "random": 0.4})
    real = {"1234": {"random": 0.5, "books": 1.1}, "2345": {"random": 0.3, "books": 1.2},
            "3456": {"random": 0.6, "books": 1.0}}
    c = pc.compare(preview, real, {"random": 0.1, "books": 0.9})
    assert c["random"]["real_median"] == 0.5 and c["random"]["real_mass"] == pytest.approx(0.05)
    assert c["random"]["preview_mass"] == pytest.approx(0.04)
    assert c["books"]["real_per_seed"] == {"1234": 1.1, "2345": 1.2, "3456": 1.0}
