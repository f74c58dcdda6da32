"""What issue 11's evaluation runs: its groups, variants, seeds and flags (``plan()``).

Shared by the runner (``benchmarks.quality.rw_eval``), its report and plots, the timing and
preview harnesses; imports no other part of the evaluation. The module docstring of
``benchmarks.quality.rw_eval`` explains the choices.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from benchmarks.quality import gpt_sweep

REPO = gpt_sweep.REPO
TINY = gpt_sweep.CONFIG
SMALL = os.path.join(REPO, "examples", "configs", "small_cpu.sh")
SEEDS = gpt_sweep.SEEDS

# Chosen after the first seed's results (see the module docstring); a tuple of flags, or None.
# Combo (seed 1234): of the other knobs only the target ESS applies at seq 128 (a row is one
# document for 81 % of rows, so document units would nearly equal sample units), and ESS 0.9
# cost less than 0.7 (+0.029/+0.025 vs +0.122/+0.130 over uniform, clean/noisy). Robust at
# r 1.0 sat at an ESS of 0.95: the combo asks whether a sharper robust weighting helps more.
COMBO_FLAGS: Optional[Tuple[str, ...]] = ("--sample-reweight-strategy", "robust",
                                          "--sample-reweight-target-ess", "0.9")
# Best (seed 1234, both combos in): robust r 1.0, the lowest mean difference to uniform over
# clean and noisy (-0.0002 / -0.0177; the combo +0.0218 / -0.0151, linupper r 1.0 +0.0098 / +0.0063).
BEST_FLAGS: Optional[Tuple[str, ...]] = ("--sample-reweight-strategy", "robust",
                                         "--sample-reweight-r", "1.0")

STRATEGY = "--sample-reweight-strategy"
LINUPPER_R1 = (STRATEGY, "linupper", "--sample-reweight-r", "1.0")
# The seq-128 groups' variants. --sample-reweight-r is ignored under a target ESS (the config's
# 0.4 stays on the command line harmlessly); robust at r 1.0 so it pairs with linupper r 1.0.
MAIN = {
    "uniform": (STRATEGY, "uniform"),
    "linupper-r1": LINUPPER_R1,
    "ess0.9": (STRATEGY, "linupper", "--sample-reweight-target-ess", "0.9"),
    "ess0.7": (STRATEGY, "linupper", "--sample-reweight-target-ess", "0.7"),
    "robust-r1": (STRATEGY, "robust", "--sample-reweight-r", "1.0"),
    "robust-best": "combo",
}
DOC = {"uniform": (STRATEGY, "uniform"), "linupper-r1": LINUPPER_R1,
       "linupper-r1-doc": (*LINUPPER_R1, "--sample-reweight-unit", "document")}
SCALE = {"uniform": (STRATEGY, "uniform"), "linupper-r1": LINUPPER_R1, "best": "best"}
# Document group: 4 x 1024 tokens per step, the seq-128 groups' 32 x 128; one micro-batch of
# 2 rows per rank, so each softmax sees 4 rows (sample units) or ~12 documents (document units).
SEQ1024 = ("--seq-length", "1024", "--max-position-embeddings", "1024",
           "--micro-batch-size", "2", "--global-batch-size", "4")
DOC_ITERS = 300  # budget (see the module docstring); burn-in and warm-up 10 %, as in the sweep
DOC_FLAGS = ("--train-iters", str(DOC_ITERS), "--lr-warmup-iters", "30", "--eval-interval", "100",
             "--eval-iters", "4", "--save-interval", "100", "--log-interval", "10",
             "--sample-reweight-warmup-iters", "30", *SEQ1024)
SCALE_ITERS = 700  # 1.75x tiny's 400: 2.9 M tokens, ~0.7 of data/small's 3.9 M training tokens
SCALE_FLAGS = ("--train-iters", str(SCALE_ITERS), "--lr-warmup-iters", "60", "--eval-interval",
               "100", "--eval-iters", "4", "--save-interval", "100", "--log-interval", "10",
               "--sample-reweight-warmup-iters", "70")

# Timing profiles (results/rw_eval_timing.json): the config and the flags that change its cost.
PROFILES = {"tiny": (TINY, ()), "tiny_seq1024": (TINY, SEQ1024), "small": (SMALL, ())}


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs that share corpus, config and common flags; variants are paired with ``uniform``."""

    name: str
    corpus: str                  # key of the runner's --clean-data / --noisy-data
    config: str
    profile: str                 # key of results/rw_eval_timing.json
    iters: int
    flags: Tuple[str, ...]       # after the config's, before the variant's
    variants: Dict[str, object]  # name -> flags, or "combo"/"best" (chosen later)
    seeds: Tuple[int, ...] = SEEDS


