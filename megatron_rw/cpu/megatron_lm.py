"""Run a Megatron-LM checkout's training loop on a CPU: ``pretrain_gpt.py``, patched or not.

    PYTHONPATH=/path/to/Megatron-LM torchrun --nproc-per-node 2 -m megatron_rw.cpu.megatron_lm \\
        /path/to/Megatron-LM/pretrain_gpt.py <pretrain_gpt.py flags> \\
        --transformer-impl local --no-gradient-accumulation-fusion --no-persist-layer-norm \\
        --no-rope-fusion --distributed-backend gloo

The script (Megatron-LM's ``pretrain_gpt.py`` or ``patches/megatron_lm/pretrain_gpt_rw.py``) runs
as ``__main__`` after :func:`enable_megatron_lm_cpu`. With a GPU this module only runs the script.

:func:`~megatron_rw.cpu.runtime.enable_cpu_runtime` makes megatron-core's CUDA calls run on the
CPU; Megatron-LM's ``megatron.training`` needs three more things, measured on ``core_v0.16.1``
and ``core_v0.19.0``:

- ``pretrain`` calls ``initialize_megatron()`` without ``allow_no_cuda=True``, and without it
  ``initialize_megatron`` asserts ``torch.cuda.is_available()``;
- ``initialize`` runs ``make`` in ``megatron/core/datasets`` to build the dataset helpers, and its
  Makefile names the module with ``python3-config --extension-suffix``: in a virtual environment
  that is another Python's ``python3-config`` (or none), so ``make`` builds (or looks for) a
  module this interpreter never imports. We pass this interpreter's suffix as ``LIBEXT``, and
  skip ``make`` where that module is built and up to date (megatron-core's wheels ship it, and
  the machine may have no pybind11: the installed ``megatron.training`` then runs as is);
- with tensor or context parallelism, argument validation asks for the GPU's architecture
  (``torch.cuda.get_device_properties``; stubbed by the CPU runtime) and requires
  ``CUDA_DEVICE_MAX_CONNECTIONS=1``, which means nothing on a CPU: set here unless already set.
"""

from __future__ import annotations

import functools
import os
import runpy
import subprocess
import sys
import sysconfig
from typing import List, Optional

from megatron_rw.cpu.runtime import enable_cpu_runtime

__all__ = ["enable_megatron_lm_cpu", "CPU_FLAGS", "main"]

# Megatron-LM flags a CPU run needs: no Transformer Engine, no fused CUDA kernels (RoPE fusion is
# on by default and refuses to run without TE), gloo.
CPU_FLAGS = ("--transformer-impl", "local", "--no-gradient-accumulation-fusion",
             "--no-persist-layer-norm", "--no-rope-fusion", "--distributed-backend", "gloo")


def enable_megatron_lm_cpu() -> bool:
    """The CPU runtime plus the shims Megatron-LM's ``megatron.training`` needs. Idempotent.

    Call before ``pretrain`` runs (importing ``megatron.training`` first is fine: the shims
    replace module attributes that ``pretrain`` looks up at call time).

    Returns:
        False (and nothing done) when CUDA is available.
    """
    if not enable_cpu_runtime():
        return False
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    _allow_no_cuda()
    _compile_helpers_for_this_python()
    return True


def _allow_no_cuda() -> None:
    try:
        from megatron.training import initialize, training
    except ImportError:  # megatron-core alone, without Megatron-LM's training loop
        return
    original = initialize.initialize_megatron
    if getattr(original, "_megatron_rw_cpu", False):
        return

    @functools.wraps(original)
    def initialize_megatron(*args, **kwargs):
        # allow_no_cuda is the first parameter in every version read; it only skips the assert.
        if args:
            args = (True,) + args[1:]
        else:
            kwargs["allow_no_cuda"] = True
        return original(*args, **kwargs)

    initialize_megatron._megatron_rw_cpu = True
    # training.py binds the name at import (`from megatron.training.initialize import ...`).
    initialize.initialize_megatron = initialize_megatron
    if getattr(training, "initialize_megatron", None) is original:
        training.initialize_megatron = initialize_megatron


def _compile_helpers_for_this_python() -> None:
    try:
        from megatron.core.datasets import utils
    except ImportError:
        return
    if getattr(utils.compile_helpers, "_megatron_rw_cpu", False):
        return

    def compile_helpers():
        """Megatron's ``compile_helpers`` with this interpreter's extension suffix; nothing to
        do where the module is built already (megatron-core wheels ship it)."""
        folder = os.path.dirname(os.path.abspath(utils.__file__))
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built, source = (os.path.join(folder, name) for name in ("helpers_cpp" + suffix,
                                                                  "helpers.cpp"))
        # make's own rule: up to date when the module is not older than helpers.cpp.
        if os.path.isfile(built) and (not os.path.isfile(source)
                                      or os.path.getmtime(built) >= os.path.getmtime(source)):
            return
        command = ["make", "-C", folder, f"LIBEXT={suffix}",
                   # The Makefile asks `python3 -m pybind11`: ask this interpreter instead.
                   f"CPPFLAGS=$(shell {sys.executable} -m pybind11 --includes)"]
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"megatron_rw: `{' '.join(command)}` failed: the dataset helpers "
                             "need a C++ compiler and pybind11 (pip install pybind11)")

    compile_helpers._megatron_rw_cpu = True
    utils.compile_helpers = compile_helpers


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m megatron_rw.cpu.megatron_lm SCRIPT.py [flags ...]",
              file=sys.stderr)
        return 2
    script = os.path.abspath(argv[0])
    enable_megatron_lm_cpu()
    # As `python SCRIPT.py`: the script's folder first on sys.path, its own argv.
    sys.path.insert(0, os.path.dirname(script))
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
