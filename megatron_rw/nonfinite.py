"""What happens to a sample whose loss is NaN or Inf: Megatron decides, unless the user opts out.

megatron-rw's weights never let a non-finite sample poison the others (it gets weight 0, see
``reweighted_loss_func``). Whether the *run* goes on is a different question, and Megatron-LM
answers it in its ``loss_func``: under ``--check-for-nan-in-loss-and-grad`` (on by default) a
NaN or Inf in the local loss sum stops the run through the rerun state machine. So by default
the same check runs on the same quantity, the unweighted sum of this rank's token losses, and a
NaN stops a reweighted run exactly as it stops an unweighted one. With
``ReweightConfig.skip_nonfinite`` the check sees the losses with the non-finite samples left out
(:func:`without_nonfinite_samples`), so the run trains on and counts them.

Pure torch, no collectives.
"""

from __future__ import annotations

import torch

__all__ = ["without_nonfinite_samples"]


def without_nonfinite_samples(output_tensor: torch.Tensor,
                              loss_mask: torch.Tensor) -> torch.Tensor:
    """Token losses ``[b, s]`` with every token of a sample whose masked loss is not finite set to 0.

    The sum over ``mask * losses`` of the result is then the unweighted loss of the samples that
    ``reweighted_loss_func`` keeps, which is what Megatron's checks should see when the user chose
    to ride through non-finite samples. Detached: it feeds checks only.
    """
    with torch.no_grad():
        b = output_tensor.shape[0]
        losses = output_tensor.float().reshape(b, -1)
        # A NaN/Inf under a zero mask still makes the product NaN, as in Megatron's own sum.
        row_ok = torch.isfinite((losses * loss_mask.float().reshape(b, -1)).sum(dim=1))
        kept = torch.where(row_ok[:, None], losses, torch.zeros_like(losses))
        return kept.to(output_tensor.dtype).reshape(output_tensor.shape)
