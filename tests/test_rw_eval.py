"""benchmarks/rw_eval*: the evaluation's plan and flags, run bookkeeping, committing only the result
files, ``--list`` with estimates, and the report on synthetic run directories with known numbers
(no training is launched)."""

import json
import math
import os
import subprocess

import pytest

from benchmarks.quality import gpt_sweep, rw_eval, rw_eval_estimate, rw_eval_plan, rw_eval_runs
from benchmarks.quality import rw_eval_report as rep

SEEDS = rw_eval_plan.SEEDS


def _value(flags, name):
    return [flags[i + 1] for i, f in enumerate(flags) if f == name][-1]


def test_plan_is_seed_major_and_complete():
    runs = rw_eval_plan.plan(combo=None, best=None)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * 6 * 3 + 3 * 3 + 3 * 2
    first = [r.seed for r in runs[:6 + 6 + 3 + 3]]
    assert first == [SEEDS[0]] * len(first)  # every variant of seed 1 comes first
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)
    assert {r.seed for r in runs if r.group == "scale"} == set(SEEDS[:2])
    # robust-best and best wait for their flags; nothing else does
    assert {r.name for r in runs if r.variant_flags is None} == (
        {f"{g}-robust-best-s{s}" for g in ("clean", "noisy") for s in SEEDS}
        | {f"scale-best-s{s}" for s in SEEDS[:2]})
    chosen = rw_eval_plan.plan(combo=("--sample-reweight-strategy", "robust", "--x", "1"),
                          best=("--y",))
    combo = next(r for r in chosen if r.name == "noisy-robust-best-s1234")
    assert combo.flags()[-4:] == ["--sample-reweight-strategy", "robust", "--x", "1"]
    assert next(r for r in chosen if r.name == "scale-best-s2345").flags()[-1] == "--y"


def test_variant_flags_and_matched_budgets():
    runs = {r.name: r for r in rw_eval_plan.plan()}
    ess = runs["clean-ess0.7-s1234"].flags()
    assert _value(ess, "--sample-reweight-target-ess") == "0.7"
    assert _value(ess, "--sample-reweight-strategy") == "linupper"
    assert _value(runs["noisy-robust-r1-s3456"].flags(), "--sample-reweight-strategy") == "robust"
    doc = runs["noisy1024-linupper-r1-doc-s2345"].flags()
    assert _value(doc, "--sample-reweight-unit") == "document"
    # the document groups' uniform and sample-unit runs differ from the doc run only in the unit
    sample = runs["noisy1024-linupper-r1-s2345"].flags()
    assert doc[:len(sample)] == sample and doc[len(sample):] == ["--sample-reweight-unit", "document"]
    # every run of the document comparison (uniform included) has the same token budget, and
    # the seq-128 groups' tokens per step
    tiny = rw_eval_runs.config_flags(rw_eval_plan.TINY)
    for name in ("clean-uniform-s1234", "noisy1024-uniform-s1234", "noisy1024-linupper-r1-s1234",
                 "noisy1024-linupper-r1-doc-s1234"):
        f = [*tiny, *runs[name].flags()]
        tokens = int(_value(f, "--seq-length")) * int(_value(f, "--global-batch-size"))
        iters = "400" if name.startswith("clean") else str(rw_eval_plan.DOC_ITERS)
        assert (tokens, _value(f, "--train-iters")) == (32 * 128, iters), name
    assert _value([*tiny, *runs["noisy1024-uniform-s1234"].flags()], "--seq-length") == "1024"
    # the seq-128 groups keep the existing sweep's settings: uniform's flags are the sweep's
    sweep = gpt_sweep.Run("clean", "uniform", 1.0, 1234).flags()
    assert runs["clean-uniform-s1234"].flags() == sweep[:len(gpt_sweep.COMMON) + 2] + sweep[-4:-2]
    scale = runs["scale-linupper-r1-s1234"]
    assert scale.config.endswith("small_cpu.sh") and scale.iters == rw_eval_plan.SCALE_ITERS
    assert _value(scale.flags(), "--train-iters") == str(rw_eval_plan.SCALE_ITERS)


