"""megatron-rw: dynamic loss-based sample reweighting for Megatron-Core pretraining."""

from megatron_rw.arguments import add_sample_reweight_args
from megatron_rw.collectives import ReweightGroups
from megatron_rw.config import ReweightConfig
from megatron_rw.ess import temperature_for_ess
from megatron_rw.loss import reweighted_loss_func
from megatron_rw.schedule import temperature_at
from megatron_rw.strategies import available_strategies, get_strategy, register_strategy
from megatron_rw.units import document_units
from megatron_rw.weights import compute_sample_weights

__version__ = "0.1.0"

__all__ = [
    "ReweightConfig",
    "ReweightGroups",
    "add_sample_reweight_args",
    "available_strategies",
    "compute_sample_weights",
    "document_units",
    "get_strategy",
    "register_strategy",
    "reweighted_loss_func",
    "temperature_at",
    "temperature_for_ess",
]
