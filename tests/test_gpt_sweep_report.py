"""benchmarks/quality/gpt_sweep_report.py on synthetic run directories with known numbers: paired
differences, the verdict, steps to uniform's final loss (interpolated, or not reached), weights
after burn-in, and that unfinished runs stay out of every comparison."""

import json
import math
import os

import pytest

from benchmarks.quality import gpt_sweep_report as rep

SEEDS = (1234, 2345, 3456)
EVALS = range(50, 401, 50)
# final (iteration 400) validation losses per seed; valid/all falls by 0.1 per 50 iterations
UNIFORM = {"all": (5.00, 5.02, 5.04), "books": (4.0, 4.1, 4.2), "code": (6.0, 6.01, 6.02)}
LINUPPER = {"all": (4.90, 4.94, 4.92),   # -0.10 -0.08 -0.12: same sign, |median| 0.10 > 0.04
            "books": (4.05, 4.05, 4.21),  # +0.05 -0.05 +0.01: mixed signs
            "code": (6.05, 6.06, 6.07)}   # +0.05 each: same sign, 0.05 > spread 0.02


def _write_run(root, name, finals, weights, last=400):
    """A metrics.jsonl like pretrain_gpt writes: train rows every 10 iterations (reweight r is
    infinite during the 40-iteration burn-in) and separate eval rows every 50."""
    os.makedirs(root / name)
    rows = []
    for it in range(10, last + 1, 10):
        burn = it <= 40
        rows.append({"iteration": it, "train/lm loss": 7.0, "train/reweight r":
                     math.inf if burn else 0.4,
                     # weights during burn-in are 1 in reality; 100 proves they are skipped
                     **{f"train/sample weight/{d}": 100.0 if burn else w
                        for d, w in weights.items()}})
        if it in EVALS:
            rows.append({"iteration": it, **{f"valid/{d}/lm loss": f + (400 - it) / 500
                                             for d, f in finals.items()}})
    with open(root / name / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def runs_dir(tmp_path):
    for k, seed in enumerate(SEEDS):
        _write_run(tmp_path, f"clean-uniform-r1-s{seed}", {d: v[k] for d, v in UNIFORM.items()},
                   {"books": 1.0, "code": 1.0})
        _write_run(tmp_path, f"clean-linupper-r0.4-s{seed}",
                   {d: v[k] for d, v in LINUPPER.items()}, {"books": 0.8, "code": 1.2})
    # an unfinished run whose numbers would wreck every statistic if it were used
    _write_run(tmp_path, "clean-linupper-r0.4-s4567", {"all": 0.0, "books": 0.0, "code": 0.0},
               {"books": 50.0, "code": 50.0}, last=200)
    os.makedirs(tmp_path / "not-a-run")  # ignored: no run name, no metrics
    return tmp_path


def test_steps_to_target_interpolates_and_reports_not_reached():
    curve = [(50, 6.0), (100, 5.5), (150, 5.0)]
    assert rep.steps_to_target(curve, 5.5) == 100.0
    assert rep.steps_to_target(curve, 5.2) == pytest.approx(130.0)  # 100 + 0.3 / 0.5 * 50
    assert rep.steps_to_target(curve, 7.0) == 50.0  # below target at the first evaluation
    assert rep.steps_to_target(curve, 4.9) is None
    # first crossing counts, even if the curve goes back up afterwards
    assert rep.steps_to_target([(50, 6.0), (100, 4.0), (150, 6.0)], 5.0) == 75.0


def test_verdict_rules():
    assert rep.verdict([-0.1, -0.08, -0.12], [5.0, 5.02, 5.04]) == "lower"
    assert rep.verdict([0.1, 0.08, 0.12], [5.0, 5.02, 5.04]) == "higher"
    assert rep.verdict([-0.1, 0.08, -0.12], [5.0, 5.02, 5.04]) == "within seed noise"
    # same sign but the median (0.03) is inside uniform's spread (0.04)
    assert rep.verdict([-0.03, -0.02, -0.05], [5.0, 5.02, 5.04]) == "within seed noise"
    assert rep.verdict([-0.1, -0.1], [5.0, 5.02]) == "too few seeds"


def test_report_on_synthetic_runs(runs_dir):
    report = rep.build(str(runs_dir))
    assert report["unfinished"] == ["clean-linupper-r0.4-s4567"]
    assert "clean-linupper-r0.4-s4567" not in report["runs_used"]
    assert len(report["runs_used"]) == 6 and "clean-quadratic-r1-s1234" in report["missing"]
    v = rep.summarise([rep.load_run(str(runs_dir / n)) for n in report["runs"]],
                      {"clean": {"books": 0.25, "code": 0.75}})
    assert set(v) == {"clean-uniform-r1", "clean-linupper-r0.4"}
    lin, uni = v["clean-linupper-r0.4"], v["clean-uniform-r1"]
    assert lin["seeds"] == list(SEEDS)
    assert "vs_uniform" not in uni

    d = lin["vs_uniform"]
    assert [round(x, 6) for x in d["all"]["per_seed"].values()] == [-0.1, -0.08, -0.12]
    assert d["all"]["median"] == pytest.approx(-0.1)
    assert (d["all"]["min"], d["all"]["max"]) == (pytest.approx(-0.12), pytest.approx(-0.08))
    assert d["all"]["uniform_spread"] == pytest.approx(0.04)
    assert (d["all"]["verdict"], d["books"]["verdict"], d["code"]["verdict"]) == \
        ("lower", "within seed noise", "higher")
    # mean of domains, per seed: (+0.05 + 0.05) / 2, (-0.05 + 0.05) / 2, (0.01 + 0.05) / 2
    assert [round(x, 6) for x in d[rep.MEAN_DOMAINS]["per_seed"].values()] == [0.05, 0.0, 0.03]
    assert lin["final"]["all"]["median"] == pytest.approx(4.92)

    # target 5.02 (uniform's median); the curve crosses it at 400 - (5.02 - final) * 500
    st = lin["steps_to_target"]
    assert st["target"] == pytest.approx(5.02)
    assert [round(x) for x in st["per_seed"].values()] == [340, 360, 350]
    assert st["median"] == pytest.approx(350)
    ust = uni["steps_to_target"]["per_seed"]
    assert round(ust["1234"]) == 390 and round(ust["2345"]) == 400 and ust["3456"] is None
    assert uni["steps_to_target"]["median"] == pytest.approx(400)  # not reached counts as inf

    # median curve across seeds at every eval; burn-in rows (weight 100) are excluded
    assert lin["curves"]["all"]["iterations"] == list(EVALS)
    assert lin["curves"]["all"]["max"][-1] == pytest.approx(4.94)
    w = lin["weights"]
    assert w["mean"] == pytest.approx({"books": 0.8, "code": 1.2})
    assert w["mass"] == pytest.approx({"books": 0.2, "code": 0.9})
    assert w["curves"]["books"]["iterations"][0] == 50


def test_blend_shares_and_main_writes_json(runs_dir, tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    blend = "0.3 /d/books_train 0.1 /x/random_train"
    manifest.write_text(json.dumps({"data_path": {"train": blend}}))
    assert rep.blend_shares(str(manifest)) == pytest.approx({"books": 0.75, "random": 0.25})
    assert rep.blend_shares(str(tmp_path / "absent.json")) == {}

    out = tmp_path / "results"
    assert rep.main(["--runs-dir", str(runs_dir), "--out", str(out), "--no-plots"]) == 0
    saved = json.loads((out / "gpt_sweep.json").read_text())
    assert saved["settings"]["iterations"] == 400 and saved["seeds"] == list(SEEDS)
    assert set(saved["definitions"]) >= {"verdict", "steps_to_target", "paired_difference"}
    assert saved["runs"]["clean-uniform-r1-s1234"]["eval"]["all"][-1] == [400, 5.0]
    printed = capsys.readouterr().out
    assert "clean-linupper-r0.4" in printed and "lower" in printed
    assert rep.main(["--runs-dir", str(tmp_path / "empty"), "--out", str(out)]) == 1


def test_plots_are_written(runs_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.quality import gpt_sweep_plots

    names = gpt_sweep_plots.plot_all(rep.build(str(runs_dir)), str(tmp_path))
    assert all((tmp_path / n).stat().st_size > 0 for n in names) and len(names) == 3
