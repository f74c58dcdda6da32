"""patches/megatron_lm: Megatron-LM's own pretrain_gpt.py with the reweighted loss.

Megatron-LM is not installable here (``megatron.training`` is not in the megatron-core wheel),
so the script runs against stand-ins that copy the contract of Megatron-LM's ``pretrain_gpt.py``:

- through megatron-core's real schedules, DDP and optimizer (torchrun, DP2 on gloo), with the
  stand-in checkout tests/workers/megatron_lm_standin: ``uniform`` is bit for bit Megatron-LM's
  own run, and ``linupper`` is bit for bit the README's hand-written recipe;
- in process, the three ``__main__`` shapes read in Megatron-LM (patches/README.md): pretrain gets
  exactly the arguments the unpatched block passes, except the wrapped forward_step and the
  chained extra_args_provider; and every unexpected shape raises ContractError.
"""

import argparse
import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import textwrap

import pytest
import torch

from megatron_rw import ReweightConfig, reweighted_loss_func
from tests.workers.launch import REPO, torchrun

SCRIPT = os.path.join(REPO, "patches", "megatron_lm", "pretrain_gpt_rw.py")
WORKER = os.path.join(os.path.dirname(__file__), "workers", "patches.py")


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load(SCRIPT, "pretrain_gpt_rw")  # puts its directory, with rw_wrap.py, on sys.path
import rw_wrap as rw  # noqa: E402

# ---------------------------------------------------------------- the three __main__ shapes

HEADER = """
from functools import partial
import torch
CALLS = []
MASK = torch.ones(2, 4)
class ModelType:
    encoder_or_decoder = "encoder_or_decoder"
def add_modelopt_args(parser):
    parser.add_argument("--modelopt-flag", type=int, default=0)
    return parser
def model_provider(*args, **kwargs): pass
def gpt_builder(*args, **kwargs): pass
def get_embedding_ranks(pp_ranks): return pp_ranks
def train_valid_test_datasets_provider(num_samples, vp_stage=None): pass
def loss_func(loss_mask, output_tensor, model=None): pass
def maybe_wrap_for_inprocess_restart(pretrain):
    return pretrain, "STORE"
"""
SHAPES = {
    # NVIDIA/Megatron-LM aa5bf2ca: loss partial without model, pretrain parses the flags.
    "aa5bf2ca": """
def forward_step(data_iterator, model):
    return "OUT", partial(loss_func, MASK)
def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
             process_non_loss_data_func=None, extra_args_provider=None, args_defaults={}):
    CALLS.append(("pretrain", dict(locals())))
if __name__ == "__main__":
    train_valid_test_datasets_provider.is_distributed = True
    pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
             forward_step, args_defaults={'tokenizer_type': 'GPT2BPETokenizer'})
""",
    # NVIDIA/Megatron-LM 000ab9d6: gpt_builder partial, in-process restart, store.
    "000ab9d6": """
def forward_step(data_iterator, model, return_schedule_plan=False):
    return "OUT", partial(loss_func, MASK, model=model)
def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
             process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
             get_embedding_ranks=None, get_position_embedding_ranks=None,
             non_loss_data_func=None, store=None, inprocess_call_wrapper=None):
    CALLS.append(("pretrain", dict(locals())))
if __name__ == "__main__":
    train_valid_test_datasets_provider.is_distributed = True
    pretrain, store = maybe_wrap_for_inprocess_restart(pretrain)
    pretrain(train_valid_test_datasets_provider, partial(model_provider, gpt_builder),
             ModelType.encoder_or_decoder, forward_step,
             args_defaults={'tokenizer_type': 'GPT2BPETokenizer'},
             extra_args_provider=add_modelopt_args, store=store)
""",
    # Newest: flags parsed in the block, config container first, no extra_args_provider in pretrain.
    "newest": """
def forward_step(data_iterator, model, return_schedule_plan=False):
    return "OUT", partial(loss_func, MASK, model=model, input_masked_positions=None)
def parse_and_validate_args(extra_args_provider=None, args_defaults={}, ignore_unknown_args=False):
    CALLS.append(("parse_and_validate_args", dict(locals())))
    return "ARGS"
def pretrain_cfg_container_from_args(args, model_cfg=None):
    return ("CONFIG", args, model_cfg)
def pretrain(train_args, train_valid_test_dataset_provider, model_type, forward_step_func,
             process_non_loss_data_func=None, store=None, get_embedding_ranks=None):
    CALLS.append(("pretrain", dict(locals())))
if __name__ == "__main__":
    setattr(train_valid_test_datasets_provider, "is_distributed", True)
    pretrain, store = maybe_wrap_for_inprocess_restart(pretrain)
    args = parse_and_validate_args(extra_args_provider=add_modelopt_args,
                                   args_defaults={'tokenizer_type': 'GPT2BPETokenizer'})
    full_config = pretrain_cfg_container_from_args(args, "MODEL_CFG")
    pretrain(full_config, train_valid_test_datasets_provider, ModelType.encoder_or_decoder,
             forward_step, store=store, get_embedding_ranks=get_embedding_ranks)
""",
}


