"""Run megatron-core's CUDA-only code paths on a CPU-only machine (tests, CI, demos).

megatron-core 0.16.1 hard-codes CUDA in many places that a training step touches: the RNG
tracker (`tensor_parallel/random.py`), DDP grad buffers and the schedules allocate with
`device=torch.cuda.current_device()` or `device="cuda"`, `language_module.py` calls `.cuda()`
under pipeline parallelism, RoPE asks for `pin_memory=True` under context parallelism, and grad
clipping / the distributed optimizer assert `tensor.type() == 'torch.cuda.FloatTensor'`.
Rather than patching each call site (a moving target across versions) we make "cuda" mean the
CPU for the whole process, in three parts:

1. `torch.cuda.*` stubs (`megatron_rw/cpu/stubs.py`): current_device / set_device / synchronize /
   Stream / Event / nvtx / memory statistics become cheap no-ops so bookkeeping code runs.
2. CUDA RNG -> CPU RNG: `torch.cuda.{get,set}_rng_state`, `manual_seed(_all)` and
   `torch.cuda.default_generators` use the CPU default generator, so Megatron's
   `CudaRNGStatesTracker` forks (dropout, TP init) fork the generator that CPU ops really use.
   The one draw a GPU run takes from the CPU generator on the way, a DataLoader's worker seed,
   gets a generator of its own, or a resumed run's dropout would shift (see below).
3. A `TorchFunctionMode`, entered once and left active, that rewrites cuda devices to cpu in every
   torch call, drops `pin_memory`, makes `Tensor.cuda()` return self and makes `Tensor.type()`
   report `torch.cuda.*` names for CPU tensors. A mode is switched off while its handler runs, so
   `backward()` / `autograd.grad` are re-dispatched with the mode pushed again: Megatron's custom
   autograd functions allocate on "cuda" in their backward too (e.g. sequence-parallel linear).

Collectives need one thing: megatron-core's alltoall MoE dispatcher hands
``all_to_all_single`` its split sizes as tensors, which torch 2.14 refuses; the mode passes them
as lists of ints. Otherwise every tensor is a CPU tensor, which gloo handles. Use `backend()` to pick
the process-group backend. The shim is installed only when no GPU is present; intercepting every
torch call in Python costs ~12-16 % step time (GUIDE.md §2).
"""

from __future__ import annotations

import logging
import threading

import torch

from megatron_rw.cpu.stubs import stub_cuda_api

__all__ = ["enable_cpu_runtime", "is_enabled", "backend"]

_lock = threading.Lock()
_enabled = False
_mode = None  # the active _CudaAsCpuMode; kept referenced so it is never garbage-collected


