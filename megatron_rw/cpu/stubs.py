"""Part 1 of the CPU runtime (:mod:`megatron_rw.cpu.runtime`): ``torch.cuda.*`` API stubs.

``current_device`` / ``set_device`` / ``synchronize`` / ``Stream`` / ``Event`` / nvtx / memory
statistics become cheap no-ops, so Megatron's bookkeeping code runs on a machine without a GPU.
Installed only by ``enable_cpu_runtime``, never on a machine with a usable GPU.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

__all__ = ["stub_cuda_api"]

class _FakeStream:
    """Stands in for torch.cuda.Stream: CPU work is synchronous, so every wait is a no-op."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event if event is not None else _FakeEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeEvent:
    """Stands in for torch.cuda.Event; timings read as 0 ms (Megatron's timers use wall clock)."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end_event):
        return 0.0


_DEFAULT_STREAM = _FakeStream()
_DEVICE_PROPERTIES = SimpleNamespace(name="cpu", major=0, minor=0, total_memory=0,
                                     multi_processor_count=0)


def _const(value):
    """A fresh function returning `value`. Every stub must be a distinct object: torch._dynamo
    keys its trace rules by function identity and asserts if one object gets two rules."""

    def stub(*args, **kwargs):
        return value

    return stub


def stub_cuda_api() -> None:
    """Replace the ``torch.cuda`` functions Megatron calls by CPU stand-ins."""
    cuda = torch.cuda
    stubs = {
        # There is exactly one "device" and it is device 0; Megatron passes this int as `device=`,
        # which part 3 maps back to the CPU.
        "current_device": lambda: 0,
        "device_count": lambda: 1,
        "set_device": _const(None),
        "synchronize": _const(None),
        "empty_cache": _const(None),
        "Stream": _FakeStream,
        "Event": _FakeEvent,
        "current_stream": lambda device=None: _DEFAULT_STREAM,
        "default_stream": lambda device=None: _DEFAULT_STREAM,
        "set_stream": _const(None),
        # `with torch.cuda.stream(s):` only orders GPU kernels; nothing to order on CPU.
        "stream": lambda stream=None: contextlib.nullcontext(),
        "memory_allocated": _const(0),
        "max_memory_allocated": _const(0),
        "memory_reserved": _const(0),
        "max_memory_reserved": _const(0),
        "reset_peak_memory_stats": _const(None),
        "reset_max_memory_allocated": _const(None),
        "memory_stats": lambda device=None: {},
        "get_device_name": lambda device=None: "cpu",
        "get_device_capability": lambda device=None: (0, 0),
        # Megatron-LM's argument checks read `.major` (the GPU generation) under TP/CP.
        "get_device_properties": lambda device=None: _DEVICE_PROPERTIES,
    }
    for name, fn in stubs.items():
        setattr(cuda, name, fn)
    # nvtx ranges are profiler annotations; the CPU build's stub raises on every call.
    for name in ("range_push", "range_pop", "mark"):
        setattr(cuda.nvtx, name, _const(None))
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()
