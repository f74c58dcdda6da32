"""Checkpoints: ``<save>/iter_0000010/model_optim_rng_tp{t}_pp{p}.pt`` + a tracker file.

Without a distributed optimizer every data-parallel (and context-parallel) replica holds the same
model and optimizer state, so only DP×CP rank 0 of each (TP, PP) position writes. The RNG states
are the same on every replica too (all DP ranks are seeded alike, as in Megatron-LM).

Atomicity: all writers write into ``iter_N.tmp``; after a barrier global rank 0 renames it to
``iter_N`` (``os.replace``) and then writes ``latest_checkpointed_iteration.txt`` via a temp file
and ``os.replace``. A run killed at any moment leaves the tracker pointing at a complete folder.

Files hold only tensors and primitive containers, and load with ``torch.load(weights_only=True)``.
Transformer Engine's ``_extra_state`` entries (pickled objects) are left out.
"""

from __future__ import annotations

import os
import random
import shutil
from typing import Any, Optional

import numpy
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

TRACKER = "latest_checkpointed_iteration.txt"


def iter_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def _file_name() -> str:
    return (f"model_optim_rng_tp{ps.get_tensor_model_parallel_rank():02d}"
            f"_pp{ps.get_pipeline_model_parallel_rank():03d}.pt")


def _primitive(obj: Any) -> Any:
    """Anything ``weights_only`` cannot load becomes tensors / lists / dicts / str."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {k: _primitive(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_primitive(v) for v in obj)
    if isinstance(obj, numpy.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a weights_only checkpoint")


def _rng_state() -> dict:
    np_state = numpy.random.get_state()
    return {
        "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(numpy.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "cached_gaussian": np_state[4]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), None))
    n = state["numpy"]
    numpy.random.set_state(("MT19937", n["keys"].numpy().astype(numpy.uint32), n["pos"],
                            n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _model_state(model) -> dict:
    sd = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


def save_checkpoint(root: str, iteration: int, consumed: int, model, optimizer, scheduler) -> None:
    """Write ``iter_N`` atomically; collective over the world."""
    final, tmp = iter_dir(root, iteration), iter_dir(root, iteration) + ".tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
        state = {
            "iteration": iteration, "consumed_samples": consumed,
            "model": _model_state(model), "optimizer": _primitive(optimizer.state_dict()),
            "scheduler": _primitive(scheduler.state_dict()), "rng": _primitive(_rng_state()),
        }
        path = os.path.join(tmp, _file_name())
        torch.save(state, path + ".part")
        os.replace(path + ".part", path)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, TRACKER + ".tmp"), "w") as f:
            f.write(str(iteration))
        os.replace(os.path.join(root, TRACKER + ".tmp"), os.path.join(root, TRACKER))
    dist.barrier()


def latest_iteration(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(f.read().strip())


def load_checkpoint(root: str, model, optimizer, scheduler) -> tuple:
    """Restore from the tracker's iteration. Returns ``(iteration, consumed_samples)``, (0, 0)
    when ``root`` has no checkpoint yet."""
    iteration = latest_iteration(root)
    if iteration is None:
        return 0, 0
    state = torch.load(os.path.join(iter_dir(root, iteration), _file_name()), map_location="cpu",
                       weights_only=True)
    module = model.module if hasattr(model, "module") else model
    missing, unexpected = module.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {root} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["iteration"], state["consumed_samples"]
