"""megatron_rw.compat: one code path over megatron-core 0.16.1 - 0.19.x.

The context-parallel slicing is checked rank by rank in three layouts of 4 processes: a rank's
tokens must be its data-parallel rows and exactly sequence chunks r and 2cp-1-r of them. Taking the
chunk from the world group (what megatron-core 0.19 does when the group is left out) would give
DP4 ranks a quarter of each sequence and fail here.
"""

import json
import os

import pytest

from megatron_rw import compat
from tests.workers import cp_slicing
from tests.workers.launch import torchrun

pytestmark = pytest.mark.compat

WORKER = os.path.join(os.path.dirname(__file__), "workers", "cp_slicing.py")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp_slicing")
    torchrun(WORKER, 4, [], env={"OUT_DIR": str(out)})
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]


def expected_tokens(dp_rank, dp, cp_rank, cp):
    rows = cp_slicing.ROWS // dp
    chunk = cp_slicing.SEQ // (2 * cp)
    positions = [t for c in (cp_rank, 2 * cp - 1 - cp_rank) for t in range(c * chunk, (c + 1) * chunk)]
    if cp == 1:
        positions = list(range(cp_slicing.SEQ))
    return [[100 * i + t for t in positions] for i in range(dp_rank * rows, (dp_rank + 1) * rows)]


@pytest.mark.slow
@pytest.mark.parametrize("layout, dp, cp", [("dp4", 4, 1), ("dp2xcp2", 2, 2), ("tp2xcp2", 1, 2)])
def test_each_rank_gets_its_rows_and_cp_chunks(records, layout, dp, cp):
    seen = set()
    for rec in records:
        got = rec["layouts"][layout]
        assert got["cp_size"] == cp
        assert got["tokens"] == expected_tokens(got["dp_rank"], dp, got["cp_rank"], cp), rec["rank"]
        seen.add((got["dp_rank"], got["cp_rank"]))
    assert seen == {(d, c) for d in range(dp) for c in range(cp)}


@pytest.mark.slow
def test_omitted_group_behaviour_is_the_one_compat_assumes(records):
    """Catches megatron-core changing what a missing cp_group means without changing the
    signature compat detects: 0.16.1 falls back to the CP group, 0.19 slices over the world."""
    world_sliced = [rec["group_omitted_tokens"] != rec["layouts"]["dp4"]["tokens"]
                    for rec in records]
    assert all(world_sliced) if compat._CP_SLICE_TAKES_HYBRID else not any(world_sliced)


def test_slicing_refuses_a_missing_group():
    with pytest.raises(ValueError, match="WORLD"):
        compat.slice_for_context_parallel({}, None)


@pytest.mark.slow
def test_reweighting_gathers_over_every_rank_with_distinct_data_under_gtp(records):
    """megatron-core 0.19's weight-sharded TP (GTP) ranks hold distinct micro-batches; its
    data_parallel_size is only the replicate degree. The hook's group spans both (4 ranks), not
    the replicate group (2)."""
    if "gtp" not in records[0]:
        pytest.skip("this megatron-core has no weight-sharded tensor parallelism (GTP)")
    for rec in records:
        assert rec["gtp"] == {"reweight_group": 4, "replicate_group": 2}, rec


def test_reading_megatron_training_agrees_with_importing_it():
    """megatron_rw.megatron_training.installed answers from the installed files without importing them; the
    answers must be what importing megatron.training finds (each version of the range: 0.16.1
    has no megatron.training, 0.17.1 a loop without set names, 0.18.2 and 0.19.x both)."""
    import dataclasses
    import importlib

    from megatron_rw.megatron_training import installed as megatron_loop

    try:
        training = importlib.import_module("megatron.training.training")
    except ImportError:
        training = None
    try:
        config = importlib.import_module("megatron.training.config.training_config")
        names = any("validation_set_names" in {f.name for f in dataclasses.fields(c)}
                    for c in vars(config).values() if dataclasses.is_dataclass(c))
    except ImportError:
        names = False
    assert megatron_loop.has_training_loop() == callable(getattr(training, "pretrain", None))
    assert megatron_loop.names_validation_sets() == names
