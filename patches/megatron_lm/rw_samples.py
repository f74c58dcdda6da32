"""Each sample's loss and weight on the logged iterations (``--log-sample-weights``).

The loss hook hands a sink this rank's rows (``megatron_rw.telemetry.SampleTelemetry.sink``);
here one rank writes them as JSON lines, ``{"iteration", "micro_batch", "r", "loss",
"normalised", "weight", "valid"[, "domain"]}``, to ``sample_weights.jsonl`` in ``--save`` (else
``--tensorboard-dir``). The rank: TP rank 0 and the first data-parallel (× context-parallel) rank
of the last pipeline stage, so with one data-parallel rank every row of the global micro-batch
is written. ``iteration`` counts steps as Megatron's log lines do (the step that ends at it);
``r`` is the schedule's (inf during burn-in). Writing copies the rows to the host: only on
iterations that are a multiple of ``--log-interval``. Importable without Megatron-LM.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

FILE = "sample_weights.jsonl"


class SampleLog:
    """Appends the rows of the logged iterations to ``path`` (opened on the first row); every
    rank has one, and ranks that do not write have no ``path``."""

    def __init__(self, path: Optional[str], log_interval: int):
        self.path = path
        self.log_interval = log_interval
        self.file = None
        self.step, self.micro_batch = None, 0

    def sink(self, iteration: int, r: float) -> Optional[Callable]:
        """The sink for one micro-batch of the step after ``iteration`` completed steps; None
        when that step is not logged."""
        step = iteration + 1
        if self.path is None or step % self.log_interval:
            return None
        if step != self.step:
            self.step, self.micro_batch = step, 0

        def write(rows) -> None:
            if self.file is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self.file = open(self.path, "a", encoding="utf-8")
            record = {"iteration": step, "micro_batch": self.micro_batch, "r": r,
                      **{k: v.tolist() for k, v in rows.items()}}
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.micro_batch += 1

        return write


def sample_log(args) -> Optional[SampleLog]:
    """The run's log when ``--log-sample-weights`` is set (on every rank: whether there is one
    decides what the ranks exchange); None otherwise.

    Raises:
        ValueError: neither ``--save`` nor ``--tensorboard-dir`` to write it to.
    """
    if not getattr(args, "log_sample_weights", False):
        return None
    from megatron.core import parallel_state as ps

    folder = args.save or args.tensorboard_dir
    if not folder:
        raise ValueError("--log-sample-weights writes to --save or --tensorboard-dir: give one")
    writes = (ps.is_pipeline_last_stage(ignore_virtual=True)
              and ps.get_tensor_model_parallel_rank() == 0
              and ps.get_data_parallel_rank(with_context_parallel=True) == 0)
    return SampleLog(os.path.join(folder, FILE) if writes else None, args.log_interval)
