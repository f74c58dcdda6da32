"""patches/megatron_lm with today's workloads, in process: packed micro-batches (Megatron-LM
0.19's ``get_batch`` flattening, with megatron-core's own ``flatten_batch_for_packed_sequences``),
the EP-overlap schedule plan (``return_schedule_plan=True``), and the start-up refusals (packed
layouts the patch cannot place, a global micro-batch of fewer than 2 units). MoE, MTP and the
real loop: tests/test_megatron_lm.py."""

import argparse
import dataclasses
import functools
import os

import pytest
import torch

from megatron_rw import ReweightConfig, reweighted_loss_func
from tests.test_patches import script  # noqa: F401  (puts patches/megatron_lm on sys.path)

import rw_units  # noqa: E402
import rw_wrap as rw  # noqa: E402

ROWS, SEQ = 3, 8
# Per row: cu_seqlens as the dataset gives them (right-padded with SEQ).
CU = torch.tensor([[0, 3, 8, 8], [0, 8, 8, 8], [0, 2, 5, 8]], dtype=torch.int32)


def megatron_loss_func(loss_mask, output_tensor, model=None):
    """Megatron-LM's loss_func without its checks: the flat masked sum."""
    loss = torch.sum(output_tensor.view(-1).float() * loss_mask.view(-1).float())
    return loss, loss_mask.sum().to(torch.int), {"lm loss": torch.stack([loss, loss_mask.sum()])}


def batches(n=4):
    """Micro-batches whose end-of-document labels (id 2) end the cu_seqlens segments, so the
    unpacked reference finds the same documents from its labels."""
    g = torch.Generator().manual_seed(3)
    for _ in range(n):
        labels = torch.randint(3, 50, (ROWS, SEQ), generator=g)
        for row, bounds in enumerate(CU.tolist()):
            for end in bounds[1:]:
                if end < SEQ:
                    labels[row, end - 1] = 2
        yield {"tokens": labels, "labels": labels, "cu_seqlens": CU.clone(),
               "loss_mask": (torch.rand(ROWS, SEQ, generator=g) > 0.1).float(),
               "position_ids": torch.arange(SEQ).repeat(ROWS, 1),
               "max_seqlen": torch.full((ROWS, 1), SEQ, dtype=torch.int32)}


def losses_of(batch):
    """Stand-in model: per-token losses that depend on the row, so weights differ."""
    return 1.0 + batch["labels"].float() / 10 * torch.arange(1, ROWS + 1)[:, None]


def forward_step_019(packed):
    """Megatron-LM 0.19's forward_step on one rank: get_batch draws the batch and, with packed
    sequences, flattens it with megatron-core's own function; the loss partial binds the mask."""
    from megatron.core.utils import flatten_batch_for_packed_sequences

    def forward_step(data_iterator, model, return_schedule_plan=False):
        batch = dict(next(data_iterator))
        if not packed:
            batch.pop("cu_seqlens")
        output = losses_of(batch)
        if packed:
            batch = flatten_batch_for_packed_sequences(batch)
            # The model run on the flattened row returns its losses in that row's order.
            output = output.reshape(1, -1)
        output.requires_grad_(True)
        model.append(output)
        return output, functools.partial(megatron_loss_func, batch["loss_mask"], model=model)

    return forward_step