def backend() -> str:
    """The torch.distributed backend that matches this machine: "nccl" with a GPU, else "gloo"."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def is_enabled() -> bool:
    """True once `enable_cpu_runtime()` has installed the shim in this process."""
    return _enabled


def enable_cpu_runtime() -> bool:
    """Install the CPU shim if this machine has no GPU. Idempotent.

    Call it before building Megatron models (ideally right after `import torch`). It never
    touches a machine with a usable GPU.

    Returns:
        True if the shim is (now) active, False if CUDA is available and nothing was done.
    """
    global _enabled, _mode
    if torch.cuda.is_available():
        return False
    with _lock:
        if _enabled:
            return True
        stub_cuda_api()
        _redirect_cuda_rng()
        _patch_megatron_rng()
        _patch_megatron_without_te()
        # Entered globally and never exited: Megatron allocates on "cuda" from any code path.
        _mode = _CudaAsCpuMode()
        _mode.__enter__()
        _enabled = True
    return True


# --------------------------------------------------------------------------- part 1: API stubs
# megatron_rw/cpu/stubs.py


# --------------------------------------------------------------------------- part 2: RNG
def _get_rng_state(device="cuda"):
    return torch.default_generator.get_state()


def _set_rng_state(new_state, device="cuda"):
    torch.default_generator.set_state(new_state)


def _manual_seed(seed):
    # NOT torch.manual_seed: it calls torch.cuda.manual_seed_all, i.e. this function -> recursion.
    torch.default_generator.manual_seed(int(seed))


def _redirect_cuda_rng():
    cuda = torch.cuda
    for mod in (cuda, cuda.random):
        mod.get_rng_state = _get_rng_state
        mod.set_rng_state = _set_rng_state
        mod.get_rng_state_all = lambda: [_get_rng_state()]
        mod.set_rng_state_all = lambda states: _set_rng_state(states[0])
        mod.manual_seed = _manual_seed
        mod.manual_seed_all = lambda seed: _manual_seed(seed)
        mod.seed = lambda: torch.default_generator.seed()
        mod.seed_all = mod.seed
        mod.initial_seed = lambda: torch.default_generator.initial_seed()
    # Megatron's `_set_cuda_rng_state` indexes `torch.cuda.default_generators[current_device()]`.
    cuda.default_generators = (torch.default_generator,)
    _keep_data_loader_off_the_rng()


_loader_seeds = None  # torch.Generator for DataLoader worker seeds, made on first use


def _keep_data_loader_off_the_rng():
    """Every `iter(DataLoader)` draws its workers' base seed from the CPU generator. On a GPU
    dropout draws from the CUDA generator, which that draw never touches; here they are one
    generator. Megatron-LM builds its data iterators after a checkpoint's RNG states are restored
    (and before the first step of a fresh run), so the draw shifted every dropout mask of a
    resumed run: measured, resume was not bitwise with dropout on. Draw it from a generator of
    its own (seeded from the process's initial seed, so runs stay reproducible)."""
    from torch.utils.data import DataLoader

    original = DataLoader.__iter__

    def __iter__(self):
        global _loader_seeds
        if self.generator is not None:
            return original(self)
        if _loader_seeds is None:
            _loader_seeds = torch.Generator().manual_seed(torch.initial_seed())
        self.generator = _loader_seeds
        try:
            return original(self)
        finally:
            self.generator = None

    DataLoader.__iter__ = __iter__


def _patch_megatron_rng():
    try:
        from megatron.core.tensor_parallel import random as mrandom
    except ImportError:  # megatron-core not installed: parts 1-3 still help plain torch code
        return
    # `_set_cuda_rng_state` runs its work through `torch.cuda._lazy_call`, which on a machine
    # without CUDA queues the callback for a CUDA init that never happens: the RNG tracker would
    # silently never restore its states. Run the callback at once instead.
    mrandom._lazy_call = lambda fn, **kwargs: fn()
    # CudaRNGStatesTracker.fork() warns when the CPU RNG moved inside a CUDA-RNG fork; here the two
    # are one generator, so every dropout inside a fork would log it. Its restore logic is correct.
    logging.getLogger(mrandom.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG" not in record.getMessage()
    )


def _patch_megatron_without_te():
    """megatron-core 0.16.1's ``moe_utils`` imports ``te_general_gemm`` inside a ``try`` and
    reads it unconditionally in the MoE router's gating (``if te_general_gemm is not None``):
    without Transformer Engine every MoE forward raises NameError. None is what the code
    expects when TE is absent; later versions define it so themselves."""
    try:
        from megatron.core.transformer.moe import moe_utils
    except ImportError:
        return
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


# --------------------------------------------------------------------------- part 3: devices
def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is a CUDA ordinal (what `torch.cuda.current_device()` hands out).
    return isinstance(device, int) and not isinstance(device, bool)


def _tensor_type(args, kwargs):
    self, dtype = args[0], (args[1] if len(args) > 1 else kwargs.pop("dtype", None))
    if dtype is None:
        # Megatron's clip_grads / distributed optimizer assert 'torch.cuda.FloatTensor' etc.
        name = torch.Tensor.type(self)
        return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
    if isinstance(dtype, str):  # 'torch.cuda.HalfTensor' -> 'torch.HalfTensor'
        dtype = dtype.replace("torch.cuda.", "torch.", 1)
    return torch.Tensor.type(self, dtype, *args[2:], **kwargs)


def _tensor_to(args, kwargs):
    if len(args) > 1 and _is_cuda_device(args[1]):
        args = (args[0], "cpu") + tuple(args[2:])
    return torch.Tensor.to(*args, **kwargs)


def _split_sizes_as_ints(args, kwargs):
    """``all_to_all_single`` with its split sizes as lists of ints. megatron-core's alltoall MoE
    dispatcher passes them as host tensors, which torch 2.14's c10d binding rejects
    ("incompatible function arguments": it takes a sequence of ints); the values are the same."""
    for name in ("output_split_sizes", "input_split_sizes"):
        sizes = kwargs.get(name)
        if sizes is not None and not isinstance(sizes, (list, tuple)):
            kwargs[name] = [int(n) for n in sizes]
    return torch.distributed.all_to_all_single(*args, **kwargs)


_METHODS = {
    torch.Tensor.cuda: lambda args, kwargs: args[0],  # already "on the device"
    torch.Tensor.pin_memory: lambda args, kwargs: args[0],  # pinning needs a CUDA driver
    torch.Tensor.record_stream: lambda args, kwargs: None,  # streams are fake (part 1)
    torch.Tensor.type: _tensor_type,
    torch.Tensor.to: _tensor_to,
}
if torch.distributed.is_available():
    _METHODS[torch.distributed.all_to_all_single] = _split_sizes_as_ints


# Torch functions that run arbitrary Python inside them (Function.backward, autograd hooks), which
# must see this mode too; handled in the mode itself. `_skip_one_hop` = "call `func` without
# dispatching to the current mode" (torch.overrides.redispatch_function); where an older torch
# lacks it, backward passes run without the mode.
_REDISPATCH = object()
_skip_one_hop = getattr(torch._C, "_skip_one_hop_torch_function", None)
if _skip_one_hop is not None:
    for _fn in (torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad):
        _METHODS[_fn] = _REDISPATCH


class _CudaAsCpuMode(torch.overrides.TorchFunctionMode):
    """Maps cuda devices to cpu in every torch function / Tensor method call.

    Runs for every torch call, so the common path (no kwargs, no special method) is one dict
    lookup. The mode stack is thread-local: threads Megatron starts itself do not see it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs:
            device = kwargs.get("device")
            cuda_device = device is not None and _is_cuda_device(device)
            if cuda_device or "pin_memory" in kwargs:
                kwargs = dict(kwargs)
                if cuda_device:
                    kwargs["device"] = "cpu"
                kwargs.pop("pin_memory", None)
        special = _METHODS.get(func)
        if special is None:
            return func(*args, **kwargs) if kwargs else func(*args)
        if special is _REDISPATCH:
            # A mode is popped while its handler runs, so plain `func(...)` would run the whole
            # backward pass (custom Function backwards, DDP grad hooks) without this mode. Re-push
            # it and skip just this one dispatch level.
            with self:
                return _skip_one_hop(func, types, args, kwargs or {})
        return special(args, dict(kwargs) if kwargs else {})