def test_refused_names_the_reason():
    runs = {r.name: r for r in rw_eval_plan.plan(combo=None, best=None)}
    assert rw_eval_runs.refused(runs["clean-uniform-s1234"]) is None
    assert "not chosen" in rw_eval_runs.refused(runs["clean-robust-best-s1234"])
    assert "not chosen" in rw_eval_runs.refused(runs["scale-best-s1234"])
    chosen = {r.name: r for r in rw_eval_plan.plan()}  # the committed choice is one the trainer takes
    assert rw_eval_plan.COMBO_FLAGS is None or rw_eval_runs.refused(chosen["clean-robust-best-s1234"]) is None
    assert rw_eval_plan.BEST_FLAGS is None or rw_eval_runs.refused(chosen["scale-best-s1234"]) is None
    bad = rw_eval_plan.plan(combo=("--sample-reweight-no-such-flag", "1"))
    why = rw_eval_runs.refused(next(r for r in bad if r.variant == "robust-best"))
    assert why.startswith("trainer refuses") and "no-such-flag" in why


def test_run_record_refuses_other_flags(tmp_path):
    run = next(r for r in rw_eval_plan.plan() if r.name == "clean-linupper-r1-s1234")
    assert rw_eval_runs.check_record(run, str(tmp_path)) is None  # written
    assert rw_eval_runs.check_record(run, str(tmp_path)) is None  # same flags: fine
    saved = json.loads((tmp_path / run.name / "run.json").read_text())
    assert saved["flags"] == run.flags() and saved["config"] == "examples/configs/tiny_cpu.sh"
    rw_eval_runs.note_time(run, str(tmp_path), 10.04, 15.0)  # sessions' costs, kept beside the flags
    saved = json.loads((tmp_path / run.name / "run.json").read_text())
    assert saved["sessions"] == [{"wall_s": 10.0, "cpu_s": 15.0}]
    assert rw_eval_runs.check_record(run, str(tmp_path)) is None
    other = next(r for r in rw_eval_plan.plan(iters=20) if r.name == run.name)
    assert "other flags" in rw_eval_runs.check_record(other, str(tmp_path))


def test_commit_results_commits_only_result_files(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True,
                                    capture_output=True, text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "other.py").write_text("x = 1\n")
    git("add", "other.py")  # staged by someone else: must stay out of the results commit
    res = tmp_path / "results"
    res.mkdir()
    (res / "rw_eval.json").write_text("{}")
    (res / "unrelated.json").write_text("{}")
    assert rw_eval_runs.commit_results(str(res), "rw_eval: test", repo=str(tmp_path))
    assert git("show", "--name-only", "--format=%s", "HEAD").split() == [
        "rw_eval:", "test", "results/rw_eval.json"]
    assert "A  other.py" in git("status", "--short")
    assert not rw_eval_runs.commit_results(str(res), "again", repo=str(tmp_path))  # nothing changed


def _write_run(root, run, finals, weights, r=1.0, last=None, ess=0.9):
    """run.json as the runner writes it, and a metrics.jsonl with train rows every 10 iterations
    (infinite r during burn-in: those weights must be ignored) and eval rows every 50."""
    d = root / run.name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run.record()))
    burn = _value(run.flags(), "--sample-reweight-warmup-iters")
    last = last or run.iters
    rows = []
    for it in range(10, last + 1, 10):
        on = it > int(burn)
        rows.append({"iteration": it, "train/reweight r": r if on else math.inf,
                     "train/sample weight ess": ess if on else 1.0,
                     **{f"train/sample weight/{k}": w if on else 100.0 for k, w in weights.items()}})
        if it % 50 == 0:
            rows.append({"iteration": it, **{f"valid/{k}/lm loss": f + (run.iters - it) / 1000
                                             for k, f in finals.items()}})
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))