GROUPS = (
    Group("clean", "clean", TINY, "tiny", gpt_sweep.ITERS, tuple(gpt_sweep.COMMON), MAIN),
    Group("noisy", "noisy", TINY, "tiny", gpt_sweep.ITERS, tuple(gpt_sweep.COMMON), MAIN),
    Group("noisy1024", "noisy", TINY, "tiny_seq1024", DOC_ITERS, DOC_FLAGS, DOC),
    Group("scale", "clean", SMALL, "small", SCALE_ITERS, SCALE_FLAGS, SCALE, SEEDS[:2]),
)


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """One run; ``variant_flags`` is None while its flags are still to be chosen."""

    group: str
    variant: str
    seed: int
    corpus: str
    config: str
    profile: str
    iters: int
    common: Tuple[str, ...]
    variant_flags: Optional[Tuple[str, ...]]
    eval_interval: int

    @property
    def name(self) -> str:
        return f"{self.group}-{self.variant}-s{self.seed}"

    def flags(self) -> List[str]:
        return [*self.common, "--seed", str(self.seed), *(self.variant_flags or ())]

    def record(self) -> dict:
        """What run.json keeps: enough to recognise the run and to report it without the plan."""
        return {"name": self.name, "group": self.group, "variant": self.variant,
                "seed": self.seed, "corpus": self.corpus,
                "config": os.path.relpath(self.config, REPO), "iters": self.iters,
                "flags": self.flags(), "variant_flags": list(self.variant_flags or ())}


def _flag(flags, name: str, default: int) -> int:
    """The last value of ``name`` in ``flags`` (argparse keeps the last)."""
    idx = [i for i, f in enumerate(flags) if f == name]
    return int(flags[idx[-1] + 1]) if idx else default


def smoke_flags(iters: int) -> Tuple[str, ...]:
    """Overrides for a short proof run: everything (burn-in, evals, a checkpoint) within iters."""
    return ("--train-iters", str(iters), "--lr-warmup-iters", str(max(iters // 4, 1)),
            "--eval-interval", str(max(iters // 2, 1)), "--save-interval", str(iters),
            "--log-interval", str(max(iters // 4, 1)),
            "--sample-reweight-warmup-iters", str(iters // 4))


def plan(combo: Optional[Tuple[str, ...]] = COMBO_FLAGS,
         best: Optional[Tuple[str, ...]] = BEST_FLAGS,
         iters: Optional[int] = None) -> List[EvalRun]:
    """Every run, seed-major; ``iters`` (smoke runs only) shortens every run to that many."""
    chosen = {"combo": combo, "best": best}
    runs = []
    for seed in SEEDS:
        for g in GROUPS:
            if seed not in g.seeds:
                continue
            common = (*g.flags, *smoke_flags(iters)) if iters else g.flags
            for variant, flags in g.variants.items():
                vflags = chosen[flags] if isinstance(flags, str) else flags
                runs.append(EvalRun(g.name, variant, seed, g.corpus, g.config, g.profile,
                                    iters or g.iters, common,
                                    tuple(vflags) if vflags is not None else None,
                                    _flag(common, "--eval-interval", 50)))
    return runs
