import argparse

import pytest

from megatron_rw import ReweightConfig, add_sample_reweight_args

EXPECTED_FLAGS = {
    "--sample-reweight-strategy", "--sample-reweight-r", "--sample-reweight-warmup-iters",
    "--sample-reweight-schedule", "--sample-reweight-r-start", "--sample-reweight-anneal-iters",
    "--sample-reweight-delta", "--sample-reweight-skip-nonfinite",
    "--sample-reweight-target-ess", "--sample-reweight-unit", "--sample-reweight-max-documents",
    "--sample-reweight-preview", "--sample-reweight-collective",
}


def _parse(*argv):
    parser = add_sample_reweight_args(argparse.ArgumentParser(prog="pretrain"))
    return parser.parse_args(list(argv))


def test_cli_is_frozen():
    # Renaming or dropping a flag breaks users' launch scripts: change this set deliberately.
    parser = add_sample_reweight_args(argparse.ArgumentParser())
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--sample-reweight")}
    assert flags == EXPECTED_FLAGS


def test_defaults_change_nothing():
    cfg = ReweightConfig.from_args(_parse())
    assert cfg == ReweightConfig()
    assert cfg.strategy == "uniform" and not cfg.enabled


def test_from_args_round_trip():
    cfg = ReweightConfig.from_args(_parse(
        "--sample-reweight-strategy", "linupper", "--sample-reweight-r", "0.4",
        "--sample-reweight-warmup-iters", "2000", "--sample-reweight-schedule", "geometric",
        "--sample-reweight-r-start", "50", "--sample-reweight-anneal-iters", "500",
        "--sample-reweight-delta", "2", "--sample-reweight-skip-nonfinite"))
    assert cfg == ReweightConfig(strategy="linupper", r=0.4, warmup_iters=2000, schedule="geometric",
                                 r_start=50.0, anneal_iters=500, delta=2.0, skip_nonfinite=True)
    cfg = ReweightConfig.from_args(_parse(
        "--sample-reweight-strategy", "quadratic", "--sample-reweight-target-ess", "0.7",
        "--sample-reweight-unit", "document", "--sample-reweight-max-documents", "8",
        "--sample-reweight-preview", "linupper"))
    assert cfg == ReweightConfig(strategy="quadratic", target_ess=0.7, unit="document",
                                 max_documents=8, preview="linupper")
    assert cfg.units_per_row == 8 and ReweightConfig().units_per_row == 1


@pytest.mark.parametrize("argv, message", [
    (["--sample-reweight-target-ess", "1.2"], "must be in"),
    (["--sample-reweight-unit", "token"], "invalid choice"),
    (["--sample-reweight-max-documents", "0"], "must be >= 1"),
    (["--sample-reweight-preview", "nope"], "unknown strategy"),
])
def test_new_flags_reject_bad_values_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert message in capsys.readouterr().err


def test_target_ess_refuses_an_annealed_schedule():
    with pytest.raises(ValueError, match="target-ess.*cannot follow schedule 'linear'"):
        ReweightConfig(strategy="linupper", target_ess=0.5, schedule="linear", anneal_iters=10)


def test_usable_as_extra_args_provider():
    parser = argparse.ArgumentParser()
    assert add_sample_reweight_args(parser) is parser


@pytest.mark.parametrize("argv, flag", [
    (["--sample-reweight-strategy", "upper"], "--sample-reweight-strategy"),
    (["--sample-reweight-r", "0"], "--sample-reweight-r"),
    (["--sample-reweight-r", "-1"], "--sample-reweight-r"),
    (["--sample-reweight-r", "inf"], "--sample-reweight-r"),
    (["--sample-reweight-warmup-iters", "-5"], "--sample-reweight-warmup-iters"),
    (["--sample-reweight-schedule", "cosine"], "--sample-reweight-schedule"),
    (["--sample-reweight-delta", "0"], "--sample-reweight-delta"),
])
def test_cli_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, flag", [
    ({"strategy": "upper"}, "--sample-reweight-strategy"),
    ({"r": 0.0}, "--sample-reweight-r "),
    ({"r": float("nan")}, "--sample-reweight-r "),
    ({"warmup_iters": -1}, "--sample-reweight-warmup-iters"),
    ({"warmup_iters": 1.5}, "--sample-reweight-warmup-iters"),
    ({"schedule": "cosine"}, "--sample-reweight-schedule"),
    ({"schedule": "linear"}, "--sample-reweight-anneal-iters"),
    ({"delta": -1.0}, "--sample-reweight-delta"),
])
def test_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError) as err:
        ReweightConfig(**kwargs)
    assert flag in str(err.value)


def test_unknown_strategy_error_lists_known():
    with pytest.raises(ValueError, match="known strategies: extremes, linupper, quadratic, robust, uniform"):
        ReweightConfig(strategy="upper")
