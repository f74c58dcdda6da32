"""megatron_rw.cpu.megatron_lm: the shims Megatron-LM's training loop needs on a CPU."""

import os
import subprocess
import sysconfig

import pytest

from megatron_rw.cpu import megatron_lm as megatron_lm_cpu


def test_built_dataset_helpers_are_not_rebuilt(monkeypatch, tmp_path):
    """megatron-core's wheels ship the compiled dataset helpers: initialize's compile step must
    not run make (which needs pybind11, absent on many machines) when they are up to date, and
    must where helpers.cpp is newer."""
    utils = pytest.importorskip("megatron.core.datasets.utils")
    megatron_lm_cpu._compile_helpers_for_this_python()
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: ran.append(cmd)
                        or subprocess.CompletedProcess(cmd, 0))
    folder = tmp_path / "datasets"
    folder.mkdir()
    monkeypatch.setattr(os.path, "abspath", lambda p, _real=os.path.abspath: (
        str(folder / "utils.py") if p == utils.__file__ else _real(p)))
    (folder / "helpers.cpp").write_text("// source")
    built = folder / ("helpers_cpp" + sysconfig.get_config_var("EXT_SUFFIX"))
    built.write_bytes(b"")
    os.utime(folder / "helpers.cpp", (1, 1))
    utils.compile_helpers()
    assert ran == []
    os.utime(built, (0, 0))  # older than helpers.cpp: make's rule rebuilds
    utils.compile_helpers()
    assert len(ran) == 1 and ran[0][:3] == ["make", "-C", str(folder)]
