"""Documents as units (megatron_rw.units and the hook's unit="document") and the preview."""

import torch

from megatron_rw.config import ReweightConfig
from megatron_rw.loss import (LM_LOSS, PREVIEW_ESS, PREVIEW_WEIGHT, STAT_KEYS, WEIGHTED_LOSS,
                              reweighted_loss_func)
from megatron_rw.telemetry import SampleTelemetry
from megatron_rw.units import document_units, per_token, unit_sums
from megatron_rw.weights import compute_sample_weights

EOD = 2


def test_document_units_split_after_each_end_of_document_label():
    labels = torch.tensor([[5, 6, EOD, 7, 8, EOD, 9, 9],
                           [EOD, 5, 5, 5, EOD, EOD, 5, EOD]])
    assert document_units(labels, EOD, 8).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2],
                                                        [0, 1, 1, 1, 1, 2, 3, 3]]
    # Past the last slot, documents share it.
    assert document_units(labels, EOD, 2).tolist() == [[0, 0, 0, 1, 1, 1, 1, 1],
                                                       [0, 1, 1, 1, 1, 1, 1, 1]]


def test_unit_sums_and_per_token_are_inverse_bookkeeping():
    units = torch.tensor([[0, 0, 1, 1, 1], [0, 2, 2, 2, 2]])
    values = torch.arange(10.0).reshape(2, 5, 1)
    sums = unit_sums(values, units, 3)
    assert sums[:, 0].tolist() == [1.0, 9.0, 0.0, 5.0, 0.0, 30.0]
    assert per_token(sums[:, 0], units, 3).tolist() == [[1, 1, 9, 9, 9], [5, 30, 30, 30, 30]]


def _batch(seed=0, b=6, s=40):
    g = torch.Generator().manual_seed(seed)
    out = 2 + torch.rand(b, s, generator=g) * torch.linspace(0.5, 4, b)[:, None]
    mask = (torch.rand(b, s, generator=g) > 0.1).float()
    return mask, out


def test_one_document_per_row_equals_sample_units():
    mask, out = _batch()
    units = torch.zeros_like(mask, dtype=torch.long)
    results = []
    for cfg in (ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0),
                ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, unit="document",
                               max_documents=4)):
        o = out.clone().requires_grad_(True)
        loss, tokens, report = reweighted_loss_func(mask, o, config=cfg, iteration=0,
                                                    units=units)
        loss.backward()
        results.append((loss, tokens, report, o.grad))
    (l1, t1, r1, g1), (l2, t2, r2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-6, atol=0)
    torch.testing.assert_close(g2, g1, rtol=1e-6, atol=0)
    assert t1.item() == t2.item()
    for key in (LM_LOSS, WEIGHTED_LOSS, *STAT_KEYS.values()):
        torch.testing.assert_close(r2[key], r1[key], rtol=1e-6, atol=0)


def test_each_document_gets_its_own_loss_and_weight():
    # Row 0: an easy document then a hard one; row 1: one middling document.
    out = torch.tensor([[1.0, 1.0, 1.0, 9.0, 9.0, 9.0],
                        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]]).requires_grad_(True)
    mask = torch.ones(2, 6)
    units = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    cfg = ReweightConfig(strategy="linupper", r=0.5, warmup_iters=0, unit="document",
                         max_documents=2)
    loss, tokens, report = reweighted_loss_func(mask, out, config=cfg, iteration=0, units=units)
    loss.backward()
    w = compute_sample_weights(torch.tensor([1.0, 9.0, 5.0]), "linupper", 0.5)
    assert tokens.item() == 12
    # d(loss)/d(token loss) is the token's document weight.
    expected = torch.tensor([[w[0]] * 3 + [w[1]] * 3, [w[2]] * 6])
    torch.testing.assert_close(out.grad, expected)
    assert report[STAT_KEYS["invalid"]][0].item() == 0  # the unused slot of row 1 is not invalid


def test_uniform_with_documents_is_bitwise_the_baseline():
    mask, out = _batch(1)
    units = torch.randint(0, 5, mask.shape).sort(dim=1).values
    base = (out * mask).view(-1).sum()
    for cfg in (ReweightConfig(unit="document", max_documents=5),
                ReweightConfig(unit="document", max_documents=5, warmup_iters=3,
                               strategy="linupper")):
        loss, tokens, _ = reweighted_loss_func(mask, out, config=cfg, iteration=0, units=units)
        assert torch.equal(loss, base) and tokens.item() == mask.sum().item()


def test_a_non_finite_document_drops_only_that_document():
    mask, out = _batch(2)
    units = (torch.arange(40) // 10).expand(6, 40)
    out = out.clone()
    out[1, 12] = float("nan")  # document 1 of row 1
    mask[1, 12] = 1.0
    cfg = ReweightConfig(strategy="linupper", r=1.0, warmup_iters=0, unit="document",
                         max_documents=4)
    o = out.requires_grad_(True)
    loss, tokens, report = reweighted_loss_func(mask, o, config=cfg, iteration=0, units=units)
    loss.backward()
    assert torch.isfinite(loss) and report[STAT_KEYS["invalid"]][0].item() == 1
    assert torch.all(o.grad[1, 10:20] == 0) and torch.all(o.grad[1, :10][mask[1, :10] > 0] > 0)
    assert tokens.item() == mask.sum().item() - mask[1, 10:20].sum().item()


def test_preview_never_changes_the_loss_or_the_gradients():
    mask, out = _batch(3)
    names = ("a", "b")
    telemetry = SampleTelemetry(domain_ids=torch.tensor([0, 1, 0, 1, 0, 1]), domain_names=names)
    for base in (ReweightConfig(warmup_iters=0),
                 ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0),
                 ReweightConfig(strategy="quadratic", target_ess=0.7, warmup_iters=0)):
        runs = []
        for preview in ("", "extremes"):
            cfg = ReweightConfig(**{**base.__dict__, "preview": preview})
            o = out.clone().requires_grad_(True)
            loss, tokens, report = reweighted_loss_func(mask, o, config=cfg, iteration=0,
                                                        telemetry=telemetry)
            loss.backward()
            runs.append((loss, tokens, report, o.grad))
        (l0, t0, r0, g0), (l1, t1, r1, g1) = runs
        assert torch.equal(l0, l1) and torch.equal(g0, g1) and torch.equal(t0, t1)
        assert all(torch.equal(r0[k], r1[k]) for k in r0)
        extra = set(r1) - set(r0)
        assert extra == {PREVIEW_ESS, *(PREVIEW_WEIGHT.format(n) for n in names)}
        # The preview is what that strategy would give with the same r.
        per_sample = (out * mask).sum(1) / mask.sum(1)
        if base.target_ess == 0:
            w = compute_sample_weights(per_sample, "extremes", 0.4 if base.enabled else 1.0)
            torch.testing.assert_close(
                r1[PREVIEW_WEIGHT.format("a")], torch.stack([w[0::2].sum(), torch.tensor(3.0)]))
        assert 0 < r1[PREVIEW_ESS][0].item() <= 1
