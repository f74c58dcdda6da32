"""What every results file records about where it was measured: date, versions, CPU, load."""

from __future__ import annotations

import datetime
import os
import platform
from importlib.metadata import PackageNotFoundError, version


def environment() -> dict:
    """Date, Python, torch and megatron-core versions, CPU model and count, load average now."""
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mcore = version("megatron-core")
    except PackageNotFoundError:
        mcore = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "megatron_core": mcore,
            "python": platform.python_version(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()}