@pytest.fixture
def runs_dir(tmp_path):
    plan = {r.name: r for r in rw_eval_plan.plan()}
    for k, seed in enumerate(SEEDS):
        for group in ("clean", "noisy"):
            _write_run(tmp_path, plan[f"{group}-uniform-s{seed}"],
                       {"all": 5.0 + 0.02 * k, "books": 4.0, "code": 6.0 + 0.01 * k},
                       {"books": 1.0, "duplicated": 1.0, "random": 1.0})
            # linupper: -0.1 on all for every seed; favours random docs, starves duplicated ones
            _write_run(tmp_path, plan[f"{group}-linupper-r1-s{seed}"],
                       {"all": 4.9 + 0.02 * k, "books": 4.0 + (-0.05, 0.05, 0.01)[k],
                        "code": 6.05 + 0.01 * k},
                       {"books": 1.0, "duplicated": 0.5, "random": 2.0}, r=1.0)
        _write_run(tmp_path, plan[f"noisy-ess0.9-s{seed}"], {"all": 5.0 + 0.02 * k, "books": 4.0,
                                                             "code": 6.0}, {"random": 1.2},
                   r=(0.5, 0.7, 0.6)[k])
    for k, seed in enumerate(SEEDS[:2]):
        _write_run(tmp_path, plan[f"scale-uniform-s{seed}"], {"all": 4.5 + 0.01 * k, "books": 3.5,
                                                              "code": 5.5}, {"books": 1.0})
        _write_run(tmp_path, plan[f"scale-linupper-r1-s{seed}"],
                   {"all": 4.45 + 0.01 * k + 0.01 * k, "books": 3.5, "code": 5.5}, {"books": 1.0})
    # unfinished: numbers that would wreck every statistic if used
    _write_run(tmp_path, plan["clean-ess0.7-s1234"], {"all": 0.0, "books": 0.0, "code": 0.0},
               {"books": 50.0}, last=200)
    return tmp_path


@pytest.fixture
def report(runs_dir, tmp_path):
    """The report of the synthetic runs, the noisy corpus's blend: 80 % books, 10 % each noise."""
    manifest = tmp_path / "noisy_data" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"data_path": {"train": "0.8 /d/books_train "
                                                           "0.1 /d/duplicated_train 0.1 /d/random_train"}}))
    return rep.build(str(runs_dir), {"clean": str(tmp_path / "none"), "noisy": str(manifest.parent)})


def test_report_on_synthetic_runs(report):
    assert report["unfinished"] == ["clean-ess0.7-s1234"]
    assert "clean-ess0.7-s1234" not in report["runs_used"]
    assert "noisy-robust-r1-s1234" in report["missing"]
    v = report["variants"]
    assert "clean-ess0.7" not in v and "vs_uniform" not in v["noisy-uniform"]
    lin = v["noisy-linupper-r1"]["vs_uniform"]
    assert [round(x, 6) for x in lin["all"]["per_seed"].values()] == [-0.1] * 3
    assert lin["all"]["verdict"] == "lower"       # all -0.1, uniform's spread 0.04
    assert lin["code"]["verdict"] == "higher"     # +0.05 each, spread 0.02
    assert lin["books"]["verdict"] == "within seed noise"  # mixed signs
    assert v["noisy-ess0.9"]["vs_uniform"]["all"]["verdict"] == "within seed noise"
    assert v["noisy-ess0.9"]["reweight_r"] == pytest.approx(0.6)  # median of 0.5, 0.7, 0.6
    assert v["noisy-ess0.9"]["flags"][-1] == "0.9" and v["noisy-ess0.9"]["weight_ess"] == 0.9
    noise = report["noise"]["noisy-linupper-r1"]
    assert noise["random"]["mass"] == pytest.approx(0.2) and noise["random"]["blend_share"] == 0.1
    assert noise["duplicated"]["mass"] == pytest.approx(0.05)
    assert report["noise"]["noisy-uniform"]["random"]["mass"] == pytest.approx(0.1)
    # ranking: only variants finished in both clean and noisy (ess0.9 is noisy-only here)
    assert [r["label"] for r in report["ranking"]] == ["linupper-r1"]
    assert report["ranking"][0]["mean"] == pytest.approx(-0.1)
    assert report["ranking"][0]["verdicts"] == {"clean": "lower", "noisy": "lower"}
    # scale point: 2 seeds -> no verdict; tiny partner found by identical variant flags
    sc = report["scale"]["scale-linupper-r1"]
    assert sc["tiny_variant"] == "clean-linupper-r1"
    assert [round(x, 6) for x in sc["small"]["per_seed"].values()] == [-0.05, -0.04]
    assert [round(x, 6) for x in sc["tiny"]["per_seed"].values()] == [-0.1, -0.1]
    assert set(sc["tiny"]["per_seed"]) == {str(s) for s in SEEDS[:2]}
    assert v["scale-linupper-r1"]["vs_uniform"]["all"]["verdict"] == "too few seeds"
    assert v["scale-linupper-r1"]["final"]["all"]["n"] == 2