@pytest.fixture
def one_rank(monkeypatch):
    from megatron.core import parallel_state as ps

    monkeypatch.setattr(ps, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(ps, "get_tensor_model_parallel_world_size", lambda: 1)
    monkeypatch.setattr(ps, "get_context_parallel_world_size", lambda: 1)


def run_patched(config, packed, packing):
    outputs = []
    wrapped = rw.wrap_forward_step(
        forward_step_019(packed), get_config=lambda: config, get_iteration=lambda: 5,
        expected_loss_func=megatron_loss_func, get_packing=lambda: packing,
        get_eod=lambda: 2)
    results = []
    for batch in batches():
        output, loss_fn = wrapped(iter([batch]), outputs)
        loss, tokens, report = loss_fn(output)
        loss.backward()
        results.append((loss.detach(), int(tokens), outputs[-1].grad.reshape(ROWS, SEQ),
                        report["sample weight max"][0]))
    return results


@pytest.mark.parametrize("unit", ["sample", "document"])
@pytest.mark.parametrize("strategy", ["linupper", "uniform"])
def test_packed_micro_batches_weigh_the_rows_through_the_patch(one_rank, unit, strategy):
    """0.19 packs each micro-batch into one row: through the patch the loss, token count,
    gradients and largest weight equal the unpacked micro-batch's (documents: the cu_seqlens
    segments); uniform stays bit for bit Megatron-LM's own flat sum."""
    from megatron.core import utils

    if not hasattr(utils, "flatten_batch_for_packed_sequences"):
        pytest.skip("this megatron-core does not flatten packed micro-batches (before 0.19)")
    config = ReweightConfig(strategy=strategy, r=0.4, warmup_iters=0, unit=unit,
                            max_documents=4)
    packing = rw_units.Packing(seq_length=SEQ, flag="--dataloader-inter-document-masking",
                               zigzag_cp=True)
    packed = run_patched(config, True, packing)
    unpacked = run_patched(config, False, None)
    for (lp, tp, gp, wp), (lu, tu, gu, wu) in zip(packed, unpacked):
        torch.testing.assert_close(lp, lu, rtol=1e-6, atol=0)
        torch.testing.assert_close(gp, gu, rtol=1e-6, atol=0)
        torch.testing.assert_close(wp, wu, rtol=1e-6, atol=0)
        assert tp == tu
    if strategy == "uniform":
        for (lp, _, _, wp), batch in zip(packed, batches()):
            flat = torch.sum(losses_of(batch).view(-1) * batch["loss_mask"].view(-1))
            assert torch.equal(lp, flat) and wp == 1.0
    else:
        assert max(w for *_, w in packed) > 1.05  # rows really are weighted differently


def test_packed_without_packing_info_would_weigh_one_row(one_rank):
    """What the patch prevents: the flattened row taken as the sample gives every micro-batch
    one weight, so linupper's loss is the unweighted one."""
    from megatron.core import utils

    if not hasattr(utils, "flatten_batch_for_packed_sequences"):
        pytest.skip("this megatron-core does not flatten packed micro-batches (before 0.19)")
    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)
    blind = run_patched(config, True, None)
    unpacked = run_patched(config, False, None)
    assert all(w == 1.0 for *_, w in blind)
    assert any(not torch.allclose(b[0], u[0], rtol=1e-4) for b, u in zip(blind, unpacked))


def test_packed_batch_without_boundaries_is_refused(one_rank):
    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)
    packing = rw_units.Packing(seq_length=SEQ, flag="--sft", zigzag_cp=False)
    kept = {"labels": torch.zeros(ROWS, SEQ, dtype=torch.long)}
    with pytest.raises(ValueError, match="--sft.*no cu_seqlens"):
        rw_units.unit_ids(kept, torch.ones(1, ROWS * SEQ), eod=None,
                          per_row=config.units_per_row, packing=packing)
    with pytest.raises(ValueError, match="not one row of whole 8-token rows"):
        rw_units.unit_ids(kept, torch.ones(ROWS, SEQ), eod=None, per_row=1, packing=packing)


@pytest.mark.parametrize("flags, message", [
    (dict(sft=True, context_parallel_size=2), "--sft with --context-parallel-size 2"),
    (dict(dataloader_inter_document_masking=True, hybrid_context_parallel=True),
     "--hybrid-context-parallel"),
    (dict(sft=False, dataloader_inter_document_masking=False, context_parallel_size=2), None),
    (dict(dataloader_inter_document_masking=True, context_parallel_size=2), None),
])
def test_packed_layouts_refused_at_start_up(flags, message):
    args = argparse.Namespace(seq_length=SEQ, **flags)
    packing = rw_units.packing_of(args)
    if message is None:
        rw_units.check_packing(packing, args)
        return
    with pytest.raises(ValueError, match=message):
        rw_units.check_packing(packing, args)


def _args(config, **layout):
    flags = {f"sample_reweight_{k}": v for k, v in dataclasses.asdict(config).items()}
    return argparse.Namespace(**flags, **layout)


@pytest.mark.parametrize("config, dp, mbs, refused", [
    (ReweightConfig(strategy="linupper"), 1, 1, True),   # e.g. PP2 on 2 ranks, micro-batch 1
    (ReweightConfig(strategy="uniform", preview="linupper"), 1, 1, True),
    (ReweightConfig(strategy="uniform"), 1, 1, False),
    (ReweightConfig(strategy="linupper"), 2, 1, False),
    (ReweightConfig(strategy="linupper"), 1, 2, False),
    (ReweightConfig(strategy="linupper", unit="document", max_documents=4), 1, 1, False),
])
def test_a_global_micro_batch_of_one_unit_is_refused(config, dp, mbs, refused):
    """Weights normalised over one unit are all 1: the patch refuses at the first step, naming
    the flags that help."""
    args = _args(config, data_parallel_size=dp, micro_batch_size=mbs)
    if not refused:
        assert script.reweight_config(args) == config
        return
    with pytest.raises(ValueError, match="--micro-batch-size.*--sample-reweight-unit document"):
        script.reweight_config(args)


