"""Shared fixtures: a host-synchronisation detector."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

# Tensor methods that copy a value to the host (a device sync on GPU) or branch on it.
_SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
    torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu,
    torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
    torch.unique, torch.Tensor.unique, torch.any, torch.all,
}


class HostSyncDetector(TorchFunctionMode):
    """Records every call that would synchronise the device with the host."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            self.calls.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_syncs():
    """Yields a list that collects the names of host-synchronising calls made inside the test."""
    with HostSyncDetector() as mode:
        yield mode.calls