def test_report_main_and_plots(runs_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    assert rep.main(["--runs-dir", str(runs_dir), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted(rw_eval_runs.RESULTS)
    printed = capsys.readouterr().out
    assert "noisy-linupper-r1" in printed and "scale point" in printed
    assert json.loads((out / "rw_eval.json").read_text())["scale"]["scale-linupper-r1"]
    assert "| noisy, seq 128 | `strategy uniform` |" in (out / "rw_eval.md").read_text()
    assert rep.main(["--runs-dir", str(tmp_path / "empty"), "--out", str(out)]) == 1


def test_list_prints_estimates_per_group(runs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rw_eval, "BEST_FLAGS", None)  # as before the choice was committed
    for seed in SEEDS[:2]:
        (runs_dir / f"clean-uniform-s{seed}" / "latest_checkpointed_iteration.txt").write_text("400")
    timing = tmp_path / "timing.json"
    prof = {"s_per_iter": 0.5, "startup_s": 20.0, "eval_s": 10.0, "cpu_share": 0.5}
    timing.write_text(json.dumps({"profiles": {p: prof for p in rw_eval_plan.PROFILES}}))
    # --results: the repository's own archive of finished runs (results/rw_eval_runs) stays out.
    assert rw_eval.main(["--list", "--runs-dir", str(runs_dir), "--timing", str(timing),
                         "--results", str(tmp_path / "results")]) == 0
    printed = capsys.readouterr().out
    run = next(r for r in rw_eval_plan.plan() if r.name == "clean-uniform-s1234")
    # 400 iterations: 20 + 400 x 0.5 + 8 evaluations x 10 = 300 s at the measured load
    assert rw_eval_estimate.estimate_s(run, {"tiny": prof}) == pytest.approx(300.0)
    assert rw_eval_estimate.estimate_s(run, {"tiny": prof}, two_core=True) == pytest.approx(150.0)
    assert "clean-uniform-s1234" in printed and "done" in printed
    assert "blocked: flags not chosen yet" in printed
    lines = {ln.split()[0]: ln.split() for ln in printed.splitlines() if ln.strip()}
    assert lines["clean"][1] == "18" and lines["scale"][1] == "6"  # runs per group
    assert lines["all"][1] == str(len(rw_eval_plan.plan()))
    # clean: 18 runs of 300 s = 1.50 h at the measured load (half on 2 idle cores); 2 are done
    assert lines["clean"][2:] == ["0.75h", "1.50h", "0.67h", "1.33h"]


def test_main_skips_done_and_blocked_runs_without_training(runs_dir, capsys, monkeypatch):
    for name in os.listdir(runs_dir):
        (runs_dir / name / "latest_checkpointed_iteration.txt").write_text(
            "200" if name == "clean-ess0.7-s1234" else "400" if "scale" not in name
            else str(rw_eval_plan.SCALE_ITERS))
    monkeypatch.setattr(gpt_sweep, "run_one", lambda *a, **k: pytest.fail("launched a run"))
    monkeypatch.setattr(rw_eval, "COMBO_FLAGS", None)  # as before the choice was committed
    data = runs_dir / "data"
    for c in ("clean", "noisy"):
        (data / c).mkdir(parents=True)
        (data / c / "manifest.json").write_text("{}")
    only = ["clean-uniform-s1234", "clean-robust-best-s1234", "noisy-ess0.7-s1234"]
    assert rw_eval.main(["--runs-dir", str(runs_dir), "--max-runs", "0", "--clean-data",
                         str(data / "clean"), "--noisy-data", str(data / "noisy"),
                         "--results", str(data / "results"), "--only", *only]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("clean-uniform-s1234: done")
    assert printed[1].endswith("clean-robust-best-s1234: blocked: flags not chosen yet "
                               "(--combo-flags)")
    # a runnable run (target ESS is merged) is next in plan order: --max-runs 0 stops before it
    assert printed[2:] == ["rw_eval: stopping after --max-runs 0"]


def test_docs_per_row_counts_document_segments():
    import numpy

    from benchmarks.quality.docs_per_row import units_per_row
    # documents of 64 tokens (EOD included), rows of 128 labels starting at stream position 1:
    # EODs at 63 and 127 end two units, the third is still open at the row's end
    u = units_per_row(numpy.full(100, 64), 128)
    assert len(u) == (100 * 64 - 1) // 128 and set(u.tolist()) == {3}
    # one document longer than the row: a single unit; the last row ends exactly on its EOD
    assert units_per_row(numpy.array([257]), 128).tolist() == [1, 1]
    # mean over many shuffled documents matches the closed form seq * p + 1 - p
    lengths = numpy.random.default_rng(0).integers(20, 400, size=20000)
    p = len(lengths) / lengths.sum()
    assert units_per_row(lengths, 256).mean() == pytest.approx(256 * p + 1 - p, rel=0.01)


def test_timing_analysis_of_a_log():
    from benchmarks.quality.rw_eval_timing import analyse

    line = ("iteration {:8d}/      20 | consumed samples: 1 | elapsed time per iteration (ms): {} |"
            " learning rate: 1E-3 |")
    stamps = [(1.0, "pretrain_gpt_rw.sh: node 0/1"), (5.0, " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 1580672"),
              (30.0, line.format(5, 4000.0)),  # warm-up interval: 4 s per iteration
              (35.0, line.format(10, 1000.0)), (40.0, line.format(15, 1200.0)),
              (45.0, line.format(20, 1000.0)), (53.0, " validation loss at iteration 20 | all")]
    t = analyse(stamps, wall=60.0, cpu=30.0)
    assert t["s_per_iter"] == 1.0  # median of the intervals after the first
    assert t["startup_s"] == pytest.approx(25.0)  # first log at 30 s less 5 iterations x 1 s
    assert t["eval_s"] == pytest.approx(8.0) and t["parameters"] == 1580672
    assert t["cpu_share"] == pytest.approx(0.25)  # 30 CPU s over 2 cores x 60 s


def test_finished_runs_are_archived_and_count_when_the_runs_dir_is_lost(runs_dir,
                                                                        tmp_path_factory):
    plan = {r.name: r for r in rw_eval_plan.plan()}
    for name in os.listdir(runs_dir):  # the runner's checkpoints: at the last iteration if done
        if name in plan:
            last = 200 if name == "clean-ess0.7-s1234" else plan[name].iters
            (runs_dir / name / "latest_checkpointed_iteration.txt").write_text(str(last))
    archive = tmp_path_factory.mktemp("results") / rw_eval_runs.ARCHIVE
    names = rw_eval_runs.archive_finished(str(runs_dir), str(archive))
    assert "noisy-uniform-s1234" in names and "clean-ess0.7-s1234" not in names
    lost = tmp_path_factory.mktemp("lost")  # a new session without the runs directory
    assert rw_eval_runs.status(plan["noisy-uniform-s1234"], str(lost), str(archive)) == "done"
    assert rw_eval_runs.status(plan["clean-ess0.7-s1234"], str(lost), str(archive)) == "to do"
    assert rw_eval_runs.status(plan["noisy-uniform-s1234"], str(lost)) == "to do"
    data = {"clean": str(lost / "none"), "noisy": str(lost / "none")}
    full = rep.build(str(runs_dir), data)
    rebuilt = rep.build(str(lost), data, archive=str(archive))
    assert rebuilt["variants"] == full["variants"] and rebuilt["runs_used"] == full["runs_used"]


def test_markdown_tables_of_the_report(report):
    from benchmarks.quality import rw_eval_table
    md = rw_eval_table.markdown(report)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    # plan order within a group: uniform first, then linupper r 1.0, then the target ESS
    assert [r.split(" | ")[1] for r in rows[2:5]] == [
        "`strategy uniform`", "`strategy linupper r 1.0`", "`strategy uniform`"]
    lin = next(r for r in rows if "20.0 %" in r)  # the noisy group's linupper
    # 3 seeds of -0.1: median [min, max], the verdict, and random / duplicated weight shares
    assert "| 3 | 4.9200 [4.9000, 4.9400] | −0.1000 [−0.1000, −0.1000] | lower | 0.900 |" in lin
    assert lin.endswith("| 20.0 % / 5.0 % |")
    # per domain: code is beyond its seed spread (higher), books is not
    dom = next(r for r in rows if r.startswith("| linupper-r1 | +0.010 |"))
    assert dom.split(" | ")[2] == "+0.050*"
    # scale point: per seed beside tiny on the same seeds, and the change of the gap with size
    scale = next(r for r in rows if r.startswith("| `strategy linupper r 1.0` | 1234:"))
    assert scale == ("| `strategy linupper r 1.0` | 1234: −0.0500, 2345: −0.0400 | "
                     "1234: −0.1000, 2345: −0.1000 | +0.0550 |")


def test_units_pairs_documents_with_rows_by_seed():
    from benchmarks.quality import rw_eval_table

    def variant(per_seed):
        return {"final": {"all": {"per_seed": per_seed}, "qa": {"per_seed": per_seed}}}
    variants = {"noisy1024-linupper-r1": variant({"1234": 5.60, "2345": 5.64}),
                "noisy1024-linupper-r1-doc": variant({"1234": 5.57, "2345": 5.63, "3456": 9.0})}
    u = rep.units(variants)
    assert u["all"]["n"] == 2  # seed 3456 has no row run to pair with: left out
    assert u["all"]["per_seed"] == pytest.approx({"1234": -0.03, "2345": -0.01})
    assert (u["all"]["median"], u["all"]["min"], u["all"]["max"]) == pytest.approx(
        (-0.02, -0.03, -0.01))
    assert rep.units({"noisy1024-linupper-r1": variants["noisy1024-linupper-r1"]}) is None
    assert u["all"]["verdict"] == "too few seeds"
    table = rw_eval_table.units_table({"units": u})
    assert ("| all | 2 | −0.0200 [−0.0300, −0.0100] | too few seeds | "
            "1234: −0.0300, 2345: −0.0100 |") in table

    # three seeds, all below the rows: 'lower' only while the median beats the rows' own spread
    rows = {"1234": 5.60, "2345": 5.64, "3456": 5.62}
    for docs, expected in (({"1234": 5.55, "2345": 5.58, "3456": 5.57}, "lower"),
                           ({"1234": 5.59, "2345": 5.63, "3456": 5.61}, "within seed noise")):
        u = rep.units({"noisy1024-linupper-r1": variant(rows),
                       "noisy1024-linupper-r1-doc": variant(docs)})
        assert u["all"]["verdict"] == expected
