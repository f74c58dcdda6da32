"""A Megatron run's logged numbers, read back from its TensorBoard events.

Megatron-LM's training loop writes, on its last rank and every ``--tensorboard-log-interval``
iterations, each key of the step's loss report (``lm loss``, ``weighted lm loss``, ``sample
weight ess``, ``sample weight share/<domain>``, ...), ``learning-rate``, ``grad-norm`` and the
like; after each evaluation ``<key> validation`` (``<key> validation-<name>`` with
``--multiple-validation-sets``); and at start-up every argument as a text summary. This module
turns the event files of ``--tensorboard-dir`` into ``{iteration: {tag: value}}`` and
``{argument: text}``: what the demo's table and plot, the launch tests and the benchmarks read.

The ``... vs samples`` tags (the same values against consumed samples) are left out. A resumed
run adds event files to the same directory; for an iteration logged twice (after a resume from
an earlier checkpoint) the later file wins, as it is what the run continued from. Needs the
``tensorboard`` package.
"""

from __future__ import annotations

import glob
import os
from typing import Dict, Tuple

Scalars = Dict[int, Dict[str, float]]

VALIDATION = " validation"  # Megatron's suffix for evaluation tags: "<key> validation[-<set>]"
BY_SAMPLES = " vs samples"


def event_files(tensorboard_dir: str) -> list:
    """The event files of ``tensorboard_dir`` in the order they were started (their names
    carry the start time in seconds; ties keep the name order)."""
    files = glob.glob(os.path.join(tensorboard_dir, "events.out.tfevents.*"))

    def started(path: str) -> Tuple[int, str]:
        parts = os.path.basename(path).split(".")
        return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, path)

    return sorted(files, key=started)


def read_run(tensorboard_dir: str) -> Tuple[Scalars, Dict[str, str]]:
    """``(scalars, args)``: every scalar per iteration, and the run's arguments as Megatron
    wrote them (``str(value)``, the latest start's).

    Raises:
        FileNotFoundError: no event file in ``tensorboard_dir`` (was ``--tensorboard-dir``
            given, and ``tensorboard`` installed where the run ran?).
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = event_files(tensorboard_dir)
    if not files:
        raise FileNotFoundError(
            f"no TensorBoard events in {tensorboard_dir}: Megatron writes them with "
            "--tensorboard-dir when the tensorboard package is installed")
    scalars: Scalars = {}
    args: Dict[str, str] = {}
    for path in files:
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if value.WhichOneof("value") == "simple_value":
                    number = value.simple_value
                elif plugin == "scalars" and value.tensor.float_val:
                    number = value.tensor.float_val[0]
                elif plugin == "text" and value.tensor.string_val:
                    args[value.tag.split("/")[0]] = value.tensor.string_val[0].decode()
                    continue
                else:
                    continue
                if not value.tag.endswith(BY_SAMPLES):
                    scalars.setdefault(int(event.step), {})[value.tag] = float(number)
    return dict(sorted(scalars.items())), args


def series(scalars: Scalars, tag: str) -> Tuple[list, list]:
    """``(iterations, values)`` of ``tag``, in iteration order."""
    points = [(it, row[tag]) for it, row in scalars.items() if tag in row]
    return [p[0] for p in points], [p[1] for p in points]


def validation_sets(scalars: Scalars, key: str = "lm loss") -> Dict[str, str]:
    """Validation sets the run evaluated, ``{name: tag}``: ``{"": "lm loss validation"}`` for
    one set, ``{"books": "lm loss validation-books", ...}`` (or ``"0"``, ``"1"``, ... where
    Megatron has no set names) for several."""
    prefix = key + VALIDATION
    tags = {tag for row in scalars.values() for tag in row if tag.startswith(prefix)}
    out = {}
    for tag in sorted(tags):
        rest = tag[len(prefix):]
        if rest == "" or (rest.startswith("-") and " " not in rest):
            out[rest[1:]] = tag
    return out
