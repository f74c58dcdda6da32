"""Report averaging (Megatron's ``[sum, count]`` pairs) and the scalar writers of rank 0."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_rw.loss import LM_LOSS, STAT_KEYS, WEIGHTED_LOSS

REPORT_KEYS = (LM_LOSS, WEIGHTED_LOSS, *STAT_KEYS.values())


def average_reports(reports: Optional[List[dict]],
                    keys: Sequence[str] = REPORT_KEYS) -> Dict[str, float]:
    """Average per-micro-batch reports as Megatron-LM does; collective over the world.

    On the last pipeline stage the ``[sum, count]`` pairs are summed over micro-batches and
    all-reduced over DP×CP. Exactly one rank (last stage, TP rank 0, DP×CP rank 0) then contributes
    them to a world all-reduce that every other rank joins with zeros, so rank 0 (and everyone)
    gets the last stage's values bit for bit. ``keys`` must be the same on every rank; keys
    missing from the reports, or with a count of 0 over the whole step, are left out.
    """
    # On the GPU when there is one: NCCL reduces only CUDA tensors, and the reports are already
    # there, so filling `totals` copies nothing. Without a GPU, the CPU for gloo.
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    totals = torch.zeros(len(keys), 2, dtype=torch.float32, device=device)
    if reports:
        for i, key in enumerate(keys):
            if key in reports[0]:
                totals[i] = torch.stack([r[key].float().view(2) for r in reports]).sum(0)
        dist.all_reduce(totals, group=ps.get_data_parallel_group(with_context_parallel=True))
    owner = (ps.is_pipeline_last_stage(ignore_virtual=True)
             and ps.get_tensor_model_parallel_rank() == 0
             and ps.get_data_parallel_rank(with_context_parallel=True) == 0)
    if not owner:
        totals.zero_()
    dist.all_reduce(totals)
    return {k: float(s / n) for k, (s, n) in zip(keys, totals.tolist()) if n > 0}


class MetricsWriter:
    """Scalars to TensorBoard (when it imports) and always to a JSONL file; rank 0 only."""

    def __init__(self, jsonl_path: Optional[str], tensorboard_dir: Optional[str], active: bool):
        self.active = active
        self.tb = None
        self.file = None
        if not active:
            return
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=tensorboard_dir)
            except ImportError:
                print(f"note: torch.utils.tensorboard is not importable; scalars go only to "
                      f"{jsonl_path}", flush=True)
        if jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl_path)), exist_ok=True)
            self.file = open(jsonl_path, "a", encoding="utf-8")

    def write(self, iteration: int, scalars: Dict[str, float], prefix: str = "") -> None:
        if not self.active:
            return
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(prefix + k, v, iteration)
        if self.file is not None:
            record = {"iteration": iteration, **{prefix + k: v for k, v in scalars.items()}}
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()


class SampleLog:
    """Per-sample rows (loss, normalised loss, weight, domain) of the logged iterations, as JSONL.

    One rank writes (the caller decides which: it sees only its own rows). ``record`` is the
    loss hook's telemetry sink; ``flush`` writes what the last step recorded.
    """

    def __init__(self, path: Optional[str], active: bool):
        self.active = active and path is not None
        self.rows: List[dict] = []
        self.file = None
        if self.active:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")

    def record(self, rows: Dict[str, torch.Tensor]) -> None:
        if self.active:
            self.rows.append({k: v.tolist() for k, v in rows.items()})

    def flush(self, iteration: int, r: float) -> None:
        if self.active:
            for m, rows in enumerate(self.rows):
                self.file.write(json.dumps({"iteration": iteration, "micro_batch": m, "r": r,
                                            **rows}) + "\n")
            self.file.flush()
        self.rows = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
