"""Packed sequences: the units are the original rows (or their documents), never the row that
Megatron flattens a micro-batch into (megatron_rw.units.packed_units, reweighted_loss_func's
``units``/``num_units``; 2-process proof in tests/workers/packed.py)."""

import glob
import json
import os

import pytest
import torch

from megatron_rw.units import packed_units
from tests.workers.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "workers", "packed.py")


def test_packed_units_number_rows_then_documents():
    cu = torch.tensor([[0, 3, 8, 8, 8], [0, 8, 8, 8, 8], [0, 2, 4, 6, 8]], dtype=torch.int32)
    assert packed_units(cu, 8, 1).tolist() == [[0] * 8 + [1] * 8 + [2] * 8]
    assert packed_units(cu, 8, 4).tolist() == [[0, 0, 0, 1, 1, 1, 1, 1] + [4] * 8
                                               + [8, 8, 9, 9, 10, 10, 11, 11]]
    # Past the last slot, documents share it.
    assert packed_units(cu, 8, 2).tolist()[0][16:] == [4, 4, 5, 5, 5, 5, 5, 5]


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    pytest.importorskip("megatron.core.utils")
    from megatron.core import utils

    if not hasattr(utils, "flatten_batch_for_packed_sequences"):
        pytest.skip("this megatron-core does not flatten packed micro-batches (before 0.19)")
    out = tmp_path_factory.mktemp("packed")
    torchrun(WORKER, 2, [], env={"OUT_DIR": str(out)})
    return [json.load(open(p)) for p in sorted(glob.glob(str(out / "rank*.json")))]


@pytest.mark.parametrize("case", ["sample/linupper", "sample/uniform", "document/linupper",
                                  "document/uniform"])
def test_packed_equals_unpacked_dp2_and_cp2(packed_runs, case):
    """DP2: packed and unpacked micro-batches of the same rows give the same weights, loss and
    gradients, equal to a one-process reference of all rows; CP2: a packed row sliced as
    Megatron slices it under inter-document masking gives the unpacked result too."""
    assert len(packed_runs) == 2
    for rank in packed_runs:
        r = rank[case]
        for key, value in r.items():
            if key.endswith(("_reference", "_unpacked_loss", "_grad", "_weights", "_tokens")):
                assert value <= 1e-6, (case, key, value)
        if case.endswith("uniform"):
            assert r["packed_uniform_bitwise"], case
            assert r["weights_spread"] == 0
        else:
            assert r["weights_spread"] > 0.1  # the rows really are weighted differently
    # The two CP ranks hold complementary zigzag chunks of the flattened row.
    positions = sorted(packed_runs[0][case]["cp_positions"] + packed_runs[1][case]["cp_positions"])
    assert positions == list(range(32))
