"""One rank of GPT pretraining in Megatron's own training loop, with the reweighted loss.

    torchrun --nproc-per-node 8 -m megatron_rw.pretrain_gpt <Megatron's pretrain_gpt.py flags> \\
        --sample-reweight-strategy linupper --sample-reweight-r 0.4

What examples/pretrain_gpt_rw.sh runs on every rank when no ``MEGATRON_LM`` checkout is given:
the installed megatron-core's ``megatron.training`` (0.17 on) driven by
megatron_rw/megatron_training/pretrain_gpt.py, run through patches/megatron_lm/pretrain_gpt_rw.py
as a checkout's script would be. Without CUDA it runs through megatron_rw.cpu.megatron_lm, with
that module's ``CPU_FLAGS`` before the given flags (a given flag wins); on a GPU without
Transformer Engine (a plain venv) with megatron-core's local layers and no TE-only fusions
(:data:`NO_TE_FLAGS`, which Megatron's defaults would otherwise need). Every flag is Megatron's
(a prepared corpus's: ``python -m megatron_rw.data.flags DIR``); checkpoints, logs and
TensorBoard are Megatron's. Needs the repository's patches/ beside the package (a source
checkout, an editable install or the Docker image).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

PACKAGE = os.path.dirname(os.path.abspath(__file__))
OWN_SCRIPT_DIR = os.path.join(PACKAGE, "megatron_training")
PATCH = os.path.join(os.path.dirname(PACKAGE), "patches", "megatron_lm", "pretrain_gpt_rw.py")
NO_TE_FLAGS = ("--transformer-impl", "local", "--no-gradient-accumulation-fusion",
               "--no-persist-layer-norm", "--no-rope-fusion")
NO_LOOP = ("megatron_rw.pretrain_gpt: {python} has no megatron.training (megatron-core's wheels "
           "ship it from 0.17 on): install megatron-core >= 0.17, or run a Megatron-LM checkout's "
           "pretrain_gpt.py through patches/megatron_lm/pretrain_gpt_rw.py "
           "(MEGATRON_LM=/path/to/Megatron-LM bash examples/pretrain_gpt_rw.sh)")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from megatron_rw.megatron_training.installed import has_training_loop

    if not has_training_loop():
        print(NO_LOOP.format(python=sys.executable), file=sys.stderr)
        return 2
    if not os.path.isfile(PATCH):
        print(f"megatron_rw.pretrain_gpt: {PATCH} is missing: install megatron-rw from its "
              "repository (pip install -e .), whose patches/ it runs", file=sys.stderr)
        return 2
    import importlib.util

    import torch

    from megatron_rw.cpu import megatron_lm as megatron_lm_cpu

    if not torch.cuda.is_available():
        first = list(megatron_lm_cpu.CPU_FLAGS)
    elif importlib.util.find_spec("transformer_engine") is None:
        first = list(NO_TE_FLAGS)
    else:
        first = []
    # `import pretrain_gpt` in the patch finds the project's script.
    sys.path.insert(0, OWN_SCRIPT_DIR)
    return megatron_lm_cpu.main([PATCH, *first, *argv])


if __name__ == "__main__":
    sys.exit(main())
