"""Helpers to start torchrun jobs from tests."""

import os
import socket
import subprocess
import sys
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, nproc: int, args: List[str], env: Optional[Dict[str, str]] = None,
             timeout: float = 1800) -> str:
    """Run ``script`` under torchrun on one "node"; returns the combined log, raises with it on failure.

    The timeout is generous on purpose: the 2-process equivalence launch once ran past 10 min
    on a 2-core machine, when its workers still leaked the gloo groups of every layout (~2,500
    threads per process; tests/_layouts.py now destroys them). A real hang still ends the job.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", script, *args]
    # The repo first; an existing PYTHONPATH stays (e.g. megatron-core installed with --target).
    # ``env`` wins over both (a Megatron-LM checkout put first, say).
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    full_env.update(env or {})
    proc = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc.stdout
