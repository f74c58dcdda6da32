"""Worker for tests/test_patches.py (started by torchrun, gloo, CPU).

    torchrun --nproc-per-node N tests/workers/patches.py --out OUT.json

With the stand-in Megatron-LM checkout tests/workers/megatron_lm_standin on sys.path, trains the
tiny GPT for STEPS optimizer steps through megatron-core's real schedules four times:

- ``baseline``: the stand-in ``pretrain_gpt.py`` run as a script, Megatron-LM's own entry point;
- ``uniform``:  patches/megatron_lm/pretrain_gpt_rw.py with ``--sample-reweight-strategy uniform``;
- ``linupper``: the patch with linupper, r = 0.4 and a one-step burn-in;
- ``direct``:   the stand-in's ``pretrain`` with a hand-written forward_step that returns
  ``partial(reweighted_loss_func, loss_mask, config=..., iteration=args.curr_iteration)``
  (the README's recipe) and the linupper flags.

Writes per-step losses of every run and the mismatch counts (summed over ranks) of
uniform vs baseline and linupper vs direct, bitwise over losses, main_grads and parameters.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import sys
import warnings
from functools import partial

warnings.filterwarnings("ignore")  # Megatron warns about missing TE/Apex on every import

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STANDIN = os.path.join(REPO, "tests", "workers", "megatron_lm_standin")
SCRIPT = os.path.join(REPO, "patches", "megatron_lm", "pretrain_gpt_rw.py")
sys.path[:0] = [STANDIN, REPO]

from megatron_rw.cpu.runtime import backend, enable_cpu_runtime  # noqa: E402

enable_cpu_runtime()

import megatron.training as megatron_training  # noqa: E402  (the stand-in)
import pretrain_gpt  # noqa: E402  (the stand-in)

from megatron_rw import ReweightConfig, add_sample_reweight_args, reweighted_loss_func  # noqa: E402

STEPS = 3
BASE = ["--train-iters", str(STEPS)]
LINUPPER = ["--sample-reweight-strategy", "linupper", "--sample-reweight-r", "0.4",
            "--sample-reweight-warmup-iters", "1"]


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_gpt_rw", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_forward_step(data_iterator, model):
    """The README's recipe, written by hand around the stand-in's get_batch and model call."""
    args = megatron_training.get_args()
    tokens, labels, loss_mask, attention_mask, position_ids = pretrain_gpt.get_batch(data_iterator)
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
    return output_tensor, partial(reweighted_loss_func, loss_mask,
                                  config=ReweightConfig.from_args(args),
                                  iteration=args.curr_iteration)


def train(argv, entry):
    sys.argv = [SCRIPT, *argv]
    entry()
    return megatron_training.RECORDS.pop()


def mismatches(a, b):
    """Differing losses, and differing tensors among the grads and params of every step."""
    def tensors(key):
        return sum(not torch.equal(x, y) for s, t in zip(a[key], b[key]) for x, y in zip(s, t))

    return {"loss": sum(x != y for x, y in zip(a["loss"], b["loss"])),
            "grads": tensors("grads"), "params": tensors("params")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out

    dist.init_process_group(backend())
    script = load_script()
    runs = {
        "baseline": train(BASE, lambda: runpy.run_path(os.path.join(STANDIN, "pretrain_gpt.py"),
                                                       run_name="__main__")),
        "uniform": train(BASE + ["--sample-reweight-strategy", "uniform"], script.main),
        "linupper": train(BASE + LINUPPER, script.main),
        "direct": train(BASE + LINUPPER, lambda: megatron_training.pretrain(
            pretrain_gpt.train_valid_test_datasets_provider, None, None, direct_forward_step,
            extra_args_provider=add_sample_reweight_args)),
    }
    pairs = {"uniform_vs_baseline": ("uniform", "baseline"),
             "linupper_vs_direct": ("linupper", "direct"),
             "linupper_vs_baseline": ("linupper", "baseline")}
    names = ["loss", "grads", "params"]
    counts = torch.tensor([[mismatches(runs[a], runs[b])[n] for n in names]
                           for a, b in pairs.values()])
    dist.all_reduce(counts)
    compared = {"loss": STEPS, "grads": sum(map(len, runs["baseline"]["grads"])),
                "params": sum(map(len, runs["baseline"]["params"]))}
    result = {
        "world_size": dist.get_world_size(),
        "losses": {name: run["loss"] for name, run in runs.items()},
        "compared_per_rank": compared,
        "mismatches": {pair: dict(zip(names, row)) for pair, row in zip(pairs, counts.tolist())},
        # Per step: does linupper differ from the baseline (step 0 is burn-in, so must not)?
        "linupper_step_differs": [
            any(not torch.equal(x, y) for x, y in zip(g, h))
            for g, h in zip(runs["linupper"]["grads"], runs["baseline"]["grads"])],
    }
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