def fake_module(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return load(str(path), name)


def parse(provider, argv):
    return provider(argparse.ArgumentParser()).parse_args(argv)


def same(a, b):
    if isinstance(a, functools.partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    return a is b or a == b


@pytest.mark.parametrize("shape", SHAPES)
def test_main_block_gets_megatron_arguments_with_reweighting(tmp_path, shape):
    module = fake_module(tmp_path, f"pretrain_gpt_{shape}", SHAPES[shape])
    original = {k: getattr(module, k) for k in ("forward_step", "pretrain")}
    rw.run_main_block(module, {})  # Megatron-LM's own main block, unpatched
    expected = module.CALLS[:]
    module.CALLS.clear()
    args = argparse.Namespace(curr_iteration=7, data_parallel_size=2, micro_batch_size=2)
    script.run(module, lambda: args)

    assert [name for name, _ in module.CALLS] == [name for name, _ in expected]
    for (name, got), (_, want) in zip(module.CALLS, expected):
        assert got.keys() == want.keys()
        for key in got:
            if key == "forward_step_func":
                assert got[key].__wrapped__ is want[key] is original["forward_step"]
            elif key == "extra_args_provider":
                # Megatron-LM's own provider still runs, then ours.
                parsed = parse(got[key], ["--sample-reweight-strategy", "linupper"])
                assert parsed.sample_reweight_strategy == "linupper"
                assert hasattr(parsed, "modelopt_flag") == (want[key] is not None)
                vars(args).update(vars(parsed))
            else:
                assert same(got[key], want[key]), (name, key)
    # The wrapped forward_step returns the reweighted loss, configured from the parsed flags.
    output, checked = module.CALLS[-1][1]["forward_step_func"](iter([]), "MODEL")
    assert output == "OUT" and checked.func is rw.megatron_checked_loss
    assert checked.keywords["megatron_loss"].func is module.loss_func
    assert checked.keywords["skip_nonfinite"] is False
    loss_fn = checked.keywords["reweighted"]
    assert loss_fn.func is reweighted_loss_func
    assert checked.args == loss_fn.args == (module.MASK,)
    assert loss_fn.keywords == dict(config=ReweightConfig(strategy="linupper"), iteration=7,
                                    contract="token_sum")
    # The module is left as it was: it can be imported or run again.
    assert {k: getattr(module, k) for k in original} == original
    assert not hasattr(module, "store")


@pytest.mark.parametrize("body, message", [
    ("def forward_step(d, m): pass\ndef pretrain(*a): pass\n", "no top-level"),
    ("def forward_step(d, m): pass\ndef pretrain(*a): pass\nif __name__ == '__main__':\n    pass\n",
     "never called pretrain"),
    ("def forward_step(d, m): pass\ndef pretrain(*a): CALLS.append(a)\n"
     "if __name__ == '__main__':\n    pretrain(None, None, None, lambda d, m: None)\n",
     "without its module-level forward_step"),
])
def test_unexpected_main_block_raises_before_training(tmp_path, body, message):
    module = fake_module(tmp_path, "pretrain_gpt_odd", body)
    with pytest.raises(rw.ContractError, match=message):
        script.run(module, argparse.Namespace)
    assert module.CALLS == []


# ---------------------------------------------------------------- wrap_forward_step

MASK = torch.ones(2, 4)


def megatron_loss_func(loss_mask, output_tensor, model=None):
    raise AssertionError("replaced, never called")


def other_loss_func(loss_mask, output_tensor):
    raise AssertionError("never called")


def test_wrapped_forward_step_passes_through_and_builds_config_once():
    calls, configs = [], []

    def forward_step(data_iterator, model, return_schedule_plan=False):
        calls.append((data_iterator, model, return_schedule_plan))
        return "OUT", functools.partial(megatron_loss_func, MASK, model=model)

    iterations = iter([3, 4])
    wrapped = rw.wrap_forward_step(
        forward_step, get_config=lambda: configs.append(1) or ReweightConfig(strategy="quadratic"),
        get_iteration=lambda: next(iterations), expected_loss_func=megatron_loss_func)
    assert list(inspect.signature(wrapped).parameters) == [
        "data_iterator", "model", "return_schedule_plan"]
    first = wrapped("D", "M")
    second = wrapped("D", "M", return_schedule_plan=True)
    assert calls == [("D", "M", False), ("D", "M", True)] and configs == [1]
    for (output, checked), iteration in zip((first, second), (3, 4)):
        loss_fn = checked.keywords["reweighted"]
        assert output == "OUT" and loss_fn.func is reweighted_loss_func and loss_fn.args[0] is MASK
        assert loss_fn.keywords["iteration"] == iteration
        assert loss_fn.keywords["config"].strategy == "quadratic"


def test_wrapped_forward_step_reports_domains_while_training(monkeypatch):
    """The data iterator's ``dataset_id`` reaches the loss as per-domain shares while the model
    trains; not in evaluation, not for ``uniform`` without a preview, -1 for a batch without it."""
    from megatron.core import parallel_state as ps

    import rw_domains
    monkeypatch.setattr(ps, "get_tensor_model_parallel_rank", lambda: 0)  # one rank, no group
    monkeypatch.setattr(ps, "get_tensor_model_parallel_world_size", lambda: 1)
    ids = torch.tensor([1, 0])
    batches = iter([{"tokens": MASK, "dataset_id": ids}] * 3 + [{"tokens": MASK}])
    drawn = []

    def forward_step(data_iterator, model):
        drawn.append(next(data_iterator))
        return "OUT", functools.partial(megatron_loss_func, MASK, model=model)

    def keywords(wrapped, model):
        return wrapped(batches, model)[1].keywords["reweighted"].keywords

    asked = []
    model = torch.nn.Linear(1, 1)
    wrapped = rw.wrap_forward_step(
        forward_step, get_config=lambda: ReweightConfig(strategy="linupper"),
        get_iteration=lambda: 0, expected_loss_func=megatron_loss_func,
        get_domains=lambda: asked.append(1) or ["books", "code"])
    telemetry = keywords(wrapped, model)["telemetry"]
    assert telemetry.shares and telemetry.domain_names == ("books", "code")
    assert torch.equal(telemetry.domain_ids, ids) and drawn[0]["dataset_id"] is ids
    model.eval()  # evaluation: Megatron's own partial, unchanged
    evaluated = wrapped(batches, model)[1]
    assert evaluated.func is megatron_loss_func and evaluated.args[0] is MASK
    model.train()
    assert torch.equal(keywords(wrapped, model)["telemetry"].domain_ids, ids)
    assert keywords(wrapped, model)["telemetry"].domain_ids.tolist() == [-1, -1]
    assert asked == [1] and len(drawn) == 4
    uniform = rw.wrap_forward_step(
        forward_step, get_config=lambda: ReweightConfig(strategy="uniform"),
        get_iteration=lambda: 0, expected_loss_func=megatron_loss_func,
        get_domains=lambda: pytest.fail("uniform without a preview asked for domains"))
    batches = iter([{"tokens": MASK, "dataset_id": ids}])
    assert "telemetry" not in keywords(uniform, model)
    assert rw_domains.unique(["books", "code", "books", "books"]) == [
        "books", "code", "books#2", "books#3"]
    from megatron_rw.data.domains import domain_name
    assert [domain_name(p) for p in ("/d/books_text_document", "/d/books_train", "/d/code")] == [
        "books", "books", "code"]


@pytest.mark.parametrize("result, message", [
    (("OUT", functools.partial(megatron_loss_func, MASK, model=None)), None),
    (("OUT", functools.partial(megatron_loss_func, None, model=None)), None),  # middle PP stage
    (("OUT", megatron_loss_func), "is not a functools.partial"),
    (("OUT", lambda output_tensor: output_tensor), "is not a functools.partial"),
    (("OUT", functools.partial(megatron_loss_func, loss_mask=MASK)), "exactly one positional"),
    (("OUT", functools.partial(megatron_loss_func, MASK, "OUT")), "exactly one positional"),
    (("OUT", functools.partial(megatron_loss_func, "mask")), "exactly one positional"),
    (("OUT", functools.partial(other_loss_func, MASK)), "wraps a function other than"),
    (("OUT", functools.partial(megatron_loss_func, MASK, loss_scale=2.0)), "keywords .*loss_scale"),
    ("OUT", r"expected \(output_tensor, loss_func\)"),
    (("OUT", MASK, megatron_loss_func), r"expected \(output_tensor, loss_func\)"),
])
def test_unexpected_forward_step_result_raises(result, message):
    """(d): anything but (output, Megatron-LM's partial(loss_func, loss_mask, ...)) is refused
    loudly, naming what was found, before any loss is computed."""
    wrapped = rw.wrap_forward_step(lambda data_iterator, model: result, get_config=ReweightConfig,
                                   get_iteration=lambda: 0, expected_loss_func=megatron_loss_func)
    if message is None:
        assert wrapped(None, None)[1].keywords["reweighted"].func is reweighted_loss_func
        return
    with pytest.raises(rw.ContractError, match=message) as error:
        wrapped(None, None)
    assert "forward_step returned" in str(error.value)


# ---------------------------------------------------------------- arguments


def test_chain_extra_args_keeps_megatron_provider_and_adds_flags():
    """(c)."""
    def megatron_provider(parser):
        parser.add_argument("--modelopt-flag", type=int, default=0)
        return parser

    def forgets_to_return(parser):
        parser.add_argument("--other", default="x")

    from megatron_rw import add_sample_reweight_args

    chained = rw.chain_extra_args(None, megatron_provider, forgets_to_return,
                                  add_sample_reweight_args)
    args = parse(chained, ["--modelopt-flag", "3", "--sample-reweight-strategy", "extremes",
                           "--sample-reweight-r", "0.4"])
    assert (args.modelopt_flag, args.other) == (3, "x")
    assert ReweightConfig.from_args(args) == ReweightConfig(strategy="extremes", r=0.4)
    with pytest.raises(SystemExit):  # unknown flags stay errors, as in Megatron-LM
        parse(chained, ["--sample-reweight-nonsense", "1"])


def test_reweight_config_refuses_missing_flags_and_distillation():
    with pytest.raises(rw.ContractError, match="not in Megatron-LM's parsed args"):
        script.reweight_config(argparse.Namespace(seed=1))
    flags = dataclasses.asdict(ReweightConfig())
    args = argparse.Namespace(**{f"sample_reweight_{k}": v for k, v in flags.items()},
                              data_parallel_size=1, micro_batch_size=1)
    assert script.reweight_config(args) == ReweightConfig()
    args.modelopt_enabled = True
    with pytest.raises(rw.ContractError, match="ModelOpt"):
        script.reweight_config(args)


def test_iteration_falls_back_before_the_first_training_step():
    assert script.current_iteration(argparse.Namespace(iteration=5, curr_iteration=9)) == 9
    assert script.current_iteration(argparse.Namespace(iteration=5)) == 5


# ---------------------------------------------------------------- real schedules


@pytest.mark.slow
def test_real_schedules_dp2(tmp_path):
    """(a) uniform == Megatron-LM's run bit for bit; (b) linupper == the hand-written recipe bit
    for bit and differs from the baseline from the step after burn-in on."""
    out = tmp_path / "patches.json"
    torchrun(WORKER, 2, ["--out", str(out)])
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and min(result["compared_per_rank"].values()) > 0
    zero = {"loss": 0, "grads": 0, "params": 0}
    assert result["mismatches"]["uniform_vs_baseline"] == zero, result
    assert result["mismatches"]["linupper_vs_direct"] == zero, result
    assert result["linupper_step_differs"] == [False, True, True], result
    losses = result["losses"]
    assert losses["linupper"][0] == losses["baseline"][0]
    assert losses["linupper"][-1] != losses["baseline"][-1]


# ---------------------------------------------------------------- Megatron-LM's checks kept


def test_megatron_loss_func_checks_the_unweighted_losses():
    """Megatron-LM's loss_func runs on the unweighted token losses (its checks, its flags) and
    the reweighted result is returned; with skip_nonfinite it sees the finite samples only."""
    seen = []

    def megatron_loss(loss_mask, output_tensor, model=None):
        seen.append(torch.sum(output_tensor.view(-1) * loss_mask.view(-1)))
        if not torch.isfinite(seen[-1]):
            raise RuntimeError("found NaN in local forward loss calculation")

    mask = torch.ones(3, 4)
    mask[2] = 0  # padding: weight 0, never a reason to stop
    losses = torch.arange(12.0).view(3, 4)
    reweighted = functools.partial(lambda m, o: ("RESULT", o), mask)
    for skip in (False, True):
        checked = functools.partial(rw.megatron_checked_loss, mask, reweighted=reweighted,
                                    megatron_loss=functools.partial(megatron_loss, mask),
                                    skip_nonfinite=skip)
        result, passed = checked(losses)
        assert result == "RESULT" and passed is losses and seen[-1] == losses[:2].sum()
    bad = losses.clone()
    bad[1, 2] = float("nan")
    stop = functools.partial(rw.megatron_checked_loss, mask, reweighted=reweighted,
                             megatron_loss=functools.partial(megatron_loss, mask))
    with pytest.raises(RuntimeError, match="found NaN"):
        stop(bad)
    ride = functools.partial(stop.func, mask, **{**stop.keywords, "skip_nonfinite": True})
    assert ride(bad)[0] == "RESULT" and seen[-1] == losses[0].sum()
