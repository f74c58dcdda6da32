"""Documents as reweighting units: which document of its packed row each token belongs to.

Megatron packs documents end to end into fixed-length rows, so with long sequences one row holds
several unrelated documents and a per-row loss averages over them. With document units every
document segment of a row gets its own length-normalised loss and weight.

Each row has ``max_units`` unit slots, so every rank contributes the same fixed number of values
to the data-parallel all-gather (``b * max_units``) however many documents its rows hold: one
collective of a fixed size, as for samples, and no host synchronisation to agree on a size.
Documents past the last slot share it; the default (32) is far above what rows hold at
usual sequence lengths.

Pure math on one device: no ``torch.distributed``, no host synchronisation.
"""

from __future__ import annotations

import torch


def document_units(labels: torch.Tensor, eod: int, max_units: int) -> torch.Tensor:
    """Index of each token's document within its row, from the end-of-document labels.

    A token whose *label* is the end-of-document token ends its document: predicting the end is
    part of the document it ends, and the next token starts the next one.

    Args:
        labels: int ``[b, s]`` next-token labels of *whole* rows (before any context-parallel
            slicing: a document's index depends on every end-of-document label before it).
        eod: the end-of-document token id.
        max_units: slots per row (>= 1); documents past the last share it.

    Returns:
        int64 ``[b, s]`` in ``[0, max_units)``.
    """
    if max_units < 1:
        raise ValueError(f"max_units must be >= 1, got {max_units}")
    ends = (labels == eod).long()
    return (torch.cumsum(ends, dim=1) - ends).clamp(max=max_units - 1)


def unit_sums(values: torch.Tensor, units: torch.Tensor, max_units: int) -> torch.Tensor:
    """Per-unit sums of per-token values.

    A masked sum over a ``[b, s, max_units, k]`` broadcast rather than ``index_add_`` or a one-hot
    product: CUDA's index_add_ adds floats with atomics, in an order that changes from run to run,
    and a product with a one-hot matrix spreads a NaN token to every unit of its row (NaN * 0).

    Args:
        values: float ``[b, s, k]`` per-token values (e.g. masked loss and mask).
        units: int ``[b, s]`` slot of each token in ``[0, max_units)``.
        max_units: slots per row.

    Returns:
        float32 ``[b * max_units, k]``: row ``i * max_units + u`` sums the tokens of slot u of row i.
    """
    b = values.shape[0]
    slots = torch.arange(max_units, device=units.device)
    member = (units.long()[:, :, None] == slots)[..., None]                # [b, s, U, 1]
    values = values.float()[:, :, None, :]                                  # [b, s, 1, k]
    summed = torch.where(member, values, torch.zeros_like(values)).sum(dim=1)  # [b, U, k]
    return summed.reshape(b * max_units, -1)


def per_token(unit_values: torch.Tensor, units: torch.Tensor, max_units: int) -> torch.Tensor:
    """Spread per-unit values back to the tokens.

    Args:
        unit_values: ``[b * max_units]``; units: int ``[b, s]``; max_units: slots per row.

    Returns:
        ``[b, s]``: each token's unit's value.
    """
    b = units.shape[0]
    return torch.gather(unit_values.reshape(b, max_units), 1, units.long())


def packed_units(cu_seqlens: torch.Tensor, seq_length: int, max_units: int) -> torch.Tensor:
    """Each token's unit in a micro-batch that Megatron packed into one row.

    With packed sequences (megatron-core >= 0.19: ``--dataloader-inter-document-masking``,
    ``--sft``) Megatron flattens a micro-batch of ``rows`` rows of ``seq_length`` tokens into one
    row ``[1, rows * seq_length]`` and keeps the document boundaries in ``cu_seqlens``. The
    flattened row is never the unit: row ``i`` keeps its ``max_units`` slots ``i * max_units +
    slot``, the slot being the document (cu_seqlens segment) of the row the token is in
    (``max_units == 1``: the original rows are the units). Units are then numbered as in an
    unpacked batch, so the per-unit sums, weights and all-gather size are the unpacked ones.

    Args:
        cu_seqlens: int ``[rows, n]``, per row the cumulative document lengths as the dataset
            gives them: starting at 0, ending at ``seq_length``, right-padded with further copies
            of ``seq_length``.
        seq_length: tokens per original row.
        max_units: slots per row (>= 1); documents past the last share it.

    Returns:
        int64 ``[1, rows * seq_length]`` in ``[0, rows * max_units)``, in the flattened row's
        token order.
    """
    if max_units < 1:
        raise ValueError(f"max_units must be >= 1, got {max_units}")
    bounds = cu_seqlens.long()
    rows = bounds.shape[0]
    positions = torch.arange(seq_length, device=bounds.device).expand(rows, seq_length)
    # The segment holding position p is the last boundary <= p; the padding copies of
    # seq_length lie beyond every position, so they never open a segment.
    slot = torch.searchsorted(bounds, positions.contiguous(), right=True) - 1
    first = torch.arange(rows, device=bounds.device)[:, None] * max_units
    return (first + slot.clamp(min=0, max=max_units - 1)).reshape(1, -1)