def test_schedule_plan_path_gets_the_checked_reweighted_loss():
    """--overlap-moe-expert-parallel-comm: Megatron's combined 1F1B schedule calls
    ``forward_step(data_iterator, model, return_schedule_plan=True)`` and runs the returned loss
    partial on the plan's output. The plan passes through untouched; the partial is the
    reweighted loss, and Megatron-LM's own loss_func still checks the unweighted losses."""
    checked = []

    def checking_loss_func(loss_mask, output_tensor, model=None):
        loss = torch.sum(output_tensor.view(-1) * loss_mask.view(-1))
        checked.append(loss)
        if torch.isnan(loss):
            raise RuntimeError("found NaN in local forward loss calculation")
        return loss, loss_mask.sum().to(torch.int), {"lm loss": torch.stack([loss, loss])}

    class Model:
        def build_schedule_plan(self, tokens, position_ids, attention_mask, labels=None,
                                loss_mask=None):
            return ("PLAN", tokens)

    mask = torch.ones(4, 6)
    mask[3, 4:] = 0

    def forward_step(data_iterator, model, return_schedule_plan=False):
        assert return_schedule_plan, "the schedule-plan path is what this test drives"
        tokens = next(data_iterator)
        plan = model.build_schedule_plan(tokens, None, None, labels=tokens, loss_mask=mask)
        return plan, functools.partial(checking_loss_func, mask, model=model)

    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)
    wrapped = rw.wrap_forward_step(forward_step, get_config=lambda: config,
                                   get_iteration=lambda: 3, expected_loss_func=checking_loss_func)
    tokens = torch.arange(24).view(4, 6)
    plan, loss_fn = wrapped(iter([tokens]), Model(), return_schedule_plan=True)
    assert plan[0] == "PLAN" and plan[1] is tokens
    assert loss_fn.func is rw.megatron_checked_loss
    assert loss_fn.keywords["reweighted"].func is reweighted_loss_func
    # The plan's output: per-token losses [b, s].
    out = (1 + torch.arange(24.0).view(4, 6) / 5).requires_grad_(True)
    loss, tokens_counted, report = loss_fn(out)
    expected = reweighted_loss_func(mask, out.detach(), config=config, iteration=3)
    assert torch.equal(loss.detach(), expected[0]) and int(tokens_counted) == 22
    assert torch.equal(checked[-1], torch.sum(out.detach().view(-1) * mask.view(-1)))
    assert report["sample weight max"][0] > 1.05  # reweighted, not Megatron's plain sum
    bad = out.detach().clone()
    bad[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="found NaN"):
        loss_fn(bad)


@pytest.mark.parametrize("packed", [False, True], ids=["documents", "packed-documents"])
def test_domains_have_one_id_per_original_row_with_documents(one_rank, packed):
    """Per-domain shares with documents as units: the domain ids are one per original row
    (then one per document of the row), unpacked or packed into one row."""
    from megatron.core import utils

    if packed and not hasattr(utils, "flatten_batch_for_packed_sequences"):
        pytest.skip("this megatron-core does not flatten packed micro-batches (before 0.19)")
    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, unit="document",
                            max_documents=4)
    packing = (rw_units.Packing(seq_length=SEQ, flag="--dataloader-inter-document-masking",
                                zigzag_cp=True) if packed else None)
    outputs = []
    wrapped = rw.wrap_forward_step(
        forward_step_019(packed), get_config=lambda: config, get_iteration=lambda: 5,
        expected_loss_func=megatron_loss_func, get_packing=lambda: packing, get_eod=lambda: 2,
        get_domains=lambda: ["books", "code"])
    batch = dict(next(batches(1)), dataset_id=torch.tensor([1, 0, 1]))
    output, loss_fn = wrapped(iter([batch]), outputs)
    keywords = loss_fn.keywords["reweighted"].keywords
    assert keywords["telemetry"].domain_ids.tolist() == [1, 0, 1]
    _, _, report = loss_fn(output)
    # Units are documents: row 1 (books) holds 1 of the micro-batch's 6 documents (CU).
    assert report["sample share/books"].tolist() == [1.0, 6.0]
    assert report["sample share/code"].tolist() == [5.0, 6.0]
