"""Two torchrun "nodes" of two processes each on 127.0.0.1: the DP rank, not LOCAL_RANK, picks rows.

This is the layout where indexing the gathered losses by LOCAL_RANK (as IBM's code does) gives
the wrong weights: on node 1 LOCAL_RANK is 0/1 while the data-parallel rank is 1.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from megatron_rw import compute_sample_weights
from tests.workers import rank_mapping
from tests.workers.launch import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.compat]


def test_two_nodes_tp2_dp2(tmp_path):
    port = free_port()
    env = dict(os.environ, OUT_DIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    worker = os.path.join(os.path.dirname(__file__), "workers", "rank_mapping.py")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
             "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={port}", worker],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)
    ]
    logs = [p.communicate(timeout=240)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(logs)

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    # The layout really is the one that breaks LOCAL_RANK indexing.
    assert [(x["node_rank"], x["local_rank"], x["tp_rank"], x["dp_rank"]) for x in records] == [
        (0, 0, 0, 0), (0, 1, 1, 0), (1, 0, 0, 1), (1, 1, 1, 1)]

    losses, mask = rank_mapping.global_micro_batch(dp_size=2)
    per_sample = (losses * mask).sum(1) / mask.sum(1)
    expected = compute_sample_weights(per_sample, "linupper", 0.4)
    B = rank_mapping.B
    for x in records:
        mine = expected[x["dp_rank"] * B:(x["dp_rank"] + 1) * B]
        got = torch.tensor([w if not math.isnan(w) else 0.0 for w in x["weights"]])
        torch.testing.assert_close(got, mine, rtol=1e-6, atol=1e-7)
        wrong = expected[x["local_rank"] * B:(x["local_rank"] + 1) * B]
        if x["local_rank"] != x["dp_rank"]:
            assert not torch.allclose(got, wrong)  # LOCAL_RANK indexing would be detected
