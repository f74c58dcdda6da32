"""The patch against unmodified Megatron-LM checkouts, on CPU/gloo (tests/workers/megatron_lm.py).

Checkouts: ``../shared/megatron-lm/core_v0.16.1`` and ``core_v0.19.0`` next to the repository,
and any checkout named by ``MEGATRON_LM=/path``. Each is copied to a temporary folder (the dataset
helpers are built in it; ``shared/`` is read-only in CI) and runs in this interpreter: its own
``megatron.core`` and ``megatron.training`` come first on ``PYTHONPATH``. Three launches per
checkout: a run SIGKILLed after its checkpoint, every other 2-process run in one launch (dense
layouts, then MoE and MTP), and the 4-process MoE layout.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.workers.launch import REPO, torchrun

WORKER = os.path.join(REPO, "tests", "workers", "megatron_lm.py")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "megatron-lm")
HOW = ("no Megatron-LM checkout: put the fixtures in ../shared/megatron-lm next to the repository "
       "or name one with MEGATRON_LM=/path/to/Megatron-LM")


def checkouts():
    found = {}
    for path in sorted(glob.glob(os.path.join(SHARED, "core_v*"))):
        found[os.path.basename(path)] = path
    if os.environ.get("MEGATRON_LM"):
        found["MEGATRON_LM"] = os.environ["MEGATRON_LM"]
    return found


CHECKOUTS = checkouts()
NEEDS_312 = {"core_v0.19.0"}  # megatron-core >= 0.17 requires Python >= 3.12


def prepared_copy(src: str, dst: str) -> str:
    """The checkout's files that a run needs, writable, with the dataset helpers built."""
    os.makedirs(dst)
    for name in ("pretrain_gpt.py", "gpt_builders.py", "model_provider.py", "megatron"):
        path = os.path.join(src, name)
        if os.path.isdir(path):
            # copyfile, not copy2: the source may be read-only, the copy must not be
            shutil.copytree(path, os.path.join(dst, name), copy_function=shutil.copyfile)
        elif os.path.exists(path):
            shutil.copyfile(path, os.path.join(dst, name))
    for folder, _, _ in os.walk(dst):
        os.chmod(folder, 0o755)
    datasets = os.path.join(dst, "megatron", "core", "datasets")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    # The same helpers.cpp as an installed megatron-core's: its built module will do, and no
    # compiler or pybind11 is needed (neither is on the CI machines).
    for site in sys.path:
        built = os.path.join(site, "megatron", "core", "datasets", "helpers_cpp" + suffix)
        source = os.path.join(site, "megatron", "core", "datasets", "helpers.cpp")
        if os.path.isfile(built) and _same(source, os.path.join(datasets, "helpers.cpp")):
            shutil.copy(built, datasets)
            return dst
    proc = subprocess.run(["make", "-C", datasets, f"LIBEXT={suffix}",
                           f"CPPFLAGS=$(shell {sys.executable} -m pybind11 --includes)"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the dataset helpers of {src} (needs pybind11 and a C++ "
                    f"compiler): {proc.stderr[-300:]}")
    return dst


def newest_prepared_copy(dst: str) -> str:
    """``prepared_copy`` of the newest checkout this Python can run (skips if there is none)."""
    usable = [n for n in sorted(CHECKOUTS, reverse=True)
              if not (n in NEEDS_312 and sys.version_info < (3, 12))]
    if not usable:
        pytest.skip(HOW)
    return prepared_copy(CHECKOUTS[usable[0]], dst)


def _same(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as f, open(b, "rb") as g:
            return f.read() == g.read()
    except OSError:
        return False


@pytest.fixture(scope="module", params=sorted(CHECKOUTS) or [None])
def megatron_lm(request, tmp_path_factory):
    """``(name, result of the main phase, its log, work folder)`` for one checkout."""
    name = request.param
    if name is None:
        pytest.skip(HOW)
    if name in NEEDS_312 and sys.version_info < (3, 12):
        pytest.skip(f"{name} needs Python >= 3.12 (megatron-core >= 0.17)")
    work = tmp_path_factory.mktemp(name)
    checkout = prepared_copy(CHECKOUTS[name], str(work / "checkout"))
    env = {"PYTHONPATH": f"{checkout}:{REPO}", "PYTHONWARNINGS": "ignore"}
    args = ["--checkout", checkout, "--work", str(work)]
    with pytest.raises(RuntimeError) as killed:
        torchrun(WORKER, 2, args + ["--phase", "kill"], env=env)
    missing = re.search(r"ModuleNotFoundError: No module named '[^']+'", str(killed.value))
    if missing:  # core_v0.16.1's megatron.training also wants six, regex and pydantic
        pytest.skip(f"{name}'s megatron.training does not import here: {missing.group(0)}")
    assert "SIGKILL after the checkpoint of iteration 3" in str(killed.value), killed.value
    log = torchrun(WORKER, 2, args + ["--phase", "main"], env=env)
    return name, json.loads((work / "main.json").read_text()), log, work


@pytest.mark.slow
@pytest.mark.compat
@pytest.mark.parametrize("layout", ["dp2", "tp2", "pp2"])
def test_uniform_is_bitwise_unpatched(megatron_lm, layout):
    """Every iteration's lm loss and grad norm and the final parameters, dropout 0.1."""
    name, result, _, _ = megatron_lm
    runs = result["runs"]
    assert runs[f"{layout}/unpatched"]["stopped"] is None
    assert len(runs[f"{layout}/uniform"]["iterations"]) == 6
    assert result["compare"][f"{layout}: uniform vs unpatched"] == [0, 0], (name, result)


@pytest.mark.slow
@pytest.mark.compat
def test_resume_after_sigkill_is_bitwise(megatron_lm):
    name, result, _, _ = megatron_lm
    resumed = result["runs"]["dp2/resumed"]
    assert [r["iteration"] for r in resumed["iterations"]] == [4, 5, 6], resumed
    assert result["compare"]["dp2: resumed vs uninterrupted"] == [0, 0], (name, result)


@pytest.mark.slow
def test_linupper_trains_and_logs_reweighting_keys(megatron_lm):
    name, result, log, work = megatron_lm
    run = result["runs"]["dp2/linupper"]
    assert run["stopped"] is None and len(run["iterations"]) == 6
    records, params = result["compare"]["dp2: linupper vs unpatched"]
    assert params > 0  # it trained differently from the baseline ...
    ess = [r["loss"]["sample weight ess"] for r in run["iterations"]]
    assert ess[:2] == [1.0, 1.0] and all(e < 1.0 for e in ess[2:])  # ... after the burn-in
    # Megatron-LM's own iteration lines (other ranks' prints may interleave with a line).
    lines = [line for line in log.splitlines()
             if " iteration " in line and "consumed samples" in line]
    for key in ("weighted lm loss", "sample weight ess", "sample weight max", "sample loss range",
                "invalid samples"):
        assert any(key in line for line in lines), key
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(work / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"weighted lm loss", "sample weight ess", "invalid samples"} <= tags, tags


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_documents_target_ess_and_preview_through_the_patch(megatron_lm, layout):
    """--sample-reweight-unit document in Megatron-LM's own loop: the slots come from its data
    iterator's labels (TP2: broadcast from the first TP rank), r is chosen for ESS 0.7 after
    the burn-in and logged, the preview is reported, and it trains as long as the others."""
    name, result, _, _ = megatron_lm
    run = result["runs"][f"{layout}/documents"]
    assert run["stopped"] is None and len(run["iterations"]) == 6, (name, run)
    losses = [r["loss"] for r in run["iterations"]]
    assert [x["sample weight ess"] for x in losses[:2]] == [1.0, 1.0]
    assert all(x["sample weight ess"] >= 0.69 for x in losses[2:])
    assert all(0 < x["reweight r"] < 1e4 for x in losses[2:]) and "reweight r" not in losses[0]
    assert all(0 < x["preview weight ess"] <= 1 for x in losses)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_per_domain_shares_through_the_patch(megatron_lm, layout):
    """A blend of two prefixes (random tokens from 50 ids, ``easy``, or from 400, ``hard``):
    every training step reports each domain's share of the samples, of the weight and of the
    preview's weight (TP2: the ids broadcast from the first TP rank, which alone reads data).
    Each kind of share sums to 1 over the domains; during the burn-in every weight is 1, so the
    weight shares are the sample shares; after it linupper gives the higher-loss domain more
    than its share of samples."""
    name, result, log, _ = megatron_lm
    run = result["runs"][f"{layout}/domains"]
    assert run["stopped"] is None and len(run["iterations"]) == 6, (name, run)
    losses = [r["loss"] for r in run["iterations"]]
    domains = ("easy", "hard")
    for loss in losses:
        for kind in ("sample share", "sample weight share", "preview weight share"):
            assert sum(loss[f"{kind}/{d}"] for d in domains) == pytest.approx(1, abs=1e-5), kind
        assert all(0 < loss[f"sample share/{d}"] < 1 for d in domains)
    for loss in losses[:2]:
        for d in domains:
            assert loss[f"sample weight share/{d}"] == pytest.approx(loss[f"sample share/{d}"])
    after = losses[2:]
    gain = [x["sample weight share/hard"] - x["sample share/hard"] for x in after]
    assert all(g > 0 for g in gain), gain
    assert any("sample weight share/hard" in line for line in log.splitlines()
               if " iteration " in line)


@pytest.mark.slow
def test_nan_sample_stops_like_unpatched_unless_skipped(megatron_lm):
    name, result, log, _ = megatron_lm
    runs = result["runs"]
    for key in ("nan/unpatched", "nan/patched"):
        assert runs[key]["stopped"] is not None, (key, runs[key])
        assert len(runs[key]["iterations"]) == 2, runs[key]  # stopped in iteration 3
    assert runs["nan/patched"]["stopped"] == runs["nan/unpatched"]["stopped"]
    assert log.count("found NaN in local forward loss calculation") >= 2
    skip = runs["nan/patched-skip"]
    assert skip["stopped"] is None and len(skip["iterations"]) == 6
    invalid = [r["loss"]["invalid samples"] for r in skip["iterations"]]
    assert invalid[2] > 0 and invalid[:2] == [0.0, 0.0] and invalid[3:] == [0.0] * 3


# ---------------------------------------------------------------- today's workloads
# MoE with expert parallelism (both dispatchers), MTP (tests/workers/megatron_lm.py WORKLOADS,
# run in the main launch) and MoE EP2 x PP2 x DP2 on 4 processes (MOE4, a launch of its own).

WORKLOADS = ["moe-allgather", "moe-alltoall", "mtp"]


@pytest.fixture(scope="module")
def moe4(megatron_lm):
    """The 4-process MoE layout's result, on the same checkout as ``megatron_lm``: the newest
    fixture only (35 s a launch on 2 cores; EP2 on 2 processes runs on every checkout)."""
    name, _, _, work = megatron_lm
    if name != max(n for n in CHECKOUTS if n.startswith("core_v")):
        pytest.skip(f"the 4-process MoE layout runs on the newest fixture, not {name}")
    checkout = str(work / "checkout")
    env = {"PYTHONPATH": f"{checkout}:{REPO}", "PYTHONWARNINGS": "ignore"}
    torchrun(WORKER, 4, ["--checkout", checkout, "--work", str(work), "--phase", "moe4"],
             env=env)
    return name, json.loads((work / "moe4.json").read_text())


def _workload(megatron_lm, moe4, workload):
    if workload == "moe-pp2":
        return moe4
    name, result, _, _ = megatron_lm
    return name, result


@pytest.mark.slow
@pytest.mark.compat
@pytest.mark.parametrize("workload", WORKLOADS + ["moe-pp2"])
def test_workload_uniform_is_bitwise_unpatched(request, megatron_lm, workload):
    """MoE (EP2: allgather, alltoall; EP2 x PP2 x DP2) and MTP: every iteration's lm loss and
    grad norm, every aux loss Megatron logs (load_balancing_loss, mtp_1 loss) and the final
    parameters of uniform equal the unpatched run's."""
    moe4 = request.getfixturevalue("moe4") if workload == "moe-pp2" else None
    name, result = _workload(megatron_lm, moe4, workload)
    runs = result["runs"]
    for variant in ("unpatched", "uniform", "linupper"):
        assert runs[f"{workload}/{variant}"]["stopped"] is None, (name, runs)
    assert len(runs[f"{workload}/uniform"]["iterations"]) == (3 if workload == "mtp" else 6)
    assert result["compare"][f"{workload}: uniform vs unpatched"] == [0, 0], (name, result)
    differing, compared = result["compare"][f"{workload}: uniform vs unpatched aux"]
    assert differing == 0 and compared > 0, (name, result["compare"])


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS + ["moe-pp2"])
def test_workload_linupper_weighs_the_whole_global_micro_batch(request, megatron_lm, workload):
    """linupper: every rank's weights are those of the whole global micro-batch's per-sample
    losses (all dense data-parallel ranks; under EP the expert-data-parallel group is smaller,
    and gathering over it fails this test); the aux losses stay Megatron's, logged as before
    (the first reweighted iteration starts from the unpatched parameters, so its aux losses
    equal the unpatched run's)."""
    moe4 = request.getfixturevalue("moe4") if workload == "moe-pp2" else None
    name, result = _workload(megatron_lm, moe4, workload)
    check = result["compare"][f"{workload}: linupper weights"]
    assert check["compared"] > 0 and check["max_error"] < 1e-5, (name, check)
    assert check["spread"] > 0.1  # the weights really differ between samples
    assert check["dp_size"] == 2 and check["ranks_with_loss"] == 2
    if workload.startswith("moe"):
        assert check["ep_size"] == 2 and check["expert_dp_size"] == 1, check
    differing, compared = result["compare"][f"{workload}: linupper vs unpatched aux, iteration 3"]
    assert differing == 0 and compared > 0
    assert result["compare"][f"{workload}: linupper vs unpatched"][1] > 0  # trained differently
    key = "mtp_1 loss" if workload == "mtp" else "load_balancing_loss"
    assert all(key in r["aux"] for r in result["runs"][f"{workload}/linupper"]["iterations"])


@pytest.mark.slow
def test_mtp_losses_stay_unweighted(megatron_lm):
    """MTP's losses are computed inside the model and left unweighted: after the first
    reweighted step (no grad clipping) the MTP block's own parameters, whose gradients come only
    from the MTP loss, equal the unpatched run's bit for bit; the decoder's do not."""
    name, result, _, _ = megatron_lm
    same, mtp = result["compare"]["mtp: linupper vs unpatched mtp parameters"]
    assert same == 0 and mtp > 0, (name, result["compare"])
    differing, decoder = result["compare"]["mtp: linupper vs unpatched decoder parameters"]
    assert decoder > 0 and differing == decoder


# ---------------------------------------------------------------- the project's own script
# megatron_rw/megatron_training/pretrain_gpt.py drives the megatron.training of the installed
# megatron-core (no checkout); against Megatron-LM's own pretrain_gpt.py on that same
# megatron-core (the newest fixture's scripts without its megatron/ folder).
OWN_SCRIPT = os.path.join(REPO, "megatron_rw", "megatron_training")


@pytest.fixture(scope="module")
def own_script(tmp_path_factory):
    training = pytest.importorskip("megatron.training.argument_utils",
                                   reason="the installed megatron-core has no megatron.training "
                                          "(0.17+) config container (0.19+)")
    del training
    if "core_v0.19.0" not in CHECKOUTS:
        pytest.skip(HOW)
    work = tmp_path_factory.mktemp("own")
    scripts = work / "scripts"
    scripts.mkdir()
    for name in ("pretrain_gpt.py", "gpt_builders.py", "model_provider.py"):
        shutil.copyfile(os.path.join(CHECKOUTS["core_v0.19.0"], name), scripts / name)
    env = {"PYTHONPATH": f"{OWN_SCRIPT}:{scripts}:{REPO}", "PYTHONWARNINGS": "ignore"}
    args = ["--checkout", str(scripts), "--work", str(work)]
    with pytest.raises(RuntimeError) as killed:
        torchrun(WORKER, 2, args + ["--phase", "own-kill"], env=env)
    assert "SIGKILL after the checkpoint of iteration 3" in str(killed.value), killed.value
    torchrun(WORKER, 2, args + ["--phase", "own"], env=env)
    return json.loads((work / "own.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "tp2", "pp2", "ep2", "pp2-mtp"])
def test_own_script_through_the_patch_is_megatron_lms_script(own_script, layout):
    """uniform through the patch with the project's script: every iteration's lm loss and grad
    norm and every final parameter equal Megatron-LM's own pretrain_gpt.py, unpatched, on the
    same installed megatron-core (dropout 0.1, 6 iterations; MoE EP2 alltoall; MTP on PP2)."""
    assert own_script["script"] == os.path.join(OWN_SCRIPT, "pretrain_gpt.py")
    for variant in ("unpatched", "uniform"):
        run = own_script["runs"][f"{layout}/{variant}"]
        assert run["stopped"] is None and len(run["iterations"]) == 6, run
    assert own_script["compare"][f"{layout}: own uniform vs checkout"] == [0, 0], own_script


@pytest.mark.slow
def test_own_script_trains_linupper(own_script):
    run = own_script["runs"]["dp2/linupper"]
    assert run["stopped"] is None and len(run["iterations"]) == 6
    ess = [r["loss"]["sample weight ess"] for r in run["iterations"]]
    assert ess[:2] == [1.0, 1.0] and all(e < 1.0 for e in ess[2:])


@pytest.mark.slow
def test_own_script_resumes_linupper_bitwise_after_sigkill(own_script):
    """linupper DP2 with the project's script, SIGKILLed right after its checkpoint at
    iteration 3 (Megatron's torch_dist), then --load: iterations 4-6 and the final parameters
    are the uninterrupted run's, bit for bit."""
    resumed = own_script["runs"]["dp2/linupper-resumed"]
    assert [r["iteration"] for r in resumed["iterations"]] == [4, 5, 6], resumed
    assert own_script["compare"]["dp2: linupper resumed vs uninterrupted"] == [0, 0], own_script


@pytest.mark.slow
@pytest.mark.parametrize("run, saved_by", [("unpatched-from-linupper", "linupper"),
                                           ("linupper-from-unpatched", "unpatched")])
def test_own_script_checkpoints_are_megatrons(own_script, run, saved_by):
    """A reweighted run's checkpoint continues in Megatron-LM's own, unpatched pretrain_gpt.py,
    and an unpatched run's as a reweighted one (same megatron-core): iterations 4-6 train, and
    the first one's lm loss is the saving run's iteration 4 lm loss (same parameters, same
    data), bit for bit."""
    runs = own_script["runs"]
    continued = runs[f"dp2/{run}"]
    assert continued["stopped"] is None, continued
    assert [r["iteration"] for r in continued["iterations"]] == [4, 5, 6], continued
    saver = runs[f"dp2/{saved_by}"]["iterations"][3]
    assert saver["iteration"] == 4
    assert continued["iterations"][0]["loss"]["lm loss"] == saver["loss"]["lm loss"]
    if run == "linupper-from-unpatched":  # past its burn-in: reweighted from the first step
        assert all(r["loss"]["sample weight ess"] < 1.0 for r in continued["iterations"])
