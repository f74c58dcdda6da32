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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("unit", ["sample", "document"])
def test_packed_on_cuda_equals_unpacked_without_host_sync(unit):
    """On the GPU: the packed micro-batch's units (``packed_units``) and loss make no host
    synchronisation, and equal the unpacked micro-batch's loss and gradients."""
    from megatron_rw import ReweightConfig, reweighted_loss_func
    from tests.workers.packed import SEQ, global_batch, document_slots

    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, unit=unit,
                            max_documents=4)
    k = config.units_per_row
    batch = {key: v.cuda() for key, v in global_batch().items()}
    rows = batch["losses"].shape[0]
    reference = batch["losses"].clone().requires_grad_(True)
    slots = document_slots(global_batch()["cu_seqlens"], k).cuda() if unit == "document" else None
    want, want_tokens, _ = reweighted_loss_func(batch["loss_mask"], reference, config=config,
                                                iteration=0, units=slots)
    want.backward()
    flat = batch["losses"].reshape(1, -1).clone().requires_grad_(True)
    mask = batch["loss_mask"].reshape(1, -1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        units = packed_units(batch["cu_seqlens"], SEQ, k)
        got, got_tokens, _ = reweighted_loss_func(mask, flat, config=config, iteration=0,
                                                  units=units, num_units=rows * k)
        got.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(flat.grad.reshape(rows, SEQ), reference.grad, rtol=1e-6, atol=0)
    assert int(got_tokens) == int(want_tokens)
