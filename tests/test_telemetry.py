"""Per-domain report and per-sample sink of the loss hook (one process)."""

import dataclasses

import torch

from megatron_rw import ReweightConfig, compute_sample_weights, reweighted_loss_func
from megatron_rw.telemetry import SampleTelemetry, domain_report, domain_shares
from megatron_rw.weights import normalise_losses

B, S = 8, 12
NAMES = ("books", "code", "qa")
LINUPPER = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = torch.nn.functional.softplus(torch.randn(B, S, generator=g) * 2).requires_grad_(True)
    mask = (torch.rand(B, S, generator=g) > 0.2).float()
    mask[5] = 0  # a padding row: invalid, belongs to no domain
    ids = torch.tensor([0, 1, 1, 2, 0, 1, 1, 0])
    return mask, out, ids


def test_domain_report_matches_a_loop():
    w = torch.tensor([0.5, 1.5, 2.0, 1.0, 0.25, 9.0, 0.75, 1.0])
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("nan"), 7.0, 8.0])
    valid = torch.isfinite(loss)
    ids = torch.tensor([0, 1, 1, 2, 0, 1, 1, 0])
    report = domain_report(w, loss, valid, ids, NAMES)
    for d, name in enumerate(NAMES):
        rows = [i for i in range(8) if ids[i] == d and valid[i]]
        assert report[f"sample weight/{name}"].tolist() == [sum(w[i].item() for i in rows), len(rows)]
        assert report[f"sample loss/{name}"].tolist() == [sum(loss[i].item() for i in rows), len(rows)]


def test_telemetry_changes_no_loss_and_sees_the_hooks_weights(host_syncs):
    mask, out, ids = _inputs()
    plain = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0)
    seen = []
    tel = SampleTelemetry(domain_ids=ids, domain_names=NAMES, sink=seen.append)
    loss, tokens, report = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0,
                                                telemetry=tel)
    assert host_syncs == []  # the sink only appended tensors
    assert torch.equal(loss, plain[0]) and torch.equal(tokens, plain[1])
    assert all(torch.equal(report[k], v) for k, v in plain[2].items())

    (rows,) = seen
    per_sample = (out * mask).sum(1) / mask.sum(1)
    valid = mask.sum(1) > 0
    weights = compute_sample_weights(per_sample.detach(), "linupper", 0.4, valid=valid)
    assert torch.equal(rows["weight"], weights)
    assert torch.equal(rows["valid"], valid)
    assert torch.equal(rows["domain"], ids)
    assert torch.equal(rows["normalised"], normalise_losses(rows["loss"], valid, 1.0))
    # linupper raises the weight with the normalised loss
    order = rows["normalised"][valid].argsort()
    assert torch.all(rows["weight"][valid][order].diff() >= 0)
    # the per-domain pairs: count-weighted mean of domain weights is the overall mean, 1
    w_sum = sum(report[f"sample weight/{n}"][0] for n in NAMES)
    count = sum(report[f"sample weight/{n}"][1] for n in NAMES)
    assert count == valid.sum() and torch.isclose(w_sum / count, torch.tensor(1.0))


def test_domain_shares_match_a_loop():
    w = torch.tensor([0.5, 1.5, 2.0, 1.0, 0.25, 0.0, 0.75, 2.0])
    valid = torch.tensor([True, True, True, True, True, False, True, True])
    ids = torch.tensor([0, 1, 1, 2, 0, 1, -1, 0])  # -1: a row of no named domain
    report = domain_shares(w, valid, ids, NAMES)
    for d, name in enumerate(NAMES):
        rows = [i for i in range(8) if ids[i] == d and valid[i]]
        assert report[f"sample weight share/{name}"].tolist() == [sum(w[i].item() for i in rows), 7]
        assert report[f"sample share/{name}"].tolist() == [len(rows), 7]


def test_shares_sum_to_one_and_equal_sample_shares_under_uniform(host_syncs):
    """Megatron-LM's reduction divides each step: shares never divide by a domain's count."""
    mask, out, ids = _inputs()
    tel = SampleTelemetry(domain_ids=ids, domain_names=NAMES, shares=True)
    config = dataclasses.replace(LINUPPER, preview="quadratic")
    _, _, report = reweighted_loss_func(mask, out, config=config, iteration=0, telemetry=tel)
    assert host_syncs == []  # before the checks below, which read values
    assert not any(k.startswith(("sample weight/", "sample loss/", "preview weight/")) for k in report)
    for kind in ("sample share", "sample weight share", "preview weight share"):
        pairs = torch.stack([report[f"{kind}/{n}"] for n in NAMES])
        assert torch.all(pairs[:, 1] == 7)  # every valid row of the micro-batch (row 5 is padding)
        assert torch.isclose(pairs[:, 0].sum() / 7, torch.tensor(1.0)), kind
    uniform = dataclasses.replace(config, strategy="uniform")
    _, _, report = reweighted_loss_func(mask, out, config=uniform, iteration=0, telemetry=tel)
    for n in NAMES:
        assert torch.equal(report[f"sample weight share/{n}"], report[f"sample share/{n}"])
    # a domain absent from the micro-batch: share 0 over 7, not 0/0
    _, _, report = reweighted_loss_func(mask, out, config=config, iteration=0, telemetry=
                                        dataclasses.replace(tel, domain_ids=ids.clamp(max=1)))
    assert report["sample share/qa"].tolist() == [0.0, 7.0]
